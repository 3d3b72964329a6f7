"""Loading Hugging Face LLaMA checkpoints (`LlamaForCausalLM`, safetensors) into `Transformer`.

No torch at run time: tensors are read one at a time from (possibly sharded) safetensors files
(`pass_jax.io.safetensors`).

The name and layout mapping lives in one place, `param_specs`; `iter_params` streams
`(spec, array)` pairs through it, one tensor at a time, and `read_param` builds one of our
params (a stacked `[n_layers, ...]` one from its per-layer tensors), so a checkpoint converter
reuses them.
HF stores linear weights `[out, in]`; ours are `[in, ...out]`:

    HF tensor                                         HF shape  ours                    our shape
    model.embed_tokens.weight                         [V, d]    embed                   [V, d]
    model.layers.{i}.input_layernorm.weight           [d]       layers.attn_norm.scale  [d]
    model.layers.{i}.self_attn.q_proj.weight          [H*D, d]  layers.attn.wq          [d, H, D]
    model.layers.{i}.self_attn.k_proj.weight          [K*D, d]  layers.attn.wk          [d, K, D]
    model.layers.{i}.self_attn.v_proj.weight          [K*D, d]  layers.attn.wv          [d, K, D]
    model.layers.{i}.self_attn.o_proj.weight          [d, H*D]  layers.attn.wo          [H, D, d]
    model.layers.{i}.post_attention_layernorm.weight  [d]       layers.mlp_norm.scale   [d]
    model.layers.{i}.mlp.gate_proj.weight             [F, d]    layers.mlp.w_gate       [d, F]
    model.layers.{i}.mlp.up_proj.weight               [F, d]    layers.mlp.w_up         [d, F]
    model.layers.{i}.mlp.down_proj.weight             [d, F]    layers.mlp.w_down       [F, d]
    model.norm.weight                                 [d]       final_norm.scale        [d]
    lm_head.weight (absent when tied)                 [V, d]    lm_head                 [d, V]

Layer params sit at `layers.{i}.<name>` (`scan_layers=False`) or at row `i` of the stacked
`layers.<name>` (`scan_layers=True`). The rotary convention already matches HF (rotate-half), so
q/k need no permutation. The lookahead table starts as copies of the UNK token's embedding, or
is a trained PaSS head's (`load_hf_llama(..., head=...)`, `pass_jax.io.head`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pass_jax.config import ModelConfig, RopeScaling
from pass_jax.io.safetensors import TensorFiles, TensorInfo, read_json
from pass_jax.model import Transformer, rope_frequencies, unk_lookahead_table

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

SUPPORTED_ARCHITECTURE = "LlamaForCausalLM"
SUPPORTED_MODEL_TYPE = "llama"

# Tensors HF checkpoints may carry that are not parameters (old rotary buffers).
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


# --------------------------------------------------------------------------------------------
# config.json -> ModelConfig


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "a boolean"}


def _typed(key: str, value: Any, kind: type) -> Any:
    """`value` as `kind` (int, float or bool); a `ValueError` naming the field otherwise."""
    if kind is bool:
        ok = isinstance(value, bool)
    else:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and (kind is float or float(value).is_integer())
    if not ok:
        raise ValueError(f"HF config field {key!r} is {value!r}: expected {_TYPE_NAMES[kind]}")
    return kind(value)


def _require(hf: Mapping[str, Any], key: str, kind: type = int) -> Any:
    value = hf.get(key)
    if value is None:
        raise ValueError(f"HF config is missing the required field {key!r}")
    return _typed(key, value, kind)


def _check_architecture(hf: Mapping[str, Any]) -> None:
    architectures = hf.get("architectures")
    model_type = hf.get("model_type")
    if architectures is not None:
        if isinstance(architectures, str):
            architectures = [architectures]
        if SUPPORTED_ARCHITECTURE not in architectures:
            raise ValueError(
                f"unsupported architecture {architectures!r} (model_type={model_type!r}); "
                f"only {SUPPORTED_ARCHITECTURE} is supported"
            )
    if model_type is not None and model_type != SUPPORTED_MODEL_TYPE:
        raise ValueError(
            f"unsupported model_type {model_type!r} (architectures={architectures!r}); "
            f"only {SUPPORTED_MODEL_TYPE!r} ({SUPPORTED_ARCHITECTURE}) is supported"
        )
    if architectures is None and model_type is None:
        raise ValueError(
            "HF config names neither `architectures` nor `model_type`; "
            f"expected {SUPPORTED_ARCHITECTURE} / {SUPPORTED_MODEL_TYPE!r}"
        )


def _check_unsupported_fields(hf: Mapping[str, Any]) -> None:
    """Rejects config fields that change the math in a way `Transformer` does not implement."""
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"unsupported hidden_act={act!r}; only 'silu' (SwiGLU) is supported")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"unsupported {flag}={hf[flag]!r}; biases are not supported")
    for key in ("quantization_config", "sliding_window", "final_logit_softcapping"):
        if hf.get(key) is not None:
            raise ValueError(f"unsupported {key}={hf[key]!r}")
    partial = hf.get("partial_rotary_factor")
    if partial is not None and _typed("partial_rotary_factor", partial, float) != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor={partial!r}; only 1.0 is supported")


def _rope(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from `rope_parameters` (transformers 5) or `rope_scaling` (older)."""
    params = hf.get("rope_parameters")
    source = "rope_parameters"
    if params is None:
        params, source = hf.get("rope_scaling"), "rope_scaling"
    params = dict(params or {})
    if any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError(f"unsupported per-layer-type {source}={params!r}")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if theta is None or _typed("rope_theta", theta, float) <= 0:
        raise ValueError(f"unsupported rope_theta={theta!r}")
    partial = params.get("partial_rotary_factor")
    if partial is not None and _typed(f"{source}.partial_rotary_factor", partial, float) != 1.0:
        raise ValueError(f"unsupported {source}.partial_rotary_factor={partial!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None

    def field(name: str) -> Any:
        if params.get(name) is None:
            raise ValueError(f"{source} of type {rope_type!r} is missing {name!r}: {params!r}")
        return _typed(f"{source}.{name}", params[name], float)

    if rope_type == "linear":
        return float(theta), RopeScaling(rope_type="linear", factor=field("factor"))
    if rope_type == "llama3":
        # HF precedence: a top-level original_max_position_embeddings wins, then the rope dict,
        # then max_position_embeddings.
        original = hf.get("original_max_position_embeddings") or params.get(
            "original_max_position_embeddings", hf.get("max_position_embeddings")
        )
        if original is None:
            raise ValueError(f"{source} of type 'llama3' needs original_max_position_embeddings")
        scaling = RopeScaling(
            rope_type="llama3",
            factor=field("factor"),
            low_freq_factor=field("low_freq_factor"),
            high_freq_factor=field("high_freq_factor"),
            original_max_position_embeddings=_typed(
                "original_max_position_embeddings", original, int
            ),
        )
        return float(theta), scaling
    raise ValueError(
        f"unsupported {source} rope_type={rope_type!r}; supported: 'default', 'linear', 'llama3'"
    )


def config_from_hf(
    hf_config: Mapping[str, Any],
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    max_lookahead: int = 8,
    scan_layers: bool = False,
    max_seq_len: int | None = None,
    unk_id: int | None = None,
) -> ModelConfig:
    """Maps an HF LLaMA `config.json` dict onto a `ModelConfig`.

    Raises ValueError, naming the field and its value, for anything other than a
    `LlamaForCausalLM` and for fields whose math `Transformer` does not implement (biases,
    non-SiLU activation, rope types other than default/linear/llama3, partial rotary,
    quantization, sliding window).

    `unk_id` (the row of the embedding the lookahead table starts from) is, in order: the
    argument, the config's `unk_token_id` if it has one, else 0 (`<unk>` of the LLaMA-1/2
    sentencepiece vocabulary; Llama-3 has no unk token, and the row is only an initial value).
    `pretraining_tp` is ignored: it only split matmuls into slices and transformers >= 5 no
    longer reads it. `max_seq_len` defaults to `max_position_embeddings`.
    """
    _check_architecture(hf_config)
    _check_unsupported_fields(hf_config)
    hf = hf_config
    d_model = _require(hf, "hidden_size")
    n_heads = _require(hf, "num_attention_heads")
    n_kv_heads = _typed("num_key_value_heads", hf.get("num_key_value_heads") or n_heads, int)
    if n_heads % n_kv_heads:
        raise ValueError(
            f"num_key_value_heads={n_kv_heads} does not divide num_attention_heads={n_heads}"
        )
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if d_model % n_heads:
            raise ValueError(
                f"no head_dim given and hidden_size={d_model} is not a multiple of "
                f"num_attention_heads={n_heads}"
            )
        head_dim = d_model // n_heads
    if _typed("head_dim", head_dim, int) <= 0 or head_dim % 2:
        raise ValueError(f"unsupported head_dim={head_dim!r}; need a positive even integer")
    theta, scaling = _rope(hf)
    positions = hf.get("max_position_embeddings") or 2048
    if unk_id is None:
        unk = hf.get("unk_token_id")
        unk_id = unk if isinstance(unk, int) and not isinstance(unk, bool) else 0
    return ModelConfig(
        vocab_size=_require(hf, "vocab_size"),
        d_model=d_model,
        n_layers=_require(hf, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(head_dim),
        d_ff=_require(hf, "intermediate_size"),
        max_seq_len=int(max_seq_len or _typed("max_position_embeddings", positions, int)),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=_typed("rms_norm_eps", hf.get("rms_norm_eps", 1e-6), float),
        tie_embeddings=_typed("tie_word_embeddings", hf.get("tie_word_embeddings") or False, bool),
        dtype=dtype,
        param_dtype=param_dtype or dtype,
        scan_layers=scan_layers,
        max_lookahead=max_lookahead,
        unk_id=int(unk_id),
    )


# --------------------------------------------------------------------------------------------
# The name / layout mapping (the one place that knows both conventions)


_LAYOUTS = ("copy", "transpose", "in_heads", "out_heads")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One HF tensor and where, in which layout, it lands in `Transformer`.

    `path` is our parameter path without a layer index (e.g. `("layers", "attn", "wq")`);
    `layer` is the layer index for per-layer params, else None. `layout` names the change from
    the HF array (`hf_shape`) to ours (`shape`, per layer); `convert` applies it:

    - `copy`: unchanged (embedding, norms).
    - `transpose`: `[out, in] -> [in, out]` (MLP, lm_head).
    - `in_heads`: `[heads*D, d] -> [d, heads, D]` (q/k/v projections).
    - `out_heads`: `[d, heads*D] -> [heads, D, d]` (output projection).
    """

    hf_name: str
    path: tuple[str, ...]
    layer: int | None
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    layout: str = "copy"

    def __post_init__(self) -> None:
        if self.layout not in _LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; known: {_LAYOUTS}")

    def state_path(self, scan_layers: bool) -> tuple[str | int, ...]:
        """The path in `nnx.state(model)`: `layers.{i}.<name>` unless the layers are stacked."""
        if self.layer is None or scan_layers:
            return self.path
        return (self.path[0], self.layer, *self.path[1:])

    def convert(self, x: np.ndarray) -> np.ndarray:
        """The HF array [hf_shape] in our layout [shape] (a view where numpy allows)."""
        if tuple(x.shape) != self.hf_shape:
            raise ValueError(
                f"{self.hf_name}: shape {list(x.shape)}, expected {list(self.hf_shape)}"
            )
        if self.layout == "transpose":
            return x.T
        if self.layout == "in_heads":
            d, heads, head_dim = self.shape
            return x.reshape(heads, head_dim, d).transpose(2, 0, 1)
        if self.layout == "out_heads":
            heads, head_dim, d = self.shape
            return x.reshape(d, heads, head_dim).transpose(1, 2, 0)
        return x


def param_specs(config: ModelConfig) -> list[ParamSpec]:
    """Every HF tensor a checkpoint for `config` must hold, mapped to our params.

    Ordered parameter by parameter and, within a per-layer parameter, layer by layer, so a
    stacked (`scan_layers`) buffer is complete before the next one starts.
    """
    V, d, F = config.vocab_size, config.d_model, config.d_ff
    H, K, D = config.n_heads, config.n_kv_heads, config.head_dim
    layer_params = [
        # (HF suffix, our path, HF shape, our shape, layout)
        ("input_layernorm.weight", ("attn_norm", "scale"), (d,), (d,), "copy"),
        ("self_attn.q_proj.weight", ("attn", "wq"), (H * D, d), (d, H, D), "in_heads"),
        ("self_attn.k_proj.weight", ("attn", "wk"), (K * D, d), (d, K, D), "in_heads"),
        ("self_attn.v_proj.weight", ("attn", "wv"), (K * D, d), (d, K, D), "in_heads"),
        ("self_attn.o_proj.weight", ("attn", "wo"), (d, H * D), (H, D, d), "out_heads"),
        ("post_attention_layernorm.weight", ("mlp_norm", "scale"), (d,), (d,), "copy"),
        ("mlp.gate_proj.weight", ("mlp", "w_gate"), (F, d), (d, F), "transpose"),
        ("mlp.up_proj.weight", ("mlp", "w_up"), (F, d), (d, F), "transpose"),
        ("mlp.down_proj.weight", ("mlp", "w_down"), (d, F), (F, d), "transpose"),
    ]
    specs = [ParamSpec("model.embed_tokens.weight", ("embed",), None, (V, d), (V, d))]
    for suffix, path, hf_shape, shape, layout in layer_params:
        for i in range(config.n_layers):
            name = f"model.layers.{i}.{suffix}"
            specs.append(ParamSpec(name, ("layers", *path), i, hf_shape, shape, layout))
    specs.append(ParamSpec("model.norm.weight", ("final_norm", "scale"), None, (d,), (d,)))
    if not config.tie_embeddings:
        specs.append(ParamSpec("lm_head.weight", ("lm_head",), None, (V, d), (d, V), "transpose"))
    return specs


# --------------------------------------------------------------------------------------------
# Checkpoint files


class HFCheckpoint:
    """A local HF checkpoint directory: its config and the index of its safetensors tensors.

    Opening reads `config.json` and every safetensors header (no tensor data) and raises
    FileNotFoundError / ValueError naming what is missing or broken.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.hf_config: dict[str, Any] = _read_hf_config(self.directory)
        self._files = TensorFiles(*self._weight_files())
        self.tensors: dict[str, TensorInfo] = self._files.tensors

    def _weight_files(self) -> tuple[list[Path], dict[str, str] | None]:
        """The safetensors files, and the index's weight_map for a sharded checkpoint."""
        single = self.directory / WEIGHTS_FILE
        if single.is_file():
            return [single], None
        index_path = self.directory / WEIGHTS_INDEX_FILE
        if not index_path.is_file():
            others = sorted(
                p.name for p in self.directory.iterdir() if p.suffix in (".bin", ".pt", ".pth")
            )
            hint = (
                f" (found {others}: only safetensors checkpoints are supported)" if others else ""
            )
            raise FileNotFoundError(
                f"no weights in {self.directory}: neither {WEIGHTS_FILE} nor "
                f"{WEIGHTS_INDEX_FILE}{hint}"
            )
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path} has no `weight_map`")
        files = []
        for shard in sorted(set(weight_map.values())):
            shard_path = self.directory / shard
            if not shard_path.is_file():
                tensors = sorted(k for k, v in weight_map.items() if v == shard)
                raise FileNotFoundError(
                    f"shard {shard} listed in {index_path.name} is missing from "
                    f"{self.directory} (it holds {len(tensors)} tensors, e.g. {tensors[0]!r})"
                )
            files.append(shard_path)
        return files, weight_map

    def read(self, name: str) -> np.ndarray:
        """One tensor as a numpy array in its stored dtype (bf16 as `ml_dtypes.bfloat16`)."""
        return self._files.read(name)


def check_tensors(checkpoint: HFCheckpoint, config: ModelConfig) -> list[ParamSpec]:
    """Checks the checkpoint holds exactly the tensors `config` needs, with HF shapes.

    Returns `param_specs(config)`; raises ValueError naming every missing, mis-shaped or
    unexpected tensor. A redundant `lm_head.weight` of a tied model is tolerated (and unused).
    """
    specs = param_specs(config)
    problems = []
    for spec in specs:
        info = checkpoint.tensors.get(spec.hf_name)
        if info is None:
            problems.append(f"missing tensor {spec.hf_name} (expected shape {list(spec.hf_shape)})")
        elif info.shape != spec.hf_shape:
            problems.append(
                f"tensor {spec.hf_name} has shape {list(info.shape)}, "
                f"expected {list(spec.hf_shape)}"
            )
    expected = {spec.hf_name for spec in specs}
    for name, info in sorted(checkpoint.tensors.items()):
        if name in expected or _IGNORED.search(name):
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            if info.shape != (config.vocab_size, config.d_model):
                problems.append(f"tensor lm_head.weight has shape {list(info.shape)}")
            continue
        problems.append(f"unexpected tensor {name} (shape {list(info.shape)})")
    if problems:
        raise ValueError(
            f"HF checkpoint {checkpoint.directory} does not match its config: "
            + "; ".join(problems)
        )
    return specs


def iter_params(
    checkpoint: HFCheckpoint,
    specs: Sequence[ParamSpec],
    dtype: np.dtype | str | None = None,
) -> Iterator[tuple[ParamSpec, np.ndarray]]:
    """Streams `(spec, array)`: each HF tensor read, converted to our layout (and to `dtype`
    if given), one at a time, in `specs` order. Call `check_tensors` first."""
    for spec in specs:
        array = spec.convert(checkpoint.read(spec.hf_name))  # HF layout -> ours
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        yield spec, np.ascontiguousarray(array)


def specs_by_param(
    specs: Sequence[ParamSpec], scan_layers: bool
) -> dict[tuple[str | int, ...], list[ParamSpec]]:
    """The specs grouped by our parameter path (`ParamSpec.state_path`): one spec each, or with
    `scan_layers` a per-layer parameter's specs in layer order."""
    groups: dict[tuple[str | int, ...], list[ParamSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.state_path(scan_layers), []).append(spec)
    return groups


def read_param(
    checkpoint: HFCheckpoint, group: Sequence[ParamSpec], dtype: np.dtype | str, scan_layers: bool
) -> np.ndarray:
    """One of our params (a group of `specs_by_param`) in our layout and `dtype`: its HF tensor,
    or with `scan_layers` a per-layer param stacked to [n_layers, ...] from its HF tensors, read
    one at a time into the stacked buffer."""
    if group[0].layer is None or not scan_layers:
        (spec,) = group
        return next(iter_params(checkpoint, [spec], dtype))[1]
    stacked = np.empty((len(group), *group[0].shape), dtype)  # [n_layers, ...]
    for spec, array in iter_params(checkpoint, group, dtype):
        stacked[spec.layer] = array
    return stacked


# --------------------------------------------------------------------------------------------
# Public loaders


def _read_hf_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {directory} does not exist")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in HF checkpoint directory {directory}")
    hf_config = read_json(config_path)
    if not isinstance(hf_config, dict):
        raise ValueError(f"{config_path} does not hold a JSON object")
    return hf_config


def load_hf_config(path: str | os.PathLike[str], **kwargs: Any) -> ModelConfig:
    """`config_from_hf` on `<path>/config.json`; kwargs as for `config_from_hf`."""
    return config_from_hf(_read_hf_config(Path(path)), **kwargs)


def load_hf_llama(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    max_lookahead: int = 8,
    scan_layers: bool = False,
    max_seq_len: int | None = None,
    unk_id: int | None = None,
    head: str | os.PathLike[str] | None = None,
) -> Transformer:
    """Loads a local HF `LlamaForCausalLM` safetensors checkpoint into a `Transformer`.

    Validates the directory, the config and every tensor's name and shape before reading any
    weight; the model is built abstractly and filled parameter by parameter, so only one copy of
    the weights (plus one tensor, or one stacked parameter with `scan_layers`) is ever in memory.
    The lookahead table (`max_lookahead` rows: L_max) starts as copies of embedding row
    `unk_id`. `head`: a PaSS head directory (`pass_jax.io.head`) whose table replaces it; the
    table then has the head's size, and `max_lookahead` is ignored.
    """
    if head is not None:
        from pass_jax.io.head import read_head_info

        max_lookahead = read_head_info(head).max_lookahead  # head errors before any weight
    config = load_hf_config(  # config errors first, then the weight files
        path,
        dtype=dtype,
        param_dtype=param_dtype,
        max_lookahead=max_lookahead,
        scan_layers=scan_layers,
        max_seq_len=max_seq_len,
        unk_id=unk_id,
    )
    checkpoint = HFCheckpoint(path)
    specs = check_tensors(checkpoint, config)

    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    leaves = dict(nnx.to_flat_state(state))
    values = {
        key: jnp.asarray(read_param(checkpoint, group, config.weight_dtype, scan_layers))
        for key, group in specs_by_param(specs, scan_layers).items()
    }
    embed = values[("embed",)]

    new_leaves = []
    for key, leaf in leaves.items():
        if key in values:
            value = values.pop(key)
        elif key == ("lookahead",):
            value = unk_lookahead_table(embed, config.unk_id, config.max_lookahead)  # [L, d]
        elif key == ("inv_freq",):
            value = rope_frequencies(config)
        else:
            raise RuntimeError(f"load_hf_llama does not know how to fill model state {key}")
        expected = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        if tuple(value.shape) != tuple(expected.shape) or value.dtype != expected.dtype:
            raise RuntimeError(
                f"model state {key}: loaded {value.dtype}{list(value.shape)}, "
                f"model expects {expected.dtype}{list(expected.shape)}"
            )
        new_leaves.append((key, leaf.replace(value) if isinstance(leaf, nnx.Variable) else value))
    if values:
        raise RuntimeError(f"loaded tensors with no place in the model: {sorted(values)}")
    model = nnx.merge(graphdef, nnx.from_flat_state(new_leaves))
    if head is not None:
        from pass_jax.io.head import load_head

        load_head(model, head)
    return model
