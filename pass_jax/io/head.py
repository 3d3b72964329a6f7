"""The PaSS head: a trained lookahead table saved apart from the base model it drafts for.

A head directory holds

    head.safetensors   tensor "lookahead": the table [L_max, d_model], float32 (exact for
                       bfloat16 / float16 tables)
    head.json          {"format_version", "max_lookahead", "d_model", "vocab_size", "dtype" (the
                       table's dtype when saved), "base": {"shapes": {...}, "sha256": ...},
                       "tokenizer_fingerprint" (or null)}

`base` fingerprints the base model the table was trained for (`base_fingerprint`): its shapes
and a hash of its embedding and final norm rounded to bfloat16 (so the same base loaded in
float32 or bfloat16, from an orbax checkpoint or a Hugging Face directory, matches). A `joint`
stage fine-tunes the base, so its head only loads onto that fine-tuned base. `load_head` raises
`HeadMismatchError` naming what differs before it touches the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils

from pass_jax.io.safetensors import TensorFiles, read_json
from pass_jax.model import Transformer

if TYPE_CHECKING:
    from pass_jax.tokenizer import Tokenizer

FORMAT_VERSION = 1
TABLE_FILE = "head.safetensors"
INFO_FILE = "head.json"
TABLE_TENSOR = "lookahead"
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
    format_version: int = FORMAT_VERSION


def _host_array(x: jax.Array) -> np.ndarray:
    """The whole array on this host (gathered from every process when sharded over hosts)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def base_fingerprint(model: Transformer) -> dict[str, Any]:
    """The base's shapes and a sha256 of its embedding and final norm, rounded to bfloat16."""
    shapes = {name: getattr(model.config, name) for name in _SHAPE_FIELDS}
    digest = hashlib.sha256()
    for weight in (model.embed[...], model.final_norm.scale[...]):
        digest.update(np.ascontiguousarray(_host_array(weight).astype(ml_dtypes.bfloat16)))
    return {"shapes": shapes, "sha256": digest.hexdigest()}


def save_head(
    model: Transformer, path: str | os.PathLike[str], *, tokenizer: Tokenizer | None = None
) -> HeadInfo:
    """Writes the model's lookahead table and its `HeadInfo` to the directory `path` (replaced
    if it exists; written to a temporary sibling first, so a crash leaves no partial head).
    On several processes every one must call it; process 0 writes."""
    from safetensors.numpy import save_file

    if not model.has_lookahead:
        raise ValueError("the model has no lookahead table (max_lookahead=0): no head to save")
    table = _host_array(model.lookahead[...])  # [L, d]
    info = HeadInfo(
        max_lookahead=int(table.shape[0]),
        d_model=int(table.shape[1]),
        vocab_size=model.config.vocab_size,
        dtype=str(table.dtype),
        base=base_fingerprint(model),
        tokenizer_fingerprint=tokenizer.fingerprint if tokenizer is not None else None,
    )
    if jax.process_index() != 0:
        return info
    out = Path(path).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({TABLE_TENSOR: table.astype(np.float32)}, str(staging / TABLE_FILE))
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
    if version != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    try:
        return HeadInfo(**values)
    except TypeError as e:
        raise ValueError(f"{file} is not a valid {INFO_FILE}: {e}") from e


def check_head(info: HeadInfo, model: Transformer, *, tokenizer: Tokenizer | None = None) -> None:
    """Raises `HeadMismatchError` naming each way the head does not fit the model (and the
    tokenizer, when both name one)."""
    config = model.config
    problems = []
    base = base_fingerprint(model)
    for name, value in info.base["shapes"].items():
        if base["shapes"].get(name) != value:
            problems.append(f"{name} {base['shapes'].get(name)} (the head's base: {value})")
    if not problems and base["sha256"] != info.base["sha256"]:
        problems.append(
            "other base weights (embedding / final norm hash "
            f"{base['sha256'][:12]}, the head's base {info.base['sha256'][:12]})"
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


def load_head(
    model: Transformer, path: str | os.PathLike[str], *, tokenizer: Tokenizer | None = None
) -> HeadInfo:
    """Sets the model's lookahead table to the head at `path` (cast to the table's dtype, onto
    its sharding) after `check_head`; returns the head's info."""
    info = read_head_info(path)
    check_head(info, model, tokenizer=tokenizer)
    files = TensorFiles([Path(path) / TABLE_FILE])
    if TABLE_TENSOR not in files.tensors:
        raise ValueError(f"{path}/{TABLE_FILE} has no tensor {TABLE_TENSOR!r}")
    table = files.read(TABLE_TENSOR)  # [L, d]
    current = model.lookahead[...]
    if table.shape != current.shape:
        raise ValueError(
            f"{path}/{TABLE_FILE}: table shape {list(table.shape)}, {INFO_FILE} and the model "
            f"say {list(current.shape)}"
        )
    model.lookahead[...] = jax.device_put(table.astype(current.dtype), current.sharding)
    return info
