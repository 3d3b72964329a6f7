"""The training log: JSON lines (plus TensorBoard scalars when TensorBoard is installed)."""

from __future__ import annotations

import importlib
import json
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

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
