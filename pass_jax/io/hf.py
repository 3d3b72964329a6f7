"""Loading Hugging Face LLaMA checkpoints (`LlamaForCausalLM`, safetensors) into `Transformer`.

No torch at run time: tensors are read one at a time from (possibly sharded) safetensors files
with `safetensors.safe_open(..., framework="numpy")`, or, for dtypes the installed safetensors
cannot hand to numpy (bfloat16 and float8 in old versions), straight from the file bytes viewed
as `ml_dtypes` arrays.

The name and layout mapping lives in one place, `param_specs`; `iter_params` streams
`(spec, array)` pairs through it, one tensor at a time, so a checkpoint converter can reuse it.
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
q/k need no permutation. The lookahead table starts as copies of the UNK token's embedding.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from pass_jax.config import ModelConfig, RopeScaling
from pass_jax.model import Transformer, rope_frequencies

if TYPE_CHECKING:
    from pass_jax.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.model"

SUPPORTED_ARCHITECTURE = "LlamaForCausalLM"
SUPPORTED_MODEL_TYPE = "llama"

# Tensors HF checkpoints may carry that are not parameters (old rotary buffers).
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}


# --------------------------------------------------------------------------------------------
# config.json -> ModelConfig


def _require(hf: Mapping[str, Any], key: str) -> Any:
    value = hf.get(key)
    if value is None:
        raise ValueError(f"HF config is missing the required field {key!r}")
    return value


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
    if partial is not None and float(partial) != 1.0:
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
    if theta is None or float(theta) <= 0:
        raise ValueError(f"unsupported rope_theta={theta!r}")
    partial = params.get("partial_rotary_factor")
    if partial is not None and float(partial) != 1.0:
        raise ValueError(f"unsupported {source}.partial_rotary_factor={partial!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None

    def field(name: str) -> Any:
        if params.get(name) is None:
            raise ValueError(f"{source} of type {rope_type!r} is missing {name!r}: {params!r}")
        return params[name]

    if rope_type == "linear":
        return float(theta), RopeScaling(rope_type="linear", factor=float(field("factor")))
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
            factor=float(field("factor")),
            low_freq_factor=float(field("low_freq_factor")),
            high_freq_factor=float(field("high_freq_factor")),
            original_max_position_embeddings=int(original),
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
    num_lookahead: int = 8,
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
    d_model = int(_require(hf, "hidden_size"))
    n_heads = int(_require(hf, "num_attention_heads"))
    n_kv_heads = int(hf.get("num_key_value_heads") or n_heads)
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
    if int(head_dim) != head_dim or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"unsupported head_dim={head_dim!r}; need a positive even integer")
    theta, scaling = _rope(hf)
    if unk_id is None:
        unk = hf.get("unk_token_id")
        unk_id = unk if isinstance(unk, int) and not isinstance(unk, bool) else 0
    return ModelConfig(
        vocab_size=int(_require(hf, "vocab_size")),
        d_model=d_model,
        n_layers=int(_require(hf, "num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(head_dim),
        d_ff=int(_require(hf, "intermediate_size")),
        max_seq_len=int(max_seq_len or hf.get("max_position_embeddings") or 2048),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype=dtype,
        param_dtype=param_dtype or dtype,
        scan_layers=scan_layers,
        max_lookahead=num_lookahead,
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


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, safetensors dtype string, shape and byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in `file`
    end: int

    def read_bytes(self) -> np.ndarray:
        """The tensor viewed straight from the file bytes (any dtype, bf16 included)."""
        dtype = _SAFETENSORS_DTYPES[self.dtype]
        if self.end == self.begin:
            return np.zeros(self.shape, dtype)
        raw = np.memmap(self.file, np.uint8, "r", offset=self.begin, shape=(self.end - self.begin,))
        return np.array(raw.view(dtype).reshape(self.shape))


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _safetensors_index(path: Path) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file, from its header, validated against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is not a valid safetensors file (shorter than 8 bytes)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8:
            raise ValueError(
                f"{path} is not a valid safetensors file (header of {header_len} bytes "
                f"in a file of {size} bytes)"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a valid safetensors file (bad header: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file (header is not a dict)")
    data_start = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            dtype, shape = entry["dtype"], tuple(int(n) for n in entry["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed header entry for tensor {name!r}") from e
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        nbytes = math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize
        if min(shape, default=0) < 0 or end - begin != nbytes or begin < 0:
            raise ValueError(
                f"{path}: tensor {name!r} ({dtype}{list(shape)}) has data offsets "
                f"[{begin}, {end}] inconsistent with its shape"
            )
        if data_start + end > size:
            raise ValueError(
                f"{path}: tensor {name!r} ends at byte {data_start + end}, past the end of the "
                f"file ({size} bytes): truncated file?"
            )
        tensors[name] = TensorInfo(path, dtype, shape, data_start + begin, data_start + end)
    return tensors


def read_raw_tensor(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """Reads one tensor straight from the safetensors bytes (any dtype, bf16 included)."""
    tensors = _safetensors_index(Path(path))
    if name not in tensors:
        raise KeyError(f"tensor {name!r} not in {path}")
    return tensors[name].read_bytes()


class HFCheckpoint:
    """A local HF checkpoint directory: its config and the index of its safetensors tensors.

    Opening reads `config.json` and every safetensors header (no tensor data) and raises
    FileNotFoundError / ValueError naming what is missing or broken.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.hf_config: dict[str, Any] = _read_hf_config(self.directory)
        self.tensors: dict[str, TensorInfo] = self._index()
        self._handles: dict[Path, Any] = {}

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
        index = _read_json(index_path)
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

    def _index(self) -> dict[str, TensorInfo]:
        files, weight_map = self._weight_files()
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in _safetensors_index(file).items():
                if name in tensors:
                    raise ValueError(
                        f"tensor {name!r} appears in both {tensors[name].file} and {file}"
                    )
                tensors[name] = info
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in tensors or tensors[name].file.name != shard:
                    raise ValueError(
                        f"{WEIGHTS_INDEX_FILE} maps tensor {name!r} to {shard}, which lacks it"
                    )
        return tensors

    def read(self, name: str) -> np.ndarray:
        """One tensor as a numpy array in its stored dtype (bf16 as `ml_dtypes.bfloat16`)."""
        info = self.tensors[name]
        try:
            handle = self._handles.get(info.file)
            if handle is None:
                from safetensors import safe_open

                handle = self._handles[info.file] = safe_open(info.file, framework="numpy")
            array = handle.get_tensor(name)
        except Exception:  # e.g. bf16 in safetensors versions whose numpy framework lacks it
            array = None
        if array is None or array.dtype != _SAFETENSORS_DTYPES[info.dtype]:
            array = info.read_bytes()
        return array


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


# --------------------------------------------------------------------------------------------
# Public loaders


def _read_hf_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {directory} does not exist")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in HF checkpoint directory {directory}")
    hf_config = _read_json(config_path)
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
    num_lookahead: int = 8,
    scan_layers: bool = False,
    max_seq_len: int | None = None,
    unk_id: int | None = None,
) -> Transformer:
    """Loads a local HF `LlamaForCausalLM` safetensors checkpoint into a `Transformer`.

    Validates the directory, the config and every tensor's name and shape before reading any
    weight; the model is built abstractly and filled tensor by tensor, so only one copy of the
    weights (plus one tensor, or one stacked parameter with `scan_layers`) is ever in memory.
    The lookahead table (`num_lookahead` rows) starts as copies of embedding row `unk_id`.
    """
    config = load_hf_config(  # config errors first, then the weight files
        path,
        dtype=dtype,
        param_dtype=param_dtype,
        num_lookahead=num_lookahead,
        scan_layers=scan_layers,
        max_seq_len=max_seq_len,
        unk_id=unk_id,
    )
    checkpoint = HFCheckpoint(path)
    specs = check_tensors(checkpoint, config)

    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    leaves = dict(nnx.to_flat_state(state))
    weight_dtype = config.weight_dtype
    values: dict[tuple[Any, ...], Any] = {}
    stacked: dict[tuple[Any, ...], np.ndarray] = {}  # scan layout: [n_layers, ...] buffers
    for spec, array in iter_params(checkpoint, specs, weight_dtype):
        key = spec.state_path(scan_layers)
        if spec.layer is None or not scan_layers:
            values[key] = jnp.asarray(array)
            continue
        buffer = stacked.get(key)
        if buffer is None:
            buffer = stacked[key] = np.empty((config.n_layers, *spec.shape), weight_dtype)
        buffer[spec.layer] = array
        if spec.layer == config.n_layers - 1:  # specs run layer 0..n-1 per param
            values[key] = jnp.asarray(stacked.pop(key))
    embed = values[("embed",)]

    new_leaves = []
    for key, leaf in leaves.items():
        if key in values:
            value = values.pop(key)
        elif key == ("lookahead",):
            value = jnp.tile(embed[config.unk_id][None, :], (config.max_lookahead, 1))  # [L, d]
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
    return nnx.merge(graphdef, nnx.from_flat_state(new_leaves))


def load_hf_tokenizer(path: str | os.PathLike[str]) -> Tokenizer | None:
    """The sentencepiece tokenizer `<path>/tokenizer.model`, or None if the directory has none."""
    model_file = Path(path) / TOKENIZER_FILE
    if not model_file.is_file():
        return None
    from pass_jax.tokenizer import Tokenizer

    return Tokenizer.load(model_file)
