"""Metrics: a JSON-lines log (plus TensorBoard when installed), and the acceptance measurement."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pass_jax.decode.generation import generate
from pass_jax.model import Transformer

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
        self.path = workdir / "metrics.jsonl"
        self._file = self.path.open("a")
        self._tensorboard = _summary_writer(workdir / "tensorboard")

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


def measure_acceptance(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: str = "pass",
    num_lookahead: int | None = None,
) -> dict[str, Any]:
    """Greedy PaSS decoding of held-out prompts with `generate`, and its draft statistics.

    `acceptance_by_position[i]`: of the windows whose draft i was verified, the fraction that
    accepted it (greedy: it equals the model's own greedy token). `accepted_per_window`: drafts
    accepted per draft window. `tau`: new tokens per model call (autoregressive: 1).
    """
    stats = generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        method=method,
        num_lookahead=num_lookahead,
        temperature=0.0,
    ).stats
    windows = max(stats["reached_by_position"][0], 1)
    return {
        "acceptance_by_position": stats["acceptance_by_position"],
        "accepted_per_window": sum(stats["accepted_by_position"]) / windows,
        "tau": stats["tau"],
        "decode_tokens_per_s": stats["tokens_per_s"],
    }
