"""The model and its KV cache: incremental decoding equals a full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import forward, tiny_config, tiny_model
from flax import nnx

from pass_jax.config import ModelConfig
from pass_jax.decode.generation import generate
from pass_jax.kv_cache import KVCache
from pass_jax.model import (
    LookaheadParam,
    Transformer,
    causal_mask,
    loop_layers,
    unk_lookahead_table,
)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cache_steps_and_partial_commits_match_full_forward(scan_layers):
    model = tiny_model(1, scan_layers=scan_layers)
    lengths = [5, 11, 8]  # rows of different lengths in one batch
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 64, n).tolist() for n in lengths]
    padded = [s + [0] * (max(lengths) - len(s)) for s in seqs]  # causal: padding is ignored
    full = forward(model, jnp.asarray(padded))  # [3, 11, V], no cache

    # Prefill 3 tokens per row, then one-token steps: row b's t-th token at its own offset.
    cache = KVCache.create(model.config, 3, 32)
    tokens = jnp.asarray([s[:3] for s in seqs])
    logits, cache = forward(model, tokens, cache=cache)
    cache = cache.commit(jnp.full((3,), 3))
    np.testing.assert_allclose(logits, jnp.stack([f[:3] for f in full]), atol=1e-5)
    for t in range(3, 5):
        step = jnp.asarray([[s[t]] for s in seqs])
        logits, cache = forward(model, step, cache=cache)
        cache = cache.commit(jnp.ones(3, jnp.int32))
        np.testing.assert_allclose(logits[:, 0], jnp.stack([f[t] for f in full]), atol=1e-5)

    # Blocks of 4 tokens, each row committing a different number of them; the uncommitted
    # entries are overwritten by the next block.
    pos = np.array([5, 5, 5])
    commits = [[0, 4, 2], [0, 2, 1]]
    for counts in commits:
        block = np.zeros((3, 4), np.int32)
        for b, s in enumerate(seqs):
            chunk = s[pos[b] : pos[b] + 4]
            block[b, : len(chunk)] = chunk
        logits, cache = forward(model, jnp.asarray(block), cache=cache)
        for b in range(3):
            valid = min(4, lengths[b] - pos[b])
            np.testing.assert_allclose(
                logits[b, :valid], full[b][pos[b] : pos[b] + valid], atol=1e-5
            )
        cache = cache.commit(jnp.asarray(counts))
        pos += np.minimum(counts, np.array(lengths) - pos)
    np.testing.assert_array_equal(cache.lengths, pos)


def test_lookahead_slots_use_the_table():
    model = tiny_model(2)
    model.lookahead[...] = jax.random.normal(jax.random.key(0), model.lookahead[...].shape)
    tokens = jnp.asarray([[3, 7, 0, 0]])
    slots = jnp.asarray([[-1, -1, 0, 1]])
    x = model.embed_inputs(tokens, slots)
    np.testing.assert_array_equal(x[0, 0], model.embed[...][3])
    np.testing.assert_array_equal(x[0, 2], model.lookahead[...][0])
    np.testing.assert_array_equal(x[0, 3], model.lookahead[...][1])
    # Lookahead outputs differ from feeding the UNK token there.
    with_la = forward(model, tokens, lookahead_slots=slots)
    without = forward(model, tokens)
    assert not np.allclose(with_la[0, 2:], without[0, 2:])
    np.testing.assert_allclose(with_la[0, :2], without[0, :2], atol=1e-6)


def test_block_mask_and_positions_feed_a_tree_in_one_call():
    """Two candidate continuations of one prefix, fed side by side with a visibility mask and
    explicit positions, give the same logits as each branch fed on its own."""
    model = tiny_model(3)
    prefix, branch_a, branch_b = [5, 9, 2], [11, 4], [30, 31]
    ref_a = forward(model, jnp.asarray([prefix + branch_a]))[0, 3:]
    ref_b = forward(model, jnp.asarray([prefix + branch_b]))[0, 3:]

    cache = KVCache.create(model.config, 1, 16)
    _, cache = forward(model, jnp.asarray([prefix]), cache=cache)
    cache = cache.commit(jnp.asarray([3]))
    tree = jnp.asarray([branch_a + branch_b])
    positions = jnp.asarray([[3, 4, 3, 4]])
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = np.tril(np.ones((2, 2), bool))
    mask[0, 2:, 2:] = np.tril(np.ones((2, 2), bool))
    logits, _ = forward(model, tree, positions=positions, block_mask=jnp.asarray(mask), cache=cache)
    np.testing.assert_allclose(logits[0, :2], ref_a, atol=1e-5)
    np.testing.assert_allclose(logits[0, 2:], ref_b, atol=1e-5)

    # The same tree without a cache: the prefix is part of the block.
    mask_full = np.zeros((1, 7, 7), bool)
    mask_full[0, :3, :3] = np.tril(np.ones((3, 3), bool))
    mask_full[0, 3:, :3] = True
    mask_full[0, 3:, 3:] = mask[0]
    logits = forward(
        model,
        jnp.asarray([prefix + branch_a + branch_b]),
        positions=jnp.asarray([[0, 1, 2, 3, 4, 3, 4]]),
        block_mask=jnp.asarray(mask_full),
    )
    np.testing.assert_allclose(logits[0, 3:5], ref_a, atol=1e-5)
    np.testing.assert_allclose(logits[0, 5:], ref_b, atol=1e-5)


def test_scanned_and_looped_layers_compute_the_same_function():
    looped = tiny_model(4)
    scanned = tiny_model(4, scan_layers=True)
    pure = nnx.to_pure_dict(nnx.state(looped))
    layers = [pure["layers"][i] for i in range(looped.config.n_layers)]
    pure["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(scanned, state)
    tokens = jnp.asarray([[1, 2, 3, 4, 5]])
    np.testing.assert_allclose(looped(tokens), scanned(tokens), atol=1e-6)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_keeps_the_loss_and_gradients_and_decodes(scan_layers):
    plain = tiny_model(2, scan_layers=scan_layers)
    remat = tiny_model(2, scan_layers=scan_layers, remat=True)
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]])

    @nnx.jit
    def loss_and_grads(model):
        return nnx.value_and_grad(lambda m: jnp.mean(jax.nn.logsumexp(m(tokens), axis=-1)))(model)

    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(plain), loss_and_grads(remat)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads_a, grads_b)
    # Looped layers under remat inside the decode while_loop once failed to trace.
    expected = generate(plain, [[1, 2, 3]], max_new_tokens=10, method="pass", num_lookahead=3)
    got = generate(remat, [[1, 2, 3]], max_new_tokens=10, method="pass", num_lookahead=3)
    assert got.tokens == expected.tokens


def test_loop_layers_is_the_same_model_with_looped_layers():
    scanned = tiny_model(6, scan_layers=True, remat=True)
    looped = loop_layers(scanned)
    assert not looped.config.scan_layers and len(looped.layers) == scanned.config.n_layers
    tokens = jnp.asarray([[4, 9, 2, 7, 1]])
    np.testing.assert_allclose(looped(tokens), scanned(tokens), atol=1e-6)
    np.testing.assert_array_equal(looped.lookahead[...], scanned.lookahead[...])
    kwargs = dict(max_new_tokens=12, method="pass", num_lookahead=4)
    assert (
        generate(looped, [[5, 3]], **kwargs).tokens == generate(scanned, [[5, 3]], **kwargs).tokens
    )
    plain = tiny_model(6)
    assert loop_layers(plain) is plain


def test_lookahead_table_is_its_own_variable_type_and_starts_at_unk():
    model = tiny_model(5, unk_id=3, max_lookahead=4)
    table = nnx.state(model, LookaheadParam)
    assert jax.tree.leaves(table)[0].shape == (4, 32)
    np.testing.assert_array_equal(model.lookahead[...], jnp.tile(model.embed[...][3], (4, 1)))
    np.testing.assert_array_equal(unk_lookahead_table(model.embed[...], 3, 4), model.lookahead[...])
    no_table = tiny_model(5, max_lookahead=0)
    assert not no_table.has_lookahead
    assert not jax.tree.leaves(nnx.state(no_table, LookaheadParam))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown ModelConfig key.*'n_layer'"):
        ModelConfig.from_dict({"n_layer": 2})
    with pytest.raises(ValueError, match=r"n_kv_heads .3. must divide n_heads .4."):
        tiny_config(n_kv_heads=3)
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        ModelConfig.from_dict({"rope_scaling": {"rope_type": "yarn"}})
    with pytest.raises(ValueError, match="dtype='float8'"):
        tiny_config(dtype="float8")


def test_bfloat16_compute_stays_close_to_float32():
    f32 = tiny_model(6)
    bf16 = tiny_model(6, dtype="bfloat16")
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]])
    a, b = forward(f32, tokens), forward(bf16, tokens)
    assert b.dtype == jnp.float32  # logits always float32
    np.testing.assert_allclose(a, b, atol=0.1)


def test_causal_mask_shape():
    mask = causal_mask(2, 3)
    assert mask.shape == (2, 3, 3)
    assert bool(mask[0, 2, 0]) and not bool(mask[0, 0, 2])


def test_model_built_from_config_has_the_counted_parameters():
    config = tiny_config(tie_embeddings=True)
    model = Transformer(config, rngs=nnx.Rngs(0))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == config.num_params
