"""Token stream -> packed, shuffled, sharded int32 batches (grain), with exact resume.

The stream is cut into consecutive, non-overlapping ``seq_len`` windows (the tail that does not
fill a window is dropped, so every sequence is full length; training code uses ``x[:, :-1]`` ->
``x[:, 1:]``). The windows form a random-access `grain.MapDataset` that is sharded per host
(``ds[shard_index::shard_count]``), globally shuffled with a seed-derived key (grain reshuffles
every epoch), repeated, and batched into numpy ``int32 [batch_size, seq_len]``.

Checkpointing: batch ``i`` is a pure function of (token stream, config, i). `BatchIterator`
state is therefore just the step plus a fingerprint of everything that determines the stream
(``get_state()`` -> JSON-serialisable dict; ``set_state()`` restores the position exactly and
refuses a state from a different stream).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from pass_jax.data.config import DataConfig
from pass_jax.data.sources import DocumentSource
from pass_jax.data.tokens import load_token_stream
from pass_jax.tokenizer import Tokenizer

__all__ = [
    "BatchIterator",
    "PackedSequences",
    "build_dataset",
    "concat_rows",
    "iterate_tokens",
    "make_iterator",
    "spread_batches",
]


class PackedSequences:
    """Random access to consecutive ``seq_len`` windows of a token stream (tail dropped)."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"token stream must be 1-D, got shape {tokens.shape}")
        self.tokens = tokens  # [N]
        self.seq_len = seq_len

    def __len__(self) -> int:
        return int(self.tokens.shape[0]) // self.seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} out of range for {len(self)} sequences")
        start = index * self.seq_len
        return np.asarray(self.tokens[start : start + self.seq_len], dtype=np.int32)  # [T]


def _shuffle_seed(seed: int) -> int:
    """Maps a user seed to a 32-bit grain seed (grain uses seed + epoch for each epoch)."""
    return int.from_bytes(hashlib.sha1(f"pass_jax.data:{seed}".encode()).digest()[:4], "big")


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is not None and shard_count is not None:
        return shard_index, shard_count
    import jax  # Lazy: only needed for the multi-host default.

    return jax.process_index(), jax.process_count()


def build_dataset(
    tokens: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.MapDataset:
    """Packs a token stream into a grain dataset of int32 [batch_size, seq_len] batches.

    Element ``i`` of the result is batch ``i`` (a pure function of the arguments and ``i``).
    Sequences are sharded first (every shard gets the same number of sequences), then
    shuffled (differently each epoch), repeated ``num_epochs`` times (None: forever), batched.
    """
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    seqs = grain.MapDataset.source(PackedSequences(tokens, seq_len))
    per_shard = len(seqs) // shard_count
    if per_shard < batch_size:
        raise ValueError(
            f"{tokens.shape[0]} tokens make {len(seqs)} sequences of length {seq_len}: "
            f"{per_shard} per shard ({shard_count} shards) is fewer than batch_size={batch_size}"
        )
    ds = seqs[: per_shard * shard_count][shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=_shuffle_seed(seed))
    ds = ds.repeat(num_epochs)
    return ds.batch(batch_size, drop_remainder=True)  # elements: [B, T] int32


class BatchIterator:
    """Iterator over a batch `grain.MapDataset` with an exactly restorable position.

    ``get_state()`` returns ``{"step": int, "fingerprint": str}`` (JSON-serialisable);
    ``set_state()`` on an iterator over the same stream resumes at exactly that batch.
    """

    def __init__(self, dataset: grain.MapDataset, *, fingerprint: str = "", step: int = 0) -> None:
        self.dataset = dataset
        self.fingerprint = fingerprint
        self.step = step

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> np.ndarray:
        if self.step >= len(self.dataset):
            raise StopIteration
        batch = self.dataset[self.step]  # [B, T] int32
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "fingerprint": self.fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        step = state.get("step")
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"bad data iterator state: {state!r}")
        theirs = state.get("fingerprint", "")
        if theirs and self.fingerprint and theirs != self.fingerprint:
            raise ValueError(
                "data iterator state is from a different data stream / config "
                f"({theirs[:12]} != {self.fingerprint[:12]})"
            )
        self.step = step


def make_iterator(
    config: DataConfig, tokenizer: Tokenizer, source: DocumentSource | None = None
) -> BatchIterator:
    """Source -> token stream (cached) -> packed/shuffled/sharded batches, as a `BatchIterator`."""
    tokens, stream_key = load_token_stream(config, tokenizer, source)
    return iterate_tokens(tokens, stream_key, config)


def iterate_tokens(tokens: np.ndarray, stream_key: str, config: DataConfig) -> BatchIterator:
    """Packed/shuffled/sharded batches of a token stream [N] named by `stream_key`."""
    shard_index, shard_count = _resolve_shard(config.shard_index, config.shard_count)
    dataset = build_dataset(
        tokens,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        seed=config.seed,
        shuffle=config.shuffle,
        num_epochs=config.num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    spec = [
        stream_key,
        config.seq_len,
        config.batch_size,
        config.seed,
        config.shuffle,
        config.num_epochs,
        shard_index,
        shard_count,
    ]
    fingerprint = hashlib.sha1(json.dumps(spec).encode()).hexdigest()
    return BatchIterator(dataset, fingerprint=fingerprint)


def concat_rows(parts: Sequence[BatchIterator]) -> BatchIterator:
    """Batch `i` is the rows of every part's batch `i`, stacked in order: int32 [sum B_p, T].

    The parts advance together, so one step restores them all; the fingerprint names every
    part's stream. The parts must start at step 0.
    """
    if not parts or any(p.step for p in parts):
        raise ValueError("concat_rows needs at least one part, each at step 0")
    length = min(len(p.dataset) for p in parts)
    datasets = [p.dataset for p in parts]
    rows = grain.MapDataset.range(length).map(
        lambda i: np.concatenate([d[i] for d in datasets], axis=0)
    )
    fingerprint = hashlib.sha1(json.dumps([p.fingerprint for p in parts]).encode()).hexdigest()
    return BatchIterator(rows, fingerprint=fingerprint)


def spread_batches(
    tokens: np.ndarray,
    *,
    seq_len: int,
    num_sequences: int,
    batch_size: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> list[np.ndarray]:
    """An evaluation set: `num_sequences` packed windows spread evenly over a token stream [N].

    The set samples the whole split rather than its first documents, and depends only on the
    stream and `num_sequences`: shard `i` of `n` takes every n-th window, in int32
    [batch_size, seq_len] batches (`batch_size` per shard).
    """
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    if num_sequences < 1 or num_sequences % (batch_size * shard_count):
        raise ValueError(
            f"num_sequences={num_sequences} must be a positive multiple of batch_size * shards "
            f"= {batch_size} * {shard_count}"
        )
    seqs = PackedSequences(tokens, seq_len)
    if len(seqs) < num_sequences:
        raise ValueError(
            f"{tokens.shape[0]} tokens make {len(seqs)} sequences of length {seq_len}, fewer "
            f"than the {num_sequences} asked for"
        )
    chosen = np.linspace(0, len(seqs) - 1, num_sequences).round().astype(int)
    rows = np.stack([seqs[int(i)] for i in chosen[shard_index::shard_count]])  # [S / n, T]
    return list(rows.reshape(-1, batch_size, seq_len))
