"""Recovery: damaged or missing checkpoints fall back to intact ones; a signal stops in a step."""

import dataclasses
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from test_training import _arrays, _experiment, _same, _stage

from pass_jax.data.batches import BatchIterator
from pass_jax.experiment import TrainConfig
from pass_jax.io.checkpoint import CheckpointError, check_step, load_params
from pass_jax.io.workdir import find_checkpoint, load_model
from pass_jax.model import Transformer
from pass_jax.training import trainer as trainer_module
from pass_jax.training.stages import TrainingInterrupted, run, stage_checkpoints

# A failed read of corrupt arrays leaves an orbax/tensorstore callback on a closed event loop.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _checkpointed(tmp_path, steps: int = 4):
    """A one-stage (`joint`) experiment saving every 2 steps, the newest 2 kept."""
    exp = _experiment(tmp_path, steps=steps)
    return dataclasses.replace(exp, train=TrainConfig(log_every=2, checkpoint_every=2))


def _final_arrays(exp, workdir) -> dict:
    model = Transformer(exp.model.replace(vocab_size=300), rngs=nnx.Rngs(1))
    assert load_params(model, stage_checkpoints(workdir, "joint"))["step"] == 4
    return _arrays(model)


def _damage(step_dir, how: str) -> None:
    """Truncates or deletes the largest array file of a step."""
    largest = max((p for p in (step_dir / "params").rglob("*") if p.is_file()), key=os.path.getsize)
    if how == "truncate":
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    else:
        largest.unlink()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (experiment, workdir)."""
    tmp_path = tmp_path_factory.mktemp("reference")
    exp = _checkpointed(tmp_path)
    run(exp, tmp_path / "run")
    return exp, tmp_path / "run"


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_a_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, reference, how):
    exp, whole = reference
    workdir = tmp_path / "run"
    shutil.copytree(whole, workdir)
    checkpoints = stage_checkpoints(workdir, "joint")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]
    _damage(checkpoints / "4", how)
    damaged = rf"damaged checkpoint {checkpoints / '4'}: params/\S+ (is missing|has \d+ bytes of)"

    with pytest.warns(UserWarning, match=damaged + ".*; using step 2 instead"):
        found = find_checkpoint(exp, workdir, None)
    assert found == checkpoints / "2"
    assert load_model(found).config.max_lookahead == exp.model.max_lookahead

    with pytest.warns(UserWarning, match=damaged):
        run(exp, workdir)  # resumes at step 2 and saves step 4 again
    check_step(checkpoints / "4")
    assert _same(_final_arrays(exp, workdir), _final_arrays(exp, whole))


def test_no_intact_step_is_one_clear_error(tmp_path, reference):
    exp, whole = reference
    workdir = tmp_path / "run"
    shutil.copytree(whole, workdir)
    checkpoints = stage_checkpoints(workdir, "joint")
    _damage(checkpoints / "4", "truncate")
    _damage(checkpoints / "2", "delete")
    both = rf"damaged checkpoint {checkpoints / '4'}: .*; damaged checkpoint {checkpoints / '2'}: "
    with pytest.raises(CheckpointError, match=rf"no intact checkpoint at {checkpoints}: {both}"):
        run(exp, workdir)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint of stage\(s\) \['joint'\]"):
        find_checkpoint(exp, workdir, None)


def test_a_stage_without_a_finished_step_is_skipped_for_the_previous_one(tmp_path, reference):
    exp, whole = reference
    later = dataclasses.replace(exp, stages=(*exp.stages, _stage("lookahead")))
    (stage_checkpoints(whole, "lookahead") / "2.orbax-checkpoint-tmp").mkdir(parents=True)
    try:
        assert find_checkpoint(later, whole, None) == stage_checkpoints(whole, "joint") / "4"
    finally:
        shutil.rmtree(stage_checkpoints(whole, "lookahead"))


def test_sigterm_stops_within_a_step_of_the_device(tmp_path, monkeypatch):
    """The host may dispatch steps ahead of the device, and a signal is honoured after the step
    the host is at: at most one step may be queued behind the device's, or the save waits for
    every step dispatched ahead (up to `log_every` of them)."""
    exp = _experiment(tmp_path, steps=12)
    exp = dataclasses.replace(exp, train=TrainConfig(log_every=100, checkpoint_every=100))
    train_step, next_batch = trainer_module._train_step, BatchIterator.__next__

    def slow_step(*args, **kwargs):  # a device step much slower than the host's work
        state, metrics = train_step(*args, **kwargs)
        x = jax.lax.fori_loop(0, 30, lambda _, x: jnp.tanh(x @ x), jnp.full((384, 384), 0.01))
        return state, {**metrics, "slow": x[0, 0]}

    dispatched, unfinished = [], []
    step = trainer_module.Trainer.train_step

    def interrupted_at_step_6(self):
        if self.step == 6:
            unfinished.append(sum(not m["slow"].is_ready() for m in dispatched))
            os.kill(os.getpid(), signal.SIGTERM)
        return next_batch(self)

    monkeypatch.setattr(trainer_module, "_train_step", slow_step)
    monkeypatch.setattr(
        trainer_module.Trainer,
        "train_step",
        lambda *a: dispatched.append(step(*a)) or dispatched[-1],
    )
    monkeypatch.setattr(BatchIterator, "__next__", interrupted_at_step_6)
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM at stage joint step 7$"):
        run(exp, tmp_path / "run")
    assert unfinished[0] <= 1
