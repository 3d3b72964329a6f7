"""Tokenisation: documents -> one int32 token stream, cached as ``.npy``.

Each document is tokenised, followed by EOS (and optionally preceded by BOS), and the results
are concatenated *in source order*. The stream is optionally cached (keyed by the sha1 of
tokenizer model + source fingerprint + options) in ``cache_dir`` and memory-mapped on reuse.
Measured on this machine (2 shared cores, 8k-vocab code BPE): tokenising the whole stdlib train
split (1604 files, ~28 MB -> 7.1M tokens, ~4 bytes/token) takes 4-10 s (load-dependent) with
SentencePiece's multi-threaded batch encoding (7-9 s single-threaded). That is cheap enough to
do up front, which keeps random access to the packed windows (exact shuffling, resume by step);
lazy tokenisation inside grain is not worth its cost. With the cache later runs start in <0.1 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pass_jax.data.config import DataConfig
from pass_jax.data.sources import DocumentSource, make_source
from pass_jax.tokenizer import Tokenizer, bos_prefix

__all__ = ["load_token_stream", "max_stream_tokens", "save_array", "tokenize_documents"]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


def tokenize_documents(
    source: Sequence[str] | DocumentSource,
    tokenizer: Tokenizer,
    *,
    add_bos: bool = False,
    max_documents: int | None = None,
    docs_per_call: int = 256,
) -> np.ndarray:
    """Concatenates ``[BOS]? + encode(doc) + [EOS]`` over documents in order.

    Returns:
      int32 [N] token stream.
    """
    n = len(source) if max_documents is None else min(len(source), max_documents)
    parts: list[np.ndarray] = []
    prefix = bos_prefix(tokenizer, add_bos=add_bos)
    for start in range(0, n, docs_per_call):
        docs = [source[i] for i in range(start, min(n, start + docs_per_call))]
        for ids in tokenizer.encode_batch(docs):
            parts.append(np.asarray(prefix + ids + [tokenizer.eos_id], dtype=np.int32))
    if not parts:
        return np.zeros((0,), np.int32)
    return np.concatenate(parts)


def max_stream_tokens(config: DataConfig, limit: int) -> int:
    """An upper bound on the configured split's stream length without a tokenizer, counted
    only until it reaches `limit` (so cheap for a large corpus): each token spans at least one
    UTF-8 byte (byte-level or byte-fallback vocabularies, no expanding normalisation), plus
    BOS, EOS and a dummy prefix per document."""
    source = make_source(config)
    n = len(source) if config.max_documents is None else min(len(source), config.max_documents)
    total = 0
    for index in range(n):
        total += len(source[index].encode()) + 3
        if total >= limit:
            break
    return total


def _stream_key(source: DocumentSource, tokenizer: Tokenizer, config: DataConfig) -> str:
    spec = {
        "version": _CACHE_VERSION,
        "tokenizer": tokenizer.fingerprint,
        "source": source.fingerprint,
        "add_bos": config.add_bos,
        "max_documents": config.max_documents,
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def load_token_stream(
    config: DataConfig, tokenizer: Tokenizer, source: DocumentSource | None = None
) -> tuple[np.ndarray, str]:
    """Tokenises the configured split (or loads it from ``config.cache_dir``).

    Returns:
      (int32 [N] token stream, its cache key).
    """
    source = make_source(config) if source is None else source
    key = _stream_key(source, tokenizer, config)
    cache_file = Path(config.cache_dir) / f"tokens-{key[:24]}.npy" if config.cache_dir else None
    if cache_file is not None and cache_file.is_file():
        return np.load(cache_file, mmap_mode="r"), key
    t0 = time.perf_counter()
    tokens = tokenize_documents(
        source, tokenizer, add_bos=config.add_bos, max_documents=config.max_documents
    )
    elapsed = time.perf_counter() - t0
    n_docs = len(source) if config.max_documents is None else min(len(source), config.max_documents)
    log.info("tokenised %d documents -> %d tokens in %.1fs", n_docs, tokens.size, elapsed)
    if cache_file is not None:
        save_array(cache_file, tokens)
    return tokens, key


def save_array(path: Path, array: np.ndarray) -> None:
    """Writes `array` as .npy atomically: a temporary file beside it, then a rename, so `path`
    is either absent or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
