"""HF LLaMA (safetensors) -> our orbax checkpoint, streamed one parameter at a time.

    python -m pass_jax.io.convert --hf_dir /ckpt/Llama-2-7b-hf --out /ckpt/llama2_7b \\
        [--dtype bfloat16] [--scan_layers] [--max_lookahead 8]

The output is one step directory in the layout of `pass_jax.io.checkpoint`, so
`checkpoint.load_params(model, out)` (optionally with shardings, to land on a mesh) and
`train.init_from=out` read it directly:

    out/params/         orbax PyTree (the `StandardCheckpointHandler` format): the pure dict of
                        every `nnx.Param` but the lookahead table, in `--scan_layers` layout
    out/lookahead/      the table [L_max, d_model], every row the UNK token's embedding (the
                        paper's initialisation); absent with --max_lookahead 0 (a base-only
                        checkpoint loads onto a model with any table size)
    out/meta/metadata   JSON: {"step": 0, "model": ModelConfig fields, "source": hf_dir}

Memory: orbax is handed a tree of lazy leaves, and a type handler that materialises and writes
them one at a time (each write finishes, and its memory is released, before the next leaf is
read). The peak is about twice the largest parameter in our layout (the array, and tensorstore's
buffers while writing it; with --scan_layers a stacked `[n_layers, ...]` parameter, built from
its HF tensors one layer at a time) on top of the runtime: never the whole model. (Measured on
a 2.1 GB float32 checkpoint: 0.76 GiB anonymous peak with --scan_layers, largest parameter
344 MiB. The safetensors files are memory-mapped, so RSS also counts the clean page-cache pages
of the tensors read so far; the kernel reclaims those under pressure.)

The directory appears atomically: everything is written to a temporary sibling that is renamed
last.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from orbax.checkpoint import future

from pass_jax.config import DTYPE_NAMES, ModelConfig
from pass_jax.io import checkpoint, hf
from pass_jax.model import Transformer, unk_lookahead_table


def _release_freed_memory() -> None:
    """Returns freed heap memory to the OS. glibc keeps what tensorstore's worker threads free
    in per-thread arenas, and the process would otherwise grow by up to one parameter per
    parameter written."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


@dataclasses.dataclass(frozen=True)
class _LazyArray:
    """A leaf that orbax writes without holding it: `load()` builds the array when needed."""

    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]


class _SequentialHandler(ocp.type_handlers.NumpyHandler):
    """Writes `_LazyArray`s as numpy arrays, loading each only when the previous one is on disk."""

    def __init__(self) -> None:
        super().__init__(deepcopy_host_arrays=False)

    async def serialize(self, values, infos, args=None) -> list[future.Future]:
        args = args or [ocp.SaveArgs()] * len(values)
        parent = super()

        async def write_in_turn() -> None:
            for value, info, arg in zip(values, infos, args, strict=True):
                array = value.load()
                if array.shape != value.shape or array.dtype != value.dtype:
                    raise RuntimeError(
                        f"{info.name}: built {array.dtype}{list(array.shape)}, "
                        f"expected {value.dtype}{list(value.shape)}"
                    )
                for written in await parent.serialize([array], [info], [arg]):
                    await asyncio.to_thread(written.result)
                del array
                _release_freed_memory()

        return [future.CommitFutureAwaitingContractedSignals(write_in_turn(), name="convert")]


def _save_lazy(directory: Path, tree: Any) -> None:
    registry = ocp.type_handlers.create_type_handler_registry((_LazyArray, _SequentialHandler()))
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
    with ocp.Checkpointer(handler) as checkpointer:
        checkpointer.save(epath.Path(directory), args=ocp.args.PyTreeSave(tree))


def _key(path: tuple) -> tuple[str | int, ...]:
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


def _param_loaders(
    source: hf.HFCheckpoint, specs: Sequence[hf.ParamSpec], config: ModelConfig
) -> dict[tuple[str | int, ...], Callable[[], np.ndarray]]:
    """For each of our param paths, a function that builds it (in the storage dtype) from the
    HF tensors, one at a time (`hf.read_param`)."""

    def loader(group: list[hf.ParamSpec]) -> Callable[[], np.ndarray]:
        return lambda: hf.read_param(source, group, config.weight_dtype, config.scan_layers)

    groups = hf.specs_by_param(specs, config.scan_layers)
    return {path: loader(group) for path, group in groups.items()}


def convert(
    hf_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: str = "bfloat16",
    scan_layers: bool = False,
    max_lookahead: int = 8,
) -> ModelConfig:
    """Converts a local HF `LlamaForCausalLM` checkpoint into a step directory at `out` (which
    must not exist); returns the model config stored with it. `dtype` is the storage (and
    compute) dtype."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r}: choose one of {DTYPE_NAMES}")
    out = Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} exists: give a new directory")
    config = hf.load_hf_config(
        hf_dir, dtype=dtype, max_lookahead=max_lookahead, scan_layers=scan_layers
    )
    source = hf.HFCheckpoint(hf_dir)
    specs = hf.check_tensors(source, config)
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    loaders = _param_loaders(source, specs, config)

    def lazy(path: tuple, leaf: jax.ShapeDtypeStruct) -> _LazyArray:
        return _LazyArray(tuple(leaf.shape), np.dtype(leaf.dtype), loaders.pop(_key(path)))

    items = checkpoint.split_params(model)
    params = jax.tree_util.tree_map_with_path(lazy, items["params"])
    if loaders:
        raise RuntimeError(f"HF tensors with no place in the model: {sorted(loaders)}")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _save_lazy(staging / "params", params)
        if max_lookahead:
            (embed_spec,) = [s for s in specs if s.path == ("embed",)]
            embed = hf.read_param(source, [embed_spec], config.weight_dtype, False)  # [V, d]
            table = np.asarray(unk_lookahead_table(embed, config.unk_id, max_lookahead))  # [L, d]
            del embed
            lookahead = jax.tree.map(lambda _: table, items["lookahead"])
            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(epath.Path(staging / "lookahead"), lookahead)
        meta = {"step": 0, "model": config.to_dict(), "source": str(Path(hf_dir).absolute())}
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            checkpointer.save(epath.Path(staging / checkpoint.META), args=ocp.args.JsonSave(meta))
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf_dir", required=True, help="HF checkpoint directory (safetensors)")
    parser.add_argument("--out", required=True, help="new output directory")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPE_NAMES)
    parser.add_argument("--scan_layers", action="store_true", help="stacked [n_layers, ...]")
    parser.add_argument(
        "--max_lookahead", type=int, default=8, help="table rows, L_max (0: no table)"
    )
    args = parser.parse_args(argv)
    config = convert(
        args.hf_dir,
        args.out,
        dtype=args.dtype,
        scan_layers=args.scan_layers,
        max_lookahead=args.max_lookahead,
    )
    print(f"wrote {args.out}: {config.num_params / 1e9:.3f}B params, {args.dtype}")


if __name__ == "__main__":
    main()
