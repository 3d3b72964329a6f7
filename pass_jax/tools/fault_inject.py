"""Fault injection: a tiny training run killed at random moments, sometimes with its newest
checkpoint damaged, then resumed and compared with an uninterrupted run.

    python -m pass_jax.tools.fault_inject --runs 20 --workdir /tmp/fi

The run is configs/tiny.py shrunk to seconds (`OVERRIDES`: stages base and lookahead, a
checkpoint every few steps). First one uninterrupted reference run; then each run starts the
training in a subprocess, sends it SIGKILL or SIGTERM after a random delay within the
reference's duration (training steps, checkpoint writes and evaluation alike), with
probability `--damage` truncates or deletes one file of the newest checkpoint, and reruns the
training to the end. Outcomes:

    recovered  each stage's final checkpoint arrays, the evaluation records and the training
               metrics (timings aside) equal the reference's
    clear      the rerun stopped with a one-line error (no traceback)
    other      anything else (the goal is none)

Prints a table and writes `<workdir>/fault_inject.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from pass_jax.io.checkpoint import ARRAY_ITEMS
from pass_jax.io.workdir import CHECKPOINTS_DIR, METRICS_FILE

STAGES = ("base", "lookahead")
# configs/tiny.py shrunk to a run of seconds (`--config.KEY=VALUE`); the tests use it too.
TINY_RUN = {
    "model.d_model": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "model.n_kv_heads": 2,
    "model.head_dim": 16,
    "model.d_ff": 64,
    "model.max_seq_len": 128,
    "tokenizer.vocab_size": 400,
    "tokenizer.max_train_bytes": 300_000,
    "data.max_documents": 24,
    "data.seq_len": 32,
    "data.batch_size": 4,
    "base.warmup_steps": 1,
    "lookahead.warmup_steps": 1,
    "eval.loss_sequences": 4,
    "eval.num_prompts": 1,
    "eval.prompt_len": 8,
    "eval.max_new_tokens": 8,
    "train.log_every": 1,
}
OVERRIDES = {**TINY_RUN, "stages": ",".join(STAGES), "train.max_to_keep": 2}
OUTCOMES = ("recovered", "clear", "other")
_TRAIN = "from pass_jax.cli.train import main; main()"


@dataclasses.dataclass
class Run:
    """One fault-injected run and its outcome."""

    index: int
    signal: str
    delay_s: float
    interrupted_rc: int | None = None  # None: it finished before the signal
    damaged: str | None = None  # "truncate <file>" / "delete <file>"
    resumed_rc: int | None = None
    outcome: str = "other"
    detail: str = ""


def _steps(base_steps: int) -> dict[str, int]:
    return {"base": base_steps, "lookahead": max(base_steps // 2, 1)}


def train_command(
    workdir: Path, base_steps: int, checkpoint_every: int, overrides: Mapping[str, Any] = {}
) -> list[str]:
    """The `pass-jax-train` command line of the shrunk tiny run (plus `overrides`)."""
    overrides = {
        **OVERRIDES,
        **{f"{stage}.steps": steps for stage, steps in _steps(base_steps).items()},
        "train.checkpoint_every": checkpoint_every,
        **overrides,
    }
    flags = [f"--config.{key}={value}" for key, value in overrides.items()]
    return [sys.executable, "-c", _TRAIN, "--config", "tiny", "--workdir", str(workdir), *flags]


def _final_arrays(workdir: Path, stage: str, step: int) -> dict[str, np.ndarray]:
    directory = workdir / CHECKPOINTS_DIR / stage / str(step)
    arrays = {}
    for item in ARRAY_ITEMS:
        if (directory / item).is_dir():
            tree = ocp.StandardCheckpointHandler().restore(epath.Path(directory.absolute() / item))
            flat, _ = jax.tree_util.tree_flatten_with_path(tree)
            arrays.update({item + jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
    return arrays


def _is_timing(key: str) -> bool:
    return key == "time" or key.endswith("_s")


def _records(workdir: Path) -> tuple[dict[tuple, dict[str, Any]], int]:
    """The train and eval records by (event, stage, step), timings dropped; and how many
    repeat an earlier record's key."""
    records, repeats = {}, 0
    path = workdir / METRICS_FILE
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if record["event"] not in ("train", "eval"):
            continue
        key = (record["event"], record["stage"], record["step"])
        repeats += key in records
        records[key] = {k: v for k, v in record.items() if not _is_timing(k)}
    return records, repeats


def compare(workdir: Path, reference: Path, base_steps: int) -> list[str]:
    """How a finished run differs from the reference (empty: it does not)."""
    problems = []
    for stage, steps in _steps(base_steps).items():
        if not (reference / CHECKPOINTS_DIR / stage).is_dir():  # not a configured stage
            continue
        try:
            got = _final_arrays(workdir, stage, steps)
        except Exception as e:  # a damaged final checkpoint is a difference, not a crash
            problems.append(f"{stage} step {steps} unreadable: {str(e).splitlines()[0][:120]}")
            continue
        want = _final_arrays(reference, stage, steps)
        if got.keys() != want.keys():
            problems.append(f"{stage} step {steps}: other arrays")
        elif not all(np.array_equal(got[k], want[k]) for k in want):
            problems.append(f"{stage} step {steps}: arrays differ")
    got, repeats = _records(workdir)
    want, _ = _records(reference)
    if repeats:
        problems.append(f"{repeats} repeated metrics records")
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    differ = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    for name, keys in (("missing", missing), ("unexpected", extra), ("different", differ)):
        if keys:
            problems.append(f"{len(keys)} {name} records, e.g. {keys[0]}")
    return problems


def _damage(workdir: Path, rng: random.Random) -> str | None:
    """Truncates or deletes one file of the newest checkpoint step; what it did."""
    steps = [p for p in (workdir / CHECKPOINTS_DIR).glob("*/*") if p.is_dir() and p.name.isdigit()]
    if not steps:
        return None
    newest = max(steps, key=lambda p: p.stat().st_mtime)
    victim = rng.choice(sorted(p for p in newest.rglob("*") if p.is_file()))
    if rng.random() < 0.5:
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        return f"truncate {victim.relative_to(workdir)}"
    victim.unlink()
    return f"delete {victim.relative_to(workdir)}"


def _outcome(run: Run, result: subprocess.CompletedProcess, problems: list[str]) -> None:
    output = result.stdout + result.stderr
    run.resumed_rc = result.returncode
    if result.returncode == 0:
        run.outcome = "other" if problems else "recovered"
        run.detail = "; ".join(problems)
        return
    lines = [line for line in output.splitlines() if line.strip()]
    run.detail = lines[-1] if lines else ""
    run.outcome = "other" if "Traceback" in output or not lines else "clear"


def inject(
    workdir: str | Path,
    *,
    runs: int,
    seed: int = 0,
    damage: float = 0.25,
    base_steps: int = 24,
    checkpoint_every: int = 3,
    timeout_s: float = 600.0,
    overrides: Mapping[str, Any] = {},
) -> dict[str, Any]:
    """Runs the reference and `runs` fault-injected runs under `workdir`; returns the report
    (also written to `<workdir>/fault_inject.json`). `overrides`: more config flags."""
    workdir = Path(workdir)
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / "reference").is_dir():
        raise ValueError(f"{workdir} is not empty (and not an earlier fault_inject workdir)")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    reference = workdir / "reference"
    start = time.perf_counter()
    subprocess.run(
        train_command(reference, base_steps, checkpoint_every, overrides),
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    reference_s = time.perf_counter() - start
    rng = random.Random(seed)
    results = []
    for index in range(runs):
        run_dir = workdir / f"run{index:03d}"
        run = Run(index, rng.choice(["SIGKILL", "SIGTERM"]), rng.uniform(0.5, reference_s))
        command = train_command(run_dir, base_steps, checkpoint_every, overrides)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=run.delay_s)
        except subprocess.TimeoutExpired:
            process.send_signal(getattr(signal, run.signal))
            run.interrupted_rc = process.wait(timeout=timeout_s)
        if rng.random() < damage:
            run.damaged = _damage(run_dir, rng)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        problems = compare(run_dir, reference, base_steps) if result.returncode == 0 else []
        _outcome(run, result, problems)
        results.append(run)
        print(_row(run), flush=True)
    summary = {
        "runs": runs,
        "faults_injected": sum(
            r.interrupted_rc is not None or r.damaged is not None for r in results
        ),
        "killed": sum(r.interrupted_rc is not None for r in results),
        "damaged": sum(r.damaged is not None for r in results),
        **{outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES},
    }
    report = {
        "reference_s": reference_s,
        "command": train_command(Path("<workdir>"), base_steps, checkpoint_every, overrides),
        "summary": summary,
        "runs": [dataclasses.asdict(r) for r in results],
    }
    (workdir / "fault_inject.json").write_text(json.dumps(report, indent=1))
    return report


def _row(run: Run) -> str:
    interrupted = "finished" if run.interrupted_rc is None else f"rc {run.interrupted_rc}"
    return (
        f"{run.index:4d}  {run.signal:7s} {run.delay_s:6.1f}s  {interrupted:9s}  "
        f"{run.damaged or '-':50.50s}  {run.outcome:9s}  {run.detail[:100]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workdir", required=True, help="empty, or an earlier run's (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--damage", type=float, default=0.25, help="chance to damage a run")
    parser.add_argument("--base_steps", type=int, default=24, help="lookahead: half as many")
    parser.add_argument("--checkpoint_every", type=int, default=3)
    args = parser.parse_args()
    print(f"{'run':>4s}  signal  delay    killed     {'damaged':50s}  outcome    detail")
    report = inject(
        args.workdir,
        runs=args.runs,
        seed=args.seed,
        damage=args.damage,
        base_steps=args.base_steps,
        checkpoint_every=args.checkpoint_every,
    )
    print(f"reference run: {report['reference_s']:.1f}s")
    print("  ".join(f"{k} {v}" for k, v in report["summary"].items()))
    print(f"report: {Path(args.workdir) / 'fault_inject.json'}")


if __name__ == "__main__":
    main()
