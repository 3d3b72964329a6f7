"""Checkpoints: separate base and lookahead items, shape checks, missing and corrupt steps."""

import hashlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from pass_jax.experiment import ExperimentConfig, default_config
from pass_jax.io.checkpoint import (
    CheckpointError,
    CheckpointStore,
    abstract_tree,
    check_step,
    load_lookahead,
    load_params,
    split_params,
    step_dir,
)
from pass_jax.model import Transformer

CONFIG = tiny_config(n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64, max_seq_len=64, max_lookahead=4)


def _model(seed: int, **changes) -> Transformer:
    return Transformer(CONFIG.replace(**changes), rngs=nnx.Rngs(seed))


def _arrays(model: Transformer) -> dict:
    return jax.tree.map(np.array, split_params(model))


def _same(a, b) -> bool:
    return jax.tree.all(jax.tree.map(np.array_equal, a, b))


@pytest.fixture
def stores():
    """Opens checkpoint stores, closed after the test."""
    opened = []

    def open_store(directory) -> CheckpointStore:
        opened.append(CheckpointStore(directory, max_to_keep=3))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


def _save(store: CheckpointStore, model: Transformer, steps=(1,)) -> CheckpointStore:
    for step in steps:
        model.lookahead[...] = model.lookahead[...] + step  # each step's table differs
        store.save(step, split_params(model), {"step": step, "model": CONFIG.to_dict()})
    store.wait()
    return store


def _digest(directory) -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def test_roundtrip_keeps_n_and_never_picks_an_unfinished_step(tmp_path, stores):
    model = _model(0)
    store = _save(stores(tmp_path), model, steps=(1, 2, 3, 4))
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3, 4]
    (tmp_path / "5.orbax-checkpoint-tmp").mkdir()  # a save that never finished
    assert store.latest_step == 4 and step_dir(tmp_path) == tmp_path / "4"
    fresh = _model(1)
    assert load_params(fresh, tmp_path)["step"] == 4
    assert _same(_arrays(fresh), _arrays(model))


def test_restore_target_takes_a_sharding_per_leaf(tmp_path, stores):
    model = _model(0)
    store = _save(stores(tmp_path), model)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    pure = split_params(model)
    targets = abstract_tree(pure, jax.tree.map(lambda _: sharding, pure))
    restored, meta = store.restore(targets)
    assert meta["step"] == 1
    assert all(x.sharding == sharding for x in jax.tree.leaves(restored))
    assert _same(jax.tree.map(np.array, restored), _arrays(model))


def test_wrong_shape_is_a_clear_error(tmp_path, stores):
    _save(stores(tmp_path), _model(0))
    wider = _model(0, d_ff=96)
    before = _arrays(wider)
    with pytest.raises(CheckpointError) as error:
        load_params(wider, tmp_path)
    message = str(error.value)
    assert str(tmp_path / "1" / "params") in message
    assert "layers/0/mlp/w_up: stored (32, 64) float32, expected (32, 96) float32" in message
    assert _same(_arrays(wider), before)  # nothing was half-loaded


def test_missing_checkpoint_is_a_clear_error(tmp_path, stores):
    with pytest.raises(CheckpointError, match=f"no checkpoint found at {tmp_path / 'nothing'}"):
        load_params(_model(0), tmp_path / "nothing")
    _save(stores(tmp_path / "run"), _model(0))
    shutil.rmtree(tmp_path / "run" / "1" / "lookahead")
    with pytest.raises(
        CheckpointError, match=r"damaged checkpoint .*1: lookahead/_METADATA is missing"
    ):
        load_lookahead(_model(0), tmp_path / "run")


# A failed read of corrupt arrays leaves an orbax/tensorstore callback on a closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    ("damaged", "message"),
    [
        ("params/d/*", "corrupt checkpoint {step}/params: "),  # the arrays
        ("params/_METADATA", "corrupt checkpoint {step}/params: unreadable metadata"),
        ("meta/metadata", "corrupt checkpoint metadata {step}/meta"),
    ],
)
def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_one_still_restores(
    tmp_path, stores, damaged, message
):
    model = _model(0)
    store = _save(stores(tmp_path), model, steps=(1,))
    good = _arrays(model)
    store.save(2, split_params(_model(5)), {"step": 2})
    store.wait()
    step_1 = _digest(tmp_path / "1")
    files = list((tmp_path / "2").glob(damaged))
    assert files
    for path in files:
        path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=message.format(step=tmp_path / "2")):
        store.restore(abstract_tree(split_params(model)), step=2)
    assert _digest(tmp_path / "1") == step_1
    fresh = _model(3)
    load_params(fresh, tmp_path / "1")
    assert _same(_arrays(fresh), good)


def test_lookahead_checkpoint_loads_onto_a_fresh_compatible_base(tmp_path, stores):
    trained = _model(0)
    trained.lookahead[...] = jnp.arange(4 * 32, dtype=jnp.float32).reshape(4, 32)
    _save(stores(tmp_path), trained)
    base = _model(7)
    base_weights = _arrays(base)["params"]
    load_lookahead(base, tmp_path / "1" / "lookahead")  # the item alone is enough
    np.testing.assert_array_equal(base.lookahead[...], trained.lookahead[...])
    assert _same(_arrays(base)["params"], base_weights)
    with pytest.raises(CheckpointError, match=r"lookahead: stored \(4, 32\) .* expected \(8, 32\)"):
        load_lookahead(_model(0, max_lookahead=8), tmp_path)


def test_a_relative_checkpoint_path_restores(tmp_path, stores, monkeypatch):
    """Orbax 0.11+ refuses relative paths; a `--workdir` given relative must still load."""
    trained = _model(0)
    _save(stores(tmp_path / "run"), trained)
    monkeypatch.chdir(tmp_path)
    fresh = _model(5)
    load_params(fresh, step_dir("run"))
    assert _same(_arrays(fresh), _arrays(trained))


@pytest.mark.parametrize("keep", [0, -1])
def test_keeping_no_checkpoint_is_refused_when_the_config_is_parsed(tmp_path, keep):
    with pytest.raises(ValueError, match=f"max_to_keep={keep}: at least one checkpoint"):
        CheckpointStore(tmp_path, max_to_keep=keep)
    config = default_config()
    config.train.max_to_keep = keep
    with pytest.raises(ValueError, match=f"config.train.max_to_keep={keep} must be at least 1"):
        ExperimentConfig.from_config(config)


def test_a_store_creates_its_directory_at_the_first_save(tmp_path, stores):
    store = stores(tmp_path / "stage")
    assert not (tmp_path / "stage").exists() and store.latest_step is None
    _save(store, _model(0))
    assert store.latest_step == 1


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_sealed_step_is_skipped_with_a_warning(tmp_path, stores, damage):
    model = _model(0)
    store = _save(stores(tmp_path), model, steps=(1,))
    good = _arrays(model)
    _save(store, _model(5), steps=(2,))
    check_step(tmp_path / "2")
    item = max((tmp_path / "2" / "params").rglob("*"), key=lambda p: p.stat().st_size)
    if damage == "truncate":
        item.write_bytes(item.read_bytes()[:10])
    else:
        item.unlink()
    name = item.relative_to(tmp_path / "2")
    with pytest.warns(UserWarning, match=f"damaged checkpoint {tmp_path / '2'}: {name} .*step 1"):
        restored, meta = store.restore(abstract_tree(split_params(model)))
    assert meta["step"] == 1 and _same(jax.tree.map(np.array, restored), good)
    _save(store, model, steps=(2,))  # the damaged step is replaced
    check_step(tmp_path / "2")
