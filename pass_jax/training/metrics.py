"""The training log: JSON lines (plus TensorBoard scalars when TensorBoard is installed)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pass_jax.io.workdir import METRICS_FILE, TENSORBOARD_DIR

_TENSORBOARD_MODULES = ("tensorboardX", "torch.utils.tensorboard")


def _summary_writer(logdir: Path) -> Any:
    """A TensorBoard `SummaryWriter` from the first installed provider, else None."""
    for name in _TENSORBOARD_MODULES:
        try:
            return importlib.import_module(name).SummaryWriter(str(logdir))
        except ImportError:
            continue
    return None


def read_records(workdir: str | Path) -> list[dict[str, Any]]:
    """The records of `<workdir>/metrics.jsonl` (none if it does not exist); a line cut short by
    a crash is left out."""
    path = Path(workdir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


class MetricsWriter:
    """Appends one JSON record per call to `<workdir>/metrics.jsonl`, and scalars to TensorBoard.

    `enabled=False` (every process but 0 of a multi-host run) writes nothing.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / METRICS_FILE
        self._file = self.path.open("a")
        self._tensorboard = _summary_writer(workdir / TENSORBOARD_DIR)

    def write(self, event: str, stage: str, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"event": event, "stage": stage, "step": step, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is None:
            return
        for key, value in values.items():
            series = value if isinstance(value, list) else [value]
            for i, x in enumerate(series):
                if isinstance(x, int | float) and not isinstance(x, bool):
                    suffix = f"/{i + 1}" if isinstance(value, list) else ""
                    self._tensorboard.add_scalar(f"{stage}/{event}/{key}{suffix}", x, step)

    def drop_after(self, stage: str, step: int) -> None:
        """Drops `stage`'s records past `step` (written by a run that died after its last
        checkpoint, which the stage now resumes from) and lines cut short, rewriting the file
        atomically (a temporary file, then `os.replace`)."""
        if not self.enabled:
            return
        lines = self.path.read_text().splitlines()
        kept = [
            json.dumps(r)
            for r in read_records(self.path.parent)
            if r.get("stage") != stage or r.get("step", 0) <= step
        ]
        if len(kept) == len(lines):
            return
        self._file.close()
        temporary = self.path.with_name(f".{METRICS_FILE}.tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, self.path)
        self._file = self.path.open("a")

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
