"""Training on a mesh (fake CPU devices, in subprocesses): sharded steps equal the single-device
steps, checkpoints saved on one mesh shape restore onto another, and two processes joined by
the JAX distributed runtime train and checkpoint as one."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_model
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from multidevice import run_on_devices, run_on_processes

from pass_jax import distributed, sharding
from pass_jax.experiment import StageConfig
from pass_jax.io.checkpoint import CheckpointStore, abstract_tree, split_params
from pass_jax.training.trainer import Trainer

MESHES = ((8, 1, 1), (2, 4, 1), (1, 2, 4))
SEQ_LEN = 24


def _stage(name: str) -> StageConfig:
    weight = 0.0 if name == "base" else 1.0
    return StageConfig(
        name=name, steps=10, learning_rate=1e-2, lookahead_weight=weight, num_insertions=3
    )


def _batches(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 64, (8, SEQ_LEN), np.int32) for _ in range(n)]


def _train(
    model: nnx.Module, stage: StageConfig, mesh=None, steps: int = 2
) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(model, stage, seed=0, mesh=mesh)
    metrics = [jax.device_get(trainer.train_step(batch)) for batch in _batches(steps)]
    trainer.sync()
    return trainer, metrics


def _items(trainer: Trainer) -> dict:
    opt_state = nnx.to_pure_dict(nnx.state(trainer.optimizer))
    return {**split_params(trainer.model), "opt_state": opt_state}


def _leaves(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> str:
    """The output of one subprocess on 8 devices that runs the two checks below in turn (the
    second reuses a trainer of the first; JAX's start-up is paid once)."""
    directory = tmp_path_factory.mktemp("checkpoints")
    return run_on_devices("test_sharded_training", "check_on_8_devices", str(directory))


def test_sharded_train_steps_match_one_device(eight_devices):
    assert "train steps: ok" in eight_devices


def test_checkpoint_restores_onto_another_mesh(eight_devices):
    assert "checkpoint: ok" in eight_devices


def check_on_8_devices(directory: str) -> None:
    trainer = check_sharded_train_steps()
    print("train steps: ok")
    check_checkpoint_reshards(trainer, directory)
    print("checkpoint: ok")


def check_sharded_train_steps() -> Trainer:
    """Two steps of the frozen lookahead stage and one of the joint stage on three meshes: the
    losses and the lookahead table of one device to 1e-5, the base weights to 1e-4; state and
    optimizer moments sharded as the rules say.

    (AdamW's first step moves a weight by `lr * g / (|g| + eps)`: for the few gradients near
    `eps` = 1e-8, the rounding of a sharded sum shows in the weight at ~1e-5.)"""
    for name, steps in (("lookahead", 2), ("joint", 1)):
        stage = _stage(name)
        reference, expected = _train(tiny_model(0), stage, steps=steps)
        for shape in MESHES:
            mesh = sharding.make_mesh(shape)
            trainer, metrics = _train(tiny_model(0), stage, mesh, steps)  # its state is donated
            for got, want in zip(metrics, expected, strict=True):
                np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, err_msg=name)
            weights = jax.tree.map(np.asarray, split_params(trainer.model))
            want = jax.tree.map(np.asarray, split_params(reference.model))
            for item, atol in (("lookahead", 1e-5), ("params", 1e-4)):
                close = lambda a, b: np.testing.assert_allclose(a, b, atol=atol)  # noqa: B023
                jax.tree.map(close, weights[item], want[item])

            state = _leaves(_items(trainer))
            assert state["['lookahead']['lookahead']"].sharding.spec == P(None, None)
            embed = state["['params']['embed']"].sharding
            assert embed.mesh == mesh and embed.spec == sharding.logical_to_spec(
                ("vocab", "embed"), (64, 32), mesh
            )
            for key, leaf in state.items():  # AdamW moments: their param's sharding
                if "['mu']" in key or "['nu']" in key:
                    param = key.split("['mu']" if "['mu']" in key else "['nu']")[1]
                    item = "['lookahead']" if param == "['lookahead']" else "['params']"
                    assert leaf.sharding == state[item + param].sharding, key
                elif "opt_state" in key:  # step and AdamW counters
                    assert leaf.sharding.spec == P(), key
    return trainer  # joint, (1, 2, 4)


def check_checkpoint_reshards(trainer: Trainer, directory: str) -> None:
    """Params, table and optimizer state of a trainer on a (1, 2, 4) mesh, saved, restore onto
    (2, 4, 1) and (8, 1, 1) meshes, each array straight into its target sharding, values
    unchanged."""
    saved = _items(trainer)
    store = CheckpointStore(directory)
    store.save(1, saved, {"step": 1})
    store.wait()
    for shape in ((2, 4, 1), (8, 1, 1)):
        target = Trainer(tiny_model(1), trainer.stage, seed=0, mesh=sharding.make_mesh(shape))
        targets = abstract_tree(_items(target))  # each leaf: its sharding on the new mesh
        restored, meta = store.restore(targets)
        assert meta["step"] == 1
        got, want, wanted = _leaves(restored), _leaves(saved), _leaves(targets)
        assert got.keys() == want.keys()
        for key, leaf in got.items():
            assert leaf.sharding == wanted[key].sharding, (shape, key)
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want[key]), err_msg=key)
        assert got["['params']['embed']"].sharding.spec == sharding.logical_to_spec(
            ("vocab", "embed"), (64, 32), target.mesh
        )
    store.close()
    print("ok")


def test_multi_host_jobs_are_recognised_from_the_environment():
    detect = distributed.multi_process_environment
    assert not detect({})
    assert not detect({"TPU_WORKER_HOSTNAMES": "localhost", "SLURM_NTASKS": "1"})
    assert detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476", "JAX_NUM_PROCESSES": "2"})
    assert detect({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"})
    assert detect({"SLURM_NTASKS": "4"})
    assert not distributed.initialize(False, env={})  # one process: nothing to start


def test_two_processes_train_and_checkpoint_as_one(tmp_path):
    outputs = run_on_processes("test_sharded_training", "check_two_processes", str(tmp_path))
    assert all(out.endswith("ok\n") for out in outputs)


def _own_rows(mesh: jax.sharding.Mesh, shape: tuple[int, ...]) -> slice:
    """The rows of a global batch that this process's devices hold."""
    indices = sharding.batch_sharding(mesh, shape).addressable_devices_indices_map(shape).values()
    return slice(min(i[0].start for i in indices), max(i[0].stop for i in indices))


def check_two_processes(directory: str) -> None:
    """A multi-host job in miniature: two lookahead steps on a (2, 2, 1) mesh over both
    processes, each fed only its own rows of every batch; process 0 checks losses and table
    against its one-device run of the whole batches. Then a checkpoint written by both
    processes restores onto a (1, 1, 4) mesh."""
    stage = _stage("lookahead")
    main = jax.process_index() == 0
    if main:  # the reference, on process 0's first device
        reference, expected = _train(tiny_model(0), stage)
    mesh = sharding.make_mesh((2, 2, 1))
    trainer = Trainer(tiny_model(0), stage, seed=0, mesh=mesh)
    losses = [
        float(trainer.train_step(batch[_own_rows(mesh, batch.shape)])["loss"])
        for batch in _batches(2)
    ]
    trainer.sync()
    if main:
        np.testing.assert_allclose(losses, [m["loss"] for m in expected], rtol=1e-5)
        table = reference.model.lookahead[...]
        np.testing.assert_allclose(trainer.model.lookahead[...], table, atol=1e-5)

    saved = _items(trainer)
    store = CheckpointStore(Path(directory) / "checkpoints")
    store.save(2, saved, {"step": 2})
    store.wait()
    target = Trainer(tiny_model(1), stage, seed=0, mesh=sharding.make_mesh((1, 1, 4)))
    targets = abstract_tree(_items(target))
    restored, _ = store.restore(targets)
    store.close()
    wanted = _leaves(targets)
    assert all(leaf.sharding == wanted[k].sharding for k, leaf in _leaves(restored).items())
    gather = lambda tree: multihost_utils.process_allgather(tree, tiled=True)
    jax.tree.map(np.testing.assert_array_equal, gather(restored), gather(saved))
    print("ok")
