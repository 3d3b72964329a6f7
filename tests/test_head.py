"""The PaSS head artifact: saved from one model, loaded onto an HF-loaded or orbax-loaded base."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_hf
from flax import nnx

from pass_jax.decode.generation import generate
from pass_jax.io.checkpoint import CheckpointStore, split_params
from pass_jax.io.head import (
    INFO_FILE,
    HeadMismatchError,
    load_head,
    read_head_info,
    save_head,
)
from pass_jax.io.hf import load_hf_llama
from pass_jax.io.workdir import load_model
from pass_jax.model import AdapterParam

pytest.importorskip("transformers")

L = 4


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return test_hf.save(test_hf.hf_model(seed=3), tmp_path_factory.mktemp("base"))


def with_random_head(model, seed: int = 0):
    """The model, its table set to random rows and given random rank-2 adapters (a stand-in for
    a trained head)."""
    table = model.lookahead[...]
    model.lookahead[...] = 0.5 * jax.random.normal(jax.random.key(seed), table.shape, table.dtype)
    model.set_adapters(2)
    rng = np.random.default_rng(seed)
    adapters = nnx.state(model, AdapterParam)
    nnx.update(
        model,
        jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype), adapters),
    )
    return model


def decode(model, method: str = "pass"):
    prompts = [[5, 9, 2, 7], [11, 3, 8, 8, 1, 4, 6]]
    return generate(model, prompts, max_new_tokens=20, method=method, temperature=0.0)


def test_a_head_loads_onto_an_hf_model_and_decodes_identically(base_dir, tmp_path):
    source = with_random_head(load_hf_llama(base_dir, max_lookahead=L))
    info = save_head(source, tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [INFO_FILE, "head.safetensors"]
    assert read_head_info(tmp_path / "head") == info
    assert (info.max_lookahead, info.d_model, info.vocab_size) == (
        L,
        test_hf.D_MODEL,
        test_hf.VOCAB,
    )

    loaded = load_hf_llama(base_dir, max_lookahead=2, head=tmp_path / "head")  # the head's size
    np.testing.assert_array_equal(loaded.lookahead[...], source.lookahead[...])
    assert loaded.config.adapter_rank == info.adapters["rank"] == 2
    expected, result = decode(source), decode(loaded)
    assert result.tokens == expected.tokens
    assert result.stats.acceptance_by_position == expected.stats.acceptance_by_position
    assert result.stats.forward_passes == expected.stats.forward_passes
    unk = decode(load_hf_llama(base_dir, max_lookahead=L))
    assert unk.stats.accepted_by_position != expected.stats.accepted_by_position  # teeth

    # Onto an orbax-loaded (scanned, then looped) base of the same weights, and in bfloat16.
    store = CheckpointStore(tmp_path / "ckpt", async_save=False)
    scanned = load_hf_llama(base_dir, max_lookahead=L, scan_layers=True)
    store.save(1, split_params(scanned), {"step": 1, "model": scanned.config.to_dict()})
    store.close()
    restored = load_model(tmp_path / "ckpt")
    load_head(restored, tmp_path / "head")
    assert decode(restored).stats.forward_passes == expected.stats.forward_passes
    bf16 = load_hf_llama(base_dir, max_lookahead=L, param_dtype="bfloat16")
    load_head(bf16, tmp_path / "head")  # the fingerprint rounds to bfloat16


def test_a_head_refuses_another_base_or_table_size(base_dir, tmp_path):
    source = with_random_head(load_hf_llama(base_dir, max_lookahead=L))
    save_head(source, tmp_path / "head")
    other = load_hf_llama(test_hf.save(test_hf.hf_model(seed=4), tmp_path / "other"))
    with pytest.raises(HeadMismatchError, match="other base weights"):
        load_head(other, tmp_path / "head")
    reshaped = test_hf.hf_model(seed=3, attention="mha")
    with pytest.raises(HeadMismatchError, match=r"n_kv_heads 4 \(the head's base: 2\)"):
        load_head(load_hf_llama(test_hf.save(reshaped, tmp_path / "mha")), tmp_path / "head")
    with pytest.raises(HeadMismatchError, match="build the model with max_lookahead=4"):
        load_head(load_hf_llama(base_dir, max_lookahead=0), tmp_path / "head")


def test_a_head_checks_its_tokenizer_and_format(base_dir, tmp_path):
    class Fingerprinted:
        def __init__(self, fingerprint: str):
            self.fingerprint = fingerprint

    model = load_hf_llama(base_dir, max_lookahead=L)
    save_head(model, tmp_path / "head", tokenizer=Fingerprinted("abc"))
    load_head(model, tmp_path / "head", tokenizer=Fingerprinted("abc"))
    with pytest.raises(HeadMismatchError, match="another tokenizer"):
        load_head(model, tmp_path / "head", tokenizer=Fingerprinted("xyz"))
    with pytest.raises(FileNotFoundError, match="not a PaSS head directory"):
        load_head(model, tmp_path)
    info = json.loads((tmp_path / "head" / INFO_FILE).read_text())
    (tmp_path / "head" / INFO_FILE).write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        read_head_info(tmp_path / "head")
    with pytest.raises(ValueError, match="no lookahead table"):
        save_head(load_hf_llama(base_dir, max_lookahead=0), tmp_path / "none")
