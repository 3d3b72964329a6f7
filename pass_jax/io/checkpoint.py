"""Checkpoints with orbax: base weights, lookahead table, optimizer state and metadata apart.

A checkpoint directory holds one directory per step (`<dir>/<step>/`), and in it one item each:

    params      the base weights (every `nnx.Param` but the PaSS head's)
    lookahead   the lookahead table `[L_max, d_model]` (tiny; loads onto any compatible base)
    adapters    the lookahead adapters (`model.Adapter`), when the model has them
    opt_state   the optimizer state (training checkpoints only)
    meta        JSON: the step, the data iterator's position, the model config

Saving goes through `ocp.CheckpointManager`: the newest `max_to_keep` steps are kept, arrays are
written asynchronously, and a step is written to a temporary directory and renamed when complete,
so an interrupted save never becomes the latest step and never touches an earlier one. Once a
step is complete, `SEAL` records its files' sizes: a step damaged later (a file truncated or
deleted) is found without reading its arrays.

Loading from a checkpoint directory uses its newest intact step: a damaged step (its seal does
not match, or it fails to read) is skipped with a warning naming it, and when none is intact one
`CheckpointError` lists them all.

Restoring reads one item directory at a time into an abstract target (`jax.ShapeDtypeStruct` per
leaf, each with an optional sharding, so arrays can be restored straight onto a device mesh),
after checking the stored tree against it. Sharded arrays are saved shard by shard (on several
hosts, each host writes its own) and each device reads only its part of the target sharding, so
a checkpoint saved on one mesh shape restores onto any other. A missing item, a tree or shape
mismatch, or an unreadable (corrupt) item raises `CheckpointError` naming the path and the
problem.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from pass_jax import distributed
from pass_jax.model import HEAD_PARAMS, AdapterParam, LookaheadParam, Transformer

ARRAY_ITEMS = ("params", "lookahead", "adapters", "opt_state")
META = "meta"
SEAL = "pass_jax_files.json"  # {relative path: size} of a complete step's files
_MAX_PROBLEMS = 8
_FILTERS = {
    "params": nnx.All(nnx.Param, nnx.Not(HEAD_PARAMS)),
    "lookahead": LookaheadParam,
    "adapters": AdapterParam,
}


T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match what it is restored into."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not match the target (not damage: no fallback)."""


def abstract_tree(tree: Any, shardings: Any = None) -> Any:
    """`jax.ShapeDtypeStruct`s for a tree of arrays.

    `shardings` is a matching tree of `jax.sharding.Sharding`s (or None: each leaf keeps its
    current sharding, if it has one).
    """
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            tree,
        )
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _key_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _leaves(tree: Any) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {_key_str(path): leaf for path, leaf in flat}


def _check_matches(stored: Any, target: Any, where: Path) -> None:
    """Raises `CheckpointError` listing how the stored tree differs from the target."""
    have, want = _leaves(stored), _leaves(target)
    problems = [f"missing {k}" for k in sorted(want.keys() - have.keys())]
    problems += [f"unexpected {k}" for k in sorted(have.keys() - want.keys())]
    for k in sorted(want.keys() & have.keys()):
        s, t = have[k], want[k]
        if tuple(s.shape) != tuple(t.shape) or np.dtype(s.dtype) != np.dtype(t.dtype):
            problems.append(
                f"{k}: stored {tuple(s.shape)} {s.dtype}, expected {tuple(t.shape)} {t.dtype}"
            )
    if problems:
        more = len(problems) - _MAX_PROBLEMS
        shown = problems[:_MAX_PROBLEMS] + ([f"... {more} more"] if more > 0 else [])
        raise CheckpointMismatchError(f"checkpoint {where} does not match: " + "; ".join(shown))


def _brief(e: Exception) -> str:
    """An exception's first line, cut short (tensorstore appends its whole spec)."""
    line = (str(e).splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else line[:200] + "..."


def read_item(item_dir: str | Path, target: Any) -> Any:
    """Restores one array item into `target` (a tree of `jax.ShapeDtypeStruct`), shape-checked."""
    item_dir = Path(item_dir).absolute()  # newer orbax refuses relative paths
    if not item_dir.is_dir():
        raise CheckpointError(f"missing checkpoint: {item_dir} does not exist")
    handler = ocp.StandardCheckpointHandler()
    try:
        stored = handler.metadata(epath.Path(item_dir)).tree
    except Exception as e:
        raise CheckpointError(
            f"corrupt checkpoint {item_dir}: unreadable metadata ({_brief(e)})"
        ) from e
    _check_matches(stored, target, item_dir)
    try:
        return handler.restore(epath.Path(item_dir), args=ocp.args.StandardRestore(target))
    except Exception as e:
        raise CheckpointError(f"corrupt checkpoint {item_dir}: {_brief(e)}") from e


def read_meta(step_dir: str | Path) -> dict[str, Any]:
    """The JSON metadata item of a step directory."""
    path = Path(step_dir).absolute() / META
    try:
        return ocp.JsonCheckpointHandler().restore(epath.Path(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"missing checkpoint metadata: {e}") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint metadata {path}: {e}") from e


def seal_step(path: Path) -> None:
    """Records the sizes of a complete step directory's files in its `SEAL` (atomically)."""
    sizes = {
        str(f.relative_to(path)): f.stat().st_size
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != SEAL
    }
    tmp = path / f"{SEAL}.tmp"
    tmp.write_text(json.dumps(sizes))
    os.replace(tmp, path / SEAL)


def check_step(path: Path) -> None:
    """Raises `CheckpointError` when a sealed step lacks a file or part of one, or when a step's
    metadata is unreadable (an unsealed step, e.g. `io.convert`'s, is only checked by reading)."""
    seal = path / SEAL
    if seal.is_file():
        try:
            sizes = json.loads(seal.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"corrupt checkpoint {path}: unreadable {SEAL} ({e})") from e
        for name, size in sizes.items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"damaged checkpoint {path}: {name} is missing")
            if file.stat().st_size != size:
                raise CheckpointError(
                    f"damaged checkpoint {path}: {name} has {file.stat().st_size} bytes of {size}"
                )
    read_meta(path)


def finished_steps(directory: Path) -> list[int]:
    """The steps of a checkpoint directory that finished saving, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def read_newest(directory: str | Path, read: Callable[[Path], T]) -> tuple[Path, T]:
    """The newest step directory of `directory` that passes `check_step` and `read`s without a
    `CheckpointError`, and what `read` returned; warns naming each damaged step skipped."""
    directory = Path(directory)
    damaged = []
    for step in reversed(finished_steps(directory)):
        path = directory / str(step)
        try:
            check_step(path)
            result = read(path)
        except CheckpointMismatchError:
            raise
        except CheckpointError as e:
            damaged.append(str(e))
            continue
        for problem in damaged:
            warnings.warn(f"{problem}; using step {step} instead", stacklevel=2)
        return path, result
    if damaged:
        raise CheckpointError(
            f"no intact checkpoint at {directory}: " + "; ".join(damaged) + " (remove the "
            "damaged step directories: training then starts this stage again)"
        )
    raise CheckpointError(f"no checkpoint found at {directory}")


def step_dir(path: str | Path) -> Path:
    """A step directory: `path` itself, or the newest intact step of a checkpoint directory."""
    path = Path(path)
    if (path / META).is_dir():
        return path
    return read_newest(path, lambda _: None)[0]


def split_params(model: Transformer) -> dict[str, dict[str, Any]]:
    """The model's weights as pure dicts: `params` (base), `lookahead` (if it has a table) and
    `adapters` (if it has lookahead adapters)."""
    has = {"params": True, "lookahead": model.has_lookahead, "adapters": model.has_adapters}
    return {name: nnx.to_pure_dict(nnx.state(model, _FILTERS[name])) for name in has if has[name]}


def assign_params(model: Transformer, items: Mapping[str, dict[str, Any]]) -> None:
    """Writes restored `params`, `lookahead` and/or `adapters` pure dicts into the model."""
    for name, pure in items.items():
        state = nnx.state(model, _FILTERS[name])
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(model, state)


def load_params(
    model: Transformer, path: str | Path, *, shardings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Loads base weights and, when both have them, the lookahead table and adapters into
    `model` (a model's own table or adapters stay when the checkpoint has none).

    `path` is a checkpoint directory (latest step) or a step directory. `shardings` optionally
    maps an item name to a tree of shardings for its leaves. Returns the step's metadata.
    """
    pures = split_params(model)

    def read(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        restored = {
            name: read_item(directory / name, abstract_tree(pure, (shardings or {}).get(name)))
            for name, pure in pures.items()
            if name == "params" or (directory / name).is_dir()  # base-only: keep the head
        }
        return restored, read_meta(directory)

    path = Path(path)
    restored, meta = read(path) if (path / META).is_dir() else read_newest(path, read)[1]
    assign_params(model, restored)
    return meta


def load_lookahead(model: Transformer, path: str | Path, *, sharding: Any = None) -> None:
    """Loads a lookahead table onto `model` (shape-checked against the model's table).

    `path` is a checkpoint directory, a step directory, or a `lookahead` item directory.
    """
    if not model.has_lookahead:
        raise CheckpointError("the model has no lookahead table (max_lookahead == 0)")
    path = Path(path)
    item_dir = path if (path / "_METADATA").is_file() else step_dir(path) / "lookahead"
    pure = split_params(model)["lookahead"]
    shardings = None if sharding is None else jax.tree.map(lambda _: sharding, pure)
    assign_params(model, {"lookahead": read_item(item_dir, abstract_tree(pure, shardings))})


class CheckpointStore:
    """Saves and restores the steps of one checkpoint directory (one training stage)."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, async_save: bool = True):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep}: at least one checkpoint must be kept")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._damaged: list[int] = []  # newer than the step restored; removed at the next save

    @property
    def latest_step(self) -> int | None:
        """The newest finished step (intact or not: `restore` checks)."""
        return self._manager.latest_step()

    def _seal(self) -> None:
        """Seals the finished steps that are not yet (process 0, after the saves finished)."""
        self._manager.wait_until_finished()
        if jax.process_index() != 0:
            return
        for step in finished_steps(self.directory):
            if not (self.directory / str(step) / SEAL).is_file():
                seal_step(self.directory / str(step))

    def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Starts saving array items (name -> tree) and JSON `meta` as `step` (async)."""
        unknown = set(items) - set(ARRAY_ITEMS)
        if unknown:
            raise ValueError(f"unknown checkpoint items {sorted(unknown)}; items: {ARRAY_ITEMS}")
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        args[META] = ocp.args.JsonSave(dict(meta))
        if self._damaged:
            if jax.process_index() == 0:
                for damaged in self._damaged:
                    shutil.rmtree(self.directory / str(damaged))
            distributed.barrier("checkpoint-damaged")
            self._manager.reload()
            self._damaged = []
        self._seal()  # the manager's save would wait for the previous one anyway
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(
        self, targets: Mapping[str, Any], step: int | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores the named items into their abstract targets, and the metadata.

        `step` defaults to the newest intact step (`read_newest`); the damaged steps after it
        are removed at the next `save`. Nothing on disk is modified here.
        """

        def read(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
            items = {name: read_item(directory / name, target) for name, target in targets.items()}
            return items, read_meta(directory)

        if step is None:
            path, restored = read_newest(self.directory, read)
            self._damaged = [s for s in finished_steps(self.directory) if s > int(path.name)]
            return restored
        return read(self.directory / str(step))

    def wait(self) -> None:
        """Blocks until pending saves are on disk, and seals them."""
        self._seal()

    def close(self) -> None:
        self._manager.close()
