"""HF -> orbax conversion: the restored model equals `load_hf_llama` and matches transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import forward
from flax import nnx
from jax.sharding import PartitionSpec as P
from multidevice import run_on_devices

from pass_jax import sharding
from pass_jax.config import ModelConfig
from pass_jax.io import convert
from pass_jax.io.checkpoint import load_params, read_meta
from pass_jax.io.hf import load_hf_llama
from pass_jax.model import LookaheadParam, Transformer


@pytest.fixture(scope="module")
def test_hf():
    """The HF test helpers (imported lazily: the 8-device subprocess needs no torch)."""
    return pytest.importorskip("test_hf")  # skips without torch / transformers


@pytest.fixture(scope="module")
def hf_dir(test_hf, tmp_path_factory):
    model = test_hf.hf_model(attention="gqa")
    return model, test_hf.save(model, tmp_path_factory.mktemp("hf"))


def restore(out) -> Transformer:
    """A model built from the checkpoint's stored config, with its weights restored."""
    model = Transformer(ModelConfig.from_dict(read_meta(out)["model"]), rngs=nnx.Rngs(7))
    load_params(model, out)
    return model


def assert_same_state(a: Transformer, b: Transformer) -> None:
    flat_a, flat_b = nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))
    assert [path for path, _ in flat_a] == [path for path, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        x, y = np.asarray(jax.tree.leaves(x)[0]), np.asarray(jax.tree.leaves(y)[0])
        assert x.dtype == y.dtype and np.array_equal(x, y), path


@pytest.mark.parametrize("scan_layers", [False, True])
def test_round_trip_matches_load_hf_llama_and_transformers(test_hf, hf_dir, tmp_path, scan_layers):
    hf_model, path = hf_dir
    out = tmp_path / "converted"
    config = convert.convert(path, out, dtype="float32", scan_layers=scan_layers)
    assert sorted(p.name for p in out.iterdir()) == ["lookahead", "meta", "params"]
    assert read_meta(out)["model"] == config.to_dict()

    ours = restore(out)
    reference = load_hf_llama(path, scan_layers=scan_layers)
    assert_same_state(ours, reference)  # lookahead table (UNK rows) included
    tokens, positions = test_hf.inputs()
    logits = np.asarray(forward(ours, jnp.asarray(tokens), positions=jnp.asarray(positions)))
    expected = forward(reference, jnp.asarray(tokens), positions=jnp.asarray(positions))
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_allclose(logits, test_hf.hf_logits(hf_model, tokens, positions), atol=1e-4)


def test_cli_writes_bf16_stacked_params(test_hf, hf_dir, tmp_path):
    _, path = hf_dir
    out = tmp_path / "bf16"
    convert.main(["--hf_dir", str(path), "--out", str(out), "--dtype", "bfloat16", "--scan_layers"])
    ours = restore(out)
    assert ours.layers.attn.wq[...].dtype == jnp.bfloat16
    assert ours.layers.attn.wq[...].shape[0] == test_hf.N_LAYERS
    assert_same_state(ours, load_hf_llama(path, dtype="bfloat16", scan_layers=True))


def test_base_only_checkpoint_keeps_the_models_table(hf_dir, tmp_path):
    _, path = hf_dir
    out = tmp_path / "base_only"
    convert.convert(path, out, dtype="float32", max_lookahead=0)
    assert not (out / "lookahead").exists()
    model = Transformer(
        ModelConfig.from_dict({**read_meta(out)["model"], "max_lookahead": 3}), rngs=nnx.Rngs(0)
    )
    table = np.asarray(model.lookahead[...])
    load_params(model, out)
    np.testing.assert_array_equal(model.lookahead[...], table)
    np.testing.assert_array_equal(model.embed[...], load_hf_llama(path).embed[...])


def test_refuses_existing_output_and_leaves_nothing_on_failure(hf_dir, tmp_path):
    _, path = hf_dir
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken"):
        convert.convert(path, tmp_path / "taken")
    with pytest.raises(ValueError, match="dtype"):
        convert.convert(path, tmp_path / "out", dtype="int8")
    with pytest.raises(FileNotFoundError):
        convert.convert(tmp_path / "missing", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_restores_straight_onto_a_mesh(hf_dir, tmp_path):
    _, path = hf_dir
    out = tmp_path / "converted"
    convert.convert(path, out, dtype="float32", scan_layers=True)
    run_on_devices("test_convert", "check_sharded_restore", str(out))


def check_sharded_restore(out: str) -> None:
    """On 8 devices: params land sharded by the rules, with the unsharded values."""
    mesh = sharding.make_mesh((2, 1, 4))
    model = Transformer(ModelConfig.from_dict(read_meta(out)["model"]), rngs=nnx.Rngs(0))
    items = {"params": nnx.All(nnx.Param, nnx.Not(LookaheadParam)), "lookahead": LookaheadParam}
    shardings = {
        name: nnx.to_pure_dict(sharding.param_shardings(nnx.state(model, kind), mesh))
        for name, kind in items.items()
    }
    load_params(model, out, shardings=shardings)
    assert model.layers.attn.wq[...].sharding.spec == P(None, "fsdp", "tensor", None)
    assert model.lookahead[...].sharding.spec == P(None, None)
    assert_same_state(model, restore(out))
