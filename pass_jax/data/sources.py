"""Document sources: random-access sequences of plain-text documents, and the hash split.

* ``stdlib``: the Python standard library's ``.py`` files on this machine (the default offline
  corpus, ~1.8k files / 31 MB on CPython 3.11), found via ``sysconfig.get_paths()["stdlib"]``,
  skipping ``site-packages`` / ``dist-packages`` / ``__pycache__`` and files that are not valid
  UTF-8. Split into train / validation / test (default 0.90 / 0.05 / 0.05) by the sha1 of the
  POSIX path relative to the stdlib root: stable across machines and runs, disjoint, covering.
* ``text_dir``: any directory of text files (shell pattern on the relative path or file name),
  hash-split by relative path like the stdlib (or ``split="all"``).
* ``jsonl``: a JSON-lines file with a configurable text field, hash-split by the sha1 of the
  text (duplicates always land in the same split).
* ``tfds``: a TFDS dataset by name via ``tfds.data_source(name, split=, data_dir=)`` or a
  prepared dataset directory via ``tfds.builder_from_directory(dir).as_data_source()``
  (array_record, random access, no TensorFlow); ``split`` is passed to TFDS (so slicing such as
  ``"train[:90%]"`` works); a bytes text feature is decoded as UTF-8.
"""

from __future__ import annotations

import abc
import fnmatch
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pass_jax.data.config import DEFAULT_SPLIT_FRACTIONS, SPLITS, DataConfig, check_fractions

__all__ = [
    "DocumentSource",
    "JsonlSource",
    "TextFileSource",
    "TfdsSource",
    "make_source",
    "split_for_key",
    "stdlib_root",
    "stdlib_source",
]


def split_for_key(key: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Assigns ``key`` to "train" / "validation" / "test" by the sha1 of its UTF-8 bytes."""
    f_train, f_val, _ = check_fractions(fractions)
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if u < f_train:
        return "train"
    if u < f_train + f_val:
        return "validation"
    return "test"


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; expected one of {(*SPLITS, 'all')}")


class DocumentSource(abc.ABC):
    """Random-access sequence of plain-text documents."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> str: ...

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hex digest identifying the documents (content and order), for cache keys."""

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"document index {index} out of range for {n} documents")
        return index % n


class TextFileSource(DocumentSource):
    """UTF-8 text files under ``root`` whose relative POSIX path or name matches ``pattern``.

    Files are ordered by relative path; ones that are not valid UTF-8 are skipped. With
    ``split`` in SPLITS, only files whose relative path hashes into that split are kept.
    Documents are read lazily from disk on access.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        pattern: str = "*.txt",
        split: str = "all",
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
        exclude_dirs: Sequence[str] = ("__pycache__",),
    ) -> None:
        _check_split(split)
        fractions = check_fractions(split_fractions)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"corpus directory not found: {str(root)!r}")
        self.split = split
        excluded = set(exclude_dirs)
        matched: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = [d for d in dirnames if d not in excluded]
            rel_dir = Path(dirpath).relative_to(self.root)
            for name in filenames:
                rel = (rel_dir / name).as_posix()
                if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(rel, pattern):
                    matched.append(rel)
        if not matched:
            raise ValueError(f"no files matching {pattern!r} under {str(root)!r}")
        matched.sort()
        self.all_keys: list[str] = matched  # every matching file, before split / UTF-8 check
        digest = hashlib.sha1(f"files:{split}:{fractions}".encode())
        keys: list[str] = []
        self.skipped: list[str] = []
        for rel in matched:
            if split != "all" and split_for_key(rel, fractions) != split:
                continue
            path = self.root / rel
            try:
                data = path.read_bytes()
                data.decode("utf-8")
            except (OSError, UnicodeDecodeError):
                self.skipped.append(rel)
                continue
            keys.append(rel)
            digest.update(rel.encode("utf-8") + b"\0" + hashlib.sha1(data).digest())
        if not keys:
            raise ValueError(f"split {split!r} of {str(root)!r} ({pattern!r}) has no documents")
        self.keys: list[str] = keys  # relative POSIX paths, in document order
        self._fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> str:
        rel = self.keys[self._check_index(index)]
        return (self.root / rel).read_bytes().decode("utf-8")

    @property
    def fingerprint(self) -> str:
        return self._fingerprint


def stdlib_root() -> Path:
    """The directory holding this interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source(
    split: str = "train",
    *,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    root: str | Path | None = None,
) -> TextFileSource:
    """The Python standard library's ``.py`` files (default offline corpus), hash-split."""
    return TextFileSource(
        stdlib_root() if root is None else root,
        pattern="*.py",
        split=split,
        split_fractions=split_fractions,
        exclude_dirs=("site-packages", "dist-packages", "__pycache__"),
    )


class JsonlSource(DocumentSource):
    """Documents from the ``text_field`` of each non-blank line of a JSON-lines file.

    Loaded into memory; hash-split by the sha1 of the text when ``split`` is in SPLITS.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        text_field: str = "text",
        split: str = "all",
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    ) -> None:
        _check_split(split)
        fractions = check_fractions(split_fractions)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"JSONL corpus not found: {str(path)!r}")
        texts: list[str] = []
        with self.path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{str(path)!r} line {lineno}: invalid JSON ({e})") from e
                if not isinstance(record, dict) or text_field not in record:
                    raise ValueError(f"{str(path)!r} line {lineno}: no field {text_field!r}")
                text = record[text_field]
                if not isinstance(text, str):
                    raise ValueError(f"{str(path)!r} line {lineno}: {text_field!r} is not a string")
                if split == "all" or split_for_key(text, fractions) == split:
                    texts.append(text)
        if not texts:
            raise ValueError(f"split {split!r} of {str(path)!r} has no documents")
        self.texts = texts
        digest = hashlib.sha1(f"jsonl:{split}:{fractions}".encode())
        for t in texts:
            digest.update(hashlib.sha1(t.encode("utf-8")).digest())
        self._fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[self._check_index(index)]

    @property
    def fingerprint(self) -> str:
        return self._fingerprint


class TfdsSource(DocumentSource):
    """A TFDS dataset split read through its random-access (array_record) data source.

    Exactly one of ``name`` (``tfds.data_source(name, split=, data_dir=, download=False)``) or
    ``directory`` (a prepared ``<data_dir>/<name>/<version>`` directory, via
    ``tfds.builder_from_directory``) must be given. ``text_key`` may be a ``/``-separated path
    into nested features. Bytes are decoded as UTF-8 (invalid bytes replaced).
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        directory: str | Path | None = None,
        split: str = "train",
        data_dir: str | Path | None = None,
        text_key: str = "text",
    ) -> None:
        if (name is None) == (directory is None):
            raise ValueError("TfdsSource needs exactly one of `name` or `directory`")
        import tensorflow_datasets as tfds  # Lazy: importing TFDS costs ~0.5 s.

        self.split = split
        self.text_key = text_key
        if directory is not None:
            if not Path(directory).is_dir():
                raise FileNotFoundError(f"TFDS dataset directory not found: {str(directory)!r}")
            try:
                builder = tfds.builder_from_directory(str(directory))
            except Exception as e:
                raise ValueError(f"not a prepared TFDS dataset: {str(directory)!r} ({e})") from e
            try:
                self._ds = builder.as_data_source(split=split)
            except Exception as e:
                raise ValueError(f"TFDS dataset {str(directory)!r}, split {split!r}: {e}") from e
            ident = f"dir:{Path(directory).resolve()}"
        else:
            if data_dir is not None and not Path(data_dir).is_dir():
                raise FileNotFoundError(f"TFDS data_dir not found: {str(data_dir)!r}")
            where = f"data_dir={str(data_dir)!r}"
            try:
                self._ds = tfds.data_source(
                    name,
                    split=split,
                    data_dir=None if data_dir is None else str(data_dir),
                    download=False,
                )
            except tfds.core.registered.DatasetNotFoundError as e:
                raise ValueError(f"TFDS dataset {name!r} not found ({where})") from e
            except Exception as e:
                raise ValueError(f"TFDS dataset {name!r} ({where}), split {split!r}: {e}") from e
            ident = f"name:{name}:{data_dir}"
        if len(self._ds) == 0:
            raise ValueError(f"TFDS dataset {ident}, split {split!r} has no examples")
        first = self._ds[0]
        self._text_of(first)  # Fails early with the available keys if text_key is wrong.
        info = self._ds.dataset_info
        digest = hashlib.sha1(f"tfds:{ident}:{info.full_name}:{split}:{len(self._ds)}".encode())
        data_path = Path(str(info.data_dir))
        if data_path.is_dir():
            for p in sorted(data_path.iterdir()):
                digest.update(f"{p.name}:{p.stat().st_size}".encode())
        self._fingerprint = digest.hexdigest()

    def _text_of(self, record: Any) -> str:
        value = record
        for part in self.text_key.split("/"):
            if not isinstance(value, dict) or part not in value:
                keys = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise ValueError(f"TFDS text key {self.text_key!r} not found; features: {keys}")
            value = value[part]
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            return value
        raise ValueError(f"TFDS feature {self.text_key!r} is {type(value).__name__}, not text")

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> str:
        return self._text_of(self._ds[self._check_index(index)])

    @property
    def fingerprint(self) -> str:
        return self._fingerprint


def make_source(config: DataConfig) -> DocumentSource:
    """Builds the `DocumentSource` described by ``config`` (fails early if it is missing)."""
    if config.source == "stdlib":
        return stdlib_source(config.split, split_fractions=config.split_fractions, root=config.path)
    if config.source == "text_dir":
        if config.path is None:
            raise ValueError("source='text_dir' needs `path`")
        return TextFileSource(
            config.path,
            pattern=config.pattern,
            split=config.split,
            split_fractions=config.split_fractions,
        )
    if config.source == "jsonl":
        if config.path is None:
            raise ValueError("source='jsonl' needs `path`")
        return JsonlSource(
            config.path,
            text_field=config.text_key,
            split=config.split,
            split_fractions=config.split_fractions,
        )
    if config.path is not None and config.tfds_name is not None:
        raise ValueError(
            "source='tfds' takes `path` (a dataset directory) or `tfds_name`, not both"
        )
    if config.path is None and config.tfds_name is None:
        raise ValueError("source='tfds' needs `tfds_name` or `path`")
    return TfdsSource(
        name=config.tfds_name,
        directory=config.path,
        split=config.split,
        data_dir=config.tfds_data_dir,
        text_key=config.text_key,
    )
