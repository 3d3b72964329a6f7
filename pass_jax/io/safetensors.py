"""Reading safetensors files without torch: headers, single tensors, and multi-file sets.

Tensors are read with `safetensors.safe_open(..., framework="numpy")`, or, for dtypes the
installed safetensors cannot hand to numpy (bfloat16 and float8 in old versions), straight from
the file bytes viewed as `ml_dtypes` arrays. Nothing here knows a model format.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
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
        dtype = DTYPES[self.dtype]
        if self.end == self.begin:
            return np.zeros(self.shape, dtype)
        raw = np.memmap(self.file, np.uint8, "r", offset=self.begin, shape=(self.end - self.begin,))
        return np.array(raw.view(dtype).reshape(self.shape))


def read_json(path: Path) -> Any:
    """A JSON file's value; a ValueError naming the file when it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def read_header(path: Path) -> dict[str, TensorInfo]:
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
        if dtype not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
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
    tensors = read_header(Path(path))
    if name not in tensors:
        raise KeyError(f"tensor {name!r} not in {path}")
    return tensors[name].read_bytes()


class TensorFiles:
    """The tensors of one or more safetensors files (a sharded checkpoint), read one at a time.

    Opening reads every header (no tensor data). `weight_map` (tensor name -> file name, as in a
    sharded checkpoint's index) is checked against the headers when given; a tensor in two
    files is a ValueError.
    """

    def __init__(self, files: Sequence[Path], weight_map: Mapping[str, str] | None = None):
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in read_header(file).items():
                if name in self.tensors:
                    raise ValueError(
                        f"tensor {name!r} appears in both {self.tensors[name].file} and {file}"
                    )
                self.tensors[name] = info
        for name, shard in (weight_map or {}).items():
            if name not in self.tensors or self.tensors[name].file.name != shard:
                raise ValueError(f"the index maps tensor {name!r} to {shard}, which lacks it")
        self._handles: dict[Path, Any] = {}

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
        if array is None or array.dtype != DTYPES[info.dtype]:
            array = info.read_bytes()
        return array
