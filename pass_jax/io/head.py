"""The PaSS head: a trained lookahead table, and lookahead adapters if any, saved apart from the
base model it drafts for.

A head directory holds

    head.safetensors   tensor "lookahead": the table [L_max, d_model]; with adapters, one tensor
                       per adapter weight named by its path in a model with scanned layers,
                       e.g. "layers.attn.adapters.wq.a" [n_layers, d_model, r]; all float32
                       (exact for bfloat16 / float16 weights)
    head.json          {"format_version", "max_lookahead", "d_model", "vocab_size", "dtype" (the
                       table's dtype when saved), "base": {"shapes": {...}, "sha256": ...},
                       "tokenizer_fingerprint" (or null), "adapters": {"rank", "targets",
                       "gate"} (or null)}

`base` fingerprints the base model the head was trained for (`base_fingerprint`): its shapes
and a hash of every base weight rounded to bfloat16, in an order independent of the layer
layout (so the same base loaded in float32 or bfloat16, with scanned or looped layers, from an
orbax checkpoint or a Hugging Face directory, matches). A `joint` stage fine-tunes the base, so
its head only loads onto that fine-tuned base. `load_head` raises `HeadMismatchError` naming
what differs before it touches the model, then gives the model the head's adapters (or none).
Heads of format 1 (a table only, the hash over the embedding and final norm) still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from pass_jax.io.safetensors import TensorFiles, read_json
from pass_jax.model import HEAD_PARAMS, AdapterParam, Transformer

if TYPE_CHECKING:
    from pass_jax.tokenizer import Tokenizer

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: a table only; its base hash covers the embedding and final norm
TABLE_FILE = "head.safetensors"
INFO_FILE = "head.json"
TABLE_TENSOR = "lookahead"
ADAPTER_PREFIX = "layers."
_ADAPTER_KEYS = {"rank", "targets", "gate"}  # head.json's "adapters"
# The config fields a head depends on: a base that differs in any of them is another base.
_SHAPE_FIELDS = (
    "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
    "tie_embeddings",
)  # fmt: skip


class HeadMismatchError(ValueError):
    """A head does not belong to the model (or tokenizer) it is loaded onto."""


@dataclasses.dataclass(frozen=True)
class HeadInfo:
    """`head.json`: what the head is and which base (and tokenizer) it was trained for."""

    max_lookahead: int
    d_model: int
    vocab_size: int
    dtype: str
    base: dict[str, Any]  # {"shapes": {field: value}, "sha256": hex digest}
    tokenizer_fingerprint: str | None = None
    adapters: dict[str, Any] | None = None  # {"rank", "targets", "gate"}; None: a table only
    format_version: int = FORMAT_VERSION


def _host_array(x: jax.Array) -> np.ndarray:
    """The whole array on this host (gathered from every process when sharded over hosts)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def _bfloat16(x: jax.Array) -> np.ndarray:
    """`x` rounded to bfloat16 (on its devices), on this host."""
    return np.ascontiguousarray(_host_array(jnp.asarray(x).astype(jnp.bfloat16)))


def _base_weights(model: Transformer, version: int) -> Iterator[jax.Array]:
    """The base weights a fingerprint hashes, in a fixed order: version 1 the embedding and
    final norm; version 2 every base weight, the top-level ones by name, then layer by layer
    (each by its name within the layer), with scanned or looped layers alike."""
    if version == 1:
        yield from (model.embed[...], model.final_norm.scale[...])
        return
    pure = nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(HEAD_PARAMS))))
    layers = pure.pop("layers")
    yield from (w for _, w in sorted(traverse_util.flatten_dict(pure, sep=".").items()))
    for i in range(model.config.n_layers):
        layer = jax.tree.map(lambda w, i=i: w[i], layers) if model.config.scan_layers else layers[i]
        yield from (w for _, w in sorted(traverse_util.flatten_dict(layer, sep=".").items()))


def base_fingerprint(model: Transformer, version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The base's shapes and a sha256 of its weights rounded to bfloat16 (`_base_weights`)."""
    shapes = {name: getattr(model.config, name) for name in _SHAPE_FIELDS}
    digest = hashlib.sha256()
    for weight in _base_weights(model, version):
        digest.update(_bfloat16(weight))
    return {"shapes": shapes, "sha256": digest.hexdigest()}


def _adapter_config(model: Transformer) -> dict[str, Any] | None:
    c = model.config
    if not model.has_adapters:
        return None
    return {"rank": c.adapter_rank, "targets": list(c.adapter_targets), "gate": c.adapter_gate}


def _stacked_adapters(model: Transformer) -> dict[str, Any]:
    """The adapters as the pure dict of a model with scanned layers: [n_layers, ...] leaves
    (empty without adapters)."""
    pure = nnx.to_pure_dict(nnx.state(model.layers, AdapterParam))
    if model.config.scan_layers or not model.has_adapters:
        return pure
    layers = [pure[i] for i in range(model.config.n_layers)]
    return jax.tree.map(lambda *ws: jnp.stack(ws), *layers)


def _adapter_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """The adapter weights as head tensors, float32, by name (`ADAPTER_PREFIX` + path)."""
    flat = traverse_util.flatten_dict(_stacked_adapters(model), sep=".")
    return {ADAPTER_PREFIX + k: _host_array(w).astype(np.float32) for k, w in flat.items()}


def save_head(
    model: Transformer, path: str | os.PathLike[str], *, tokenizer: Tokenizer | None = None
) -> HeadInfo:
    """Writes the model's lookahead table, its adapters (if any) and its `HeadInfo` to the
    directory `path` (replaced if it exists; written to a temporary sibling first, so a crash
    leaves no partial head). On several processes every one must call it; process 0 writes."""
    from safetensors.numpy import save_file

    if not model.has_lookahead:
        raise ValueError("the model has no lookahead table (max_lookahead=0): no head to save")
    table = _host_array(model.lookahead[...])  # [L, d]
    tensors = {TABLE_TENSOR: table.astype(np.float32), **_adapter_tensors(model)}
    info = HeadInfo(
        max_lookahead=int(table.shape[0]),
        d_model=int(table.shape[1]),
        vocab_size=model.config.vocab_size,
        dtype=str(table.dtype),
        base=base_fingerprint(model),
        tokenizer_fingerprint=tokenizer.fingerprint if tokenizer is not None else None,
        adapters=_adapter_config(model),
    )
    if jax.process_index() != 0:
        return info
    out = Path(path).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(staging / TABLE_FILE))
        (staging / INFO_FILE).write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def read_head_info(path: str | os.PathLike[str]) -> HeadInfo:
    """The `head.json` of the head directory `path`; clear errors for a missing or bad one."""
    file = Path(path) / INFO_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a PaSS head directory: no {INFO_FILE}")
    values = read_json(file)
    version = values.get("format_version") if isinstance(values, dict) else None
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{file}: format_version {version!r}, this code reads {READABLE_VERSIONS}")
    try:
        info = HeadInfo(**values)
    except TypeError as e:
        raise ValueError(f"{file} is not a valid {INFO_FILE}: {e}") from e
    adapters = info.adapters
    if adapters is not None and (not isinstance(adapters, dict) or set(adapters) != _ADAPTER_KEYS):
        raise ValueError(f"{file}: adapters must be null or an object with keys {_ADAPTER_KEYS}")
    return info


def check_head(info: HeadInfo, model: Transformer, *, tokenizer: Tokenizer | None = None) -> None:
    """Raises `HeadMismatchError` naming each way the head does not fit the model (and the
    tokenizer, when both name one)."""
    config = model.config
    problems = []
    base = base_fingerprint(model, info.format_version)
    for name, value in info.base["shapes"].items():
        if base["shapes"].get(name) != value:
            problems.append(f"{name} {base['shapes'].get(name)} (the head's base: {value})")
    if not problems and base["sha256"] != info.base["sha256"]:
        hashed = "embedding / final norm" if info.format_version == 1 else "every base weight"
        problems.append(
            f"other base weights (hash of {hashed} {base['sha256'][:12]}, the head's base "
            f"{info.base['sha256'][:12]})"
        )
    if config.max_lookahead != info.max_lookahead:
        problems.append(
            f"a lookahead table of {config.max_lookahead} rows (the head has "
            f"{info.max_lookahead}: build the model with max_lookahead={info.max_lookahead}, "
            "e.g. load_hf_llama(dir, head=path))"
        )
    if tokenizer is not None and info.tokenizer_fingerprint not in (None, tokenizer.fingerprint):
        problems.append("another tokenizer (fingerprints differ)")
    if problems:
        raise HeadMismatchError("the PaSS head does not fit this model: " + "; ".join(problems))


def _load_adapters(model: Transformer, files: TensorFiles, where: str) -> None:
    """Sets the model's adapters to the head's tensors (cast to their dtype, onto their
    sharding); the names and shapes must be the model's."""
    current = _stacked_adapters(model)
    expected = traverse_util.flatten_dict(current, sep=".")
    stored = {n[len(ADAPTER_PREFIX) :] for n in files.tensors if n.startswith(ADAPTER_PREFIX)}
    if stored != set(expected):
        raise ValueError(
            f"{where}: adapter tensors {sorted(stored)}, the head's adapter config makes "
            f"{sorted(expected)}"
        )
    values = {}
    for name, weight in expected.items():
        value = files.read(ADAPTER_PREFIX + name)
        if value.shape != weight.shape:
            raise ValueError(
                f"{where}: tensor {ADAPTER_PREFIX + name} has shape {list(value.shape)}, the "
                f"model's adapter {list(weight.shape)}"
            )
        values[name] = value.astype(weight.dtype)
    if not values:
        return
    stacked = traverse_util.unflatten_dict(values, sep=".")
    if not model.config.scan_layers:
        stacked = {
            i: jax.tree.map(lambda w, i=i: w[i], stacked) for i in range(model.config.n_layers)
        }
    state = nnx.state(model.layers, AdapterParam)
    placed = jax.tree.map(
        lambda w, v: jax.device_put(w, v.sharding), stacked, nnx.to_pure_dict(state)
    )
    nnx.replace_by_pure_dict(state, placed)
    nnx.update(model.layers, state)


def load_head(
    model: Transformer, path: str | os.PathLike[str], *, tokenizer: Tokenizer | None = None
) -> HeadInfo:
    """Sets the model's lookahead table to the head at `path` (cast to the table's dtype, onto
    its sharding) after `check_head`, and gives the model the head's adapters (a head without
    adapters removes the model's); returns the head's info."""
    info = read_head_info(path)
    check_head(info, model, tokenizer=tokenizer)
    where = f"{path}/{TABLE_FILE}"
    files = TensorFiles([Path(path) / TABLE_FILE])
    if TABLE_TENSOR not in files.tensors:
        raise ValueError(f"{where} has no tensor {TABLE_TENSOR!r}")
    table = files.read(TABLE_TENSOR)  # [L, d]
    current = model.lookahead[...]
    if table.shape != current.shape:
        raise ValueError(
            f"{where}: table shape {list(table.shape)}, {INFO_FILE} and the model say "
            f"{list(current.shape)}"
        )
    model.lookahead[...] = jax.device_put(table.astype(current.dtype), current.sharding)
    adapters = info.adapters
    if adapters is None:
        model.set_adapters(0)
    else:
        model.set_adapters(adapters["rank"], adapters["targets"], adapters["gate"])
    _load_adapters(model, files, where)
    return info
