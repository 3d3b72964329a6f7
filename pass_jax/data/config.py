"""`DataConfig` and the train / validation / test split conventions.

Imports only the standard library, so configuration code can use it without loading grain,
numpy or JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

__all__ = ["DEFAULT_SPLIT_FRACTIONS", "SPLITS", "DataConfig", "SourceKind", "check_fractions"]

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.90, 0.05, 0.05)

SourceKind = Literal["stdlib", "text_dir", "jsonl", "tfds"]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validates train / validation / test fractions (3 non-negative numbers summing to 1)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be 3 non-negative numbers summing to 1: {fractions}"
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where documents come from and how they are packed and batched.

    Attributes:
      source: "stdlib" | "text_dir" | "jsonl" | "tfds".
      path: text_dir: the directory; jsonl: the file; tfds: a prepared dataset directory
        (alternative to `tfds_name`); stdlib: optional root override.
      tfds_name: TFDS dataset name (for ``tfds.data_source``); `tfds_data_dir` its data_dir.
      pattern: text_dir file pattern (shell-style, matched on the name or relative path).
      text_key: JSONL field / TFDS feature holding the text.
      split: "train" | "validation" | "test" | "all" (hash split) or, for TFDS, any TFDS split.
      split_fractions: train / validation / test fractions of the hash split.
      max_documents: use only the first N documents of the split (quick runs / tests).
      seq_len, batch_size: batches are int32 [batch_size, seq_len] (batch_size per host).
      seed: shuffle seed. shuffle=False keeps packed order (evaluation).
      num_epochs: None repeats forever (training); N gives N passes.
      add_bos: prepend BOS to every document (EOS is always appended) and to every prompt.
      cache_dir: if set, the token stream is cached there as .npy.
      shard_index, shard_count: host shard; default ``jax.process_index()/process_count()``.
    """

    source: SourceKind = "stdlib"
    path: str | None = None
    tfds_name: str | None = None
    tfds_data_dir: str | None = None
    pattern: str = "*.txt"
    text_key: str = "text"
    split: str = "train"
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    max_documents: int | None = None
    seq_len: int = 256
    batch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    add_bos: bool = False
    cache_dir: str | None = None
    shard_index: int | None = None
    shard_count: int | None = None

    def __post_init__(self) -> None:
        if self.source not in ("stdlib", "text_dir", "jsonl", "tfds"):
            raise ValueError(f"unknown data source kind {self.source!r}")
        if self.seq_len < 1 or self.batch_size < 1:
            raise ValueError("seq_len and batch_size must be positive")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError("num_epochs must be positive or None")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError("max_documents must be positive or None")
        if (self.shard_index is None) != (self.shard_count is None):
            raise ValueError("give both shard_index and shard_count, or neither")
        if self.shard_count is not None and not 0 <= self.shard_index < self.shard_count:  # type: ignore[operator]
            raise ValueError(f"bad shard {self.shard_index} of {self.shard_count}")
        check_fractions(self.split_fractions)
