"""Lookahead adapters: token positions compute exactly the base model (chains and trees, logits
and written K/V), so greedy and sampled PaSS with adapters are the base model's; the PaSS head
(table + adapters) round trip; the `adapters` training stage."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_model, forward, sharp_model, tiny_config
from flax import nnx
from test_invariants import (
    PROMPT,
    _chi_square_p_value,
    _exact_distribution,
    _process,
    _sampled_counts,
)
from test_training import _experiment, _stage

from pass_jax.config import ADAPTER_TARGETS, ModelConfig
from pass_jax.decode.generation import generate
from pass_jax.experiment import StageConfig
from pass_jax.io.checkpoint import load_params
from pass_jax.io.head import (
    INFO_FILE,
    TABLE_FILE,
    HeadMismatchError,
    base_fingerprint,
    load_head,
    read_head_info,
    save_head,
)
from pass_jax.io.safetensors import read_header, read_raw_tensor
from pass_jax.io.workdir import load_model, stage_checkpoints, stage_head
from pass_jax.kv_cache import KVCache
from pass_jax.model import HEAD_PARAMS, MLP, AdapterParam, Attention, Transformer, loop_layers
from pass_jax.training.insertion import build_inputs, sample_insertion_points
from pass_jax.training.optim import trainable
from pass_jax.training.stages import run

# The decoding methods that feed lookahead slots; each must equal greedy AR of the base.
LOOKAHEAD_METHODS = ("pass", "pass_tree")
RANK, BATCH, BLOCK, CAPACITY = 4, 3, 8, 40
CONFIG = tiny_config(adapter_rank=RANK)  # most cases use it: they share compiled programs
PROMPTS, NEW = [[5, 9, 2, 7], [11, 3, 8, 8, 1, 4, 6], [1]], 20


def with_adapters(model: Transformer, seed: int, scale: float = 1.0) -> Transformer:
    """A copy of the model with every adapter weight random (`scale` * normal; 0: zeroed)."""
    model = nnx.clone(model)
    rng = np.random.default_rng(seed)  # numpy: no compilation per weight shape
    state = nnx.state(model, AdapterParam)
    nnx.update(
        model,
        jax.tree.map(lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), state),
    )
    return model


traces = []  # one entry per compilation of `_block_call`


@nnx.jit
def _block_call(model, cache, tokens, slots, positions, block_mask):
    """One model call on a block with a cache: logits [B, T, V] and the cache's k and v."""
    traces.append(1)
    logits, cache = model(
        tokens, lookahead_slots=slots, positions=positions, block_mask=block_mask, cache=cache
    )
    return logits, cache.k, cache.v


def _chain(rng: np.random.Generator, lengths: np.ndarray):
    """Each row: some tokens, then a chain of lookahead slots 0, 1, ..; causal."""
    num_tokens = rng.integers(1, BLOCK, BATCH)  # [B]
    index = np.arange(BLOCK)[None, :]
    slots = np.where(index < num_tokens[:, None], -1, index - num_tokens[:, None])
    mask = np.broadcast_to(np.tril(np.ones((BLOCK, BLOCK), bool)), (BATCH, BLOCK, BLOCK))
    return slots, lengths[:, None] + index, mask


def _tree(rng: np.random.Generator, lengths: np.ndarray):
    """Each row a random tree: token nodes (0 .. n-1, each the child of an earlier token) then
    lookahead nodes, each the child of any earlier node; a node sees its ancestors and itself,
    and sits at its depth."""
    slots = np.full((BATCH, BLOCK), -1)
    positions = np.zeros((BATCH, BLOCK), np.int64)
    mask = np.zeros((BATCH, BLOCK, BLOCK), bool)
    for row in range(BATCH):
        num_tokens = rng.integers(1, BLOCK - 1)
        depth = [0]
        mask[row, 0, 0] = True
        for node in range(1, BLOCK):
            parent = rng.integers(0, node)  # a token's earlier nodes are all tokens
            if node >= num_tokens:
                slots[row, node] = rng.integers(0, 8)
            mask[row, node] = mask[row, parent]
            mask[row, node, node] = True
            depth.append(depth[parent] + 1)
        positions[row] = lengths[row] + np.asarray(depth)
    return slots, positions, mask


def _cache(config: ModelConfig, lengths: np.ndarray) -> KVCache:
    """A cache with random committed entries, `lengths` [B] of them per row."""
    cache = KVCache.create(config, BATCH, CAPACITY)
    return cache.replace(
        k=jax.random.normal(jax.random.key(1), cache.k.shape),
        v=jax.random.normal(jax.random.key(2), cache.v.shape),
        lengths=jnp.asarray(lengths, jnp.int32),
    )


def _check_block(models, layout, rng, lengths, cache):
    """Calls each model (random adapters, the same zeroed, optionally no adapter code) on one
    block; checks every token position's logits and written K/V; returns the block's inputs and
    the logits [B, T, V] with random adapters at the lookahead slots [N, V]."""
    slots, positions, mask = layout(rng, lengths)
    tokens = jnp.asarray(rng.integers(0, 64, (BATCH, BLOCK)), jnp.int32)
    inputs = (tokens, *(jnp.asarray(x, jnp.int32) for x in (slots, positions)), mask)
    random, zero, *plain = (_block_call(m, cache, *inputs) for m in models)
    rows, cols = np.nonzero(slots < 0)  # the token positions
    written = (slice(None), rows, lengths[rows] + cols)  # their K/V entries in the cache
    for i, (got, want) in enumerate(zip(random, zero, strict=True)):
        picked = (rows, cols) if got.ndim == 3 else written
        np.testing.assert_array_equal(np.asarray(got)[picked], np.asarray(want)[picked])
        for ref in plain:  # the model without adapter code: to float32 rounding
            np.testing.assert_allclose(got[picked], ref[i][picked], rtol=1e-5, atol=1e-6)
    for ref in plain:
        np.testing.assert_allclose(zero[0], ref[0], rtol=1e-5, atol=1e-6)  # B = 0: the base
    return inputs, np.asarray(random[0])[slots >= 0], np.asarray(zero[0])[slots >= 0]


def test_token_positions_compute_exactly_the_base_model():
    base = Transformer(CONFIG.replace(adapter_rank=0), rngs=nnx.Rngs(3))  # no adapter code
    adapted = with_adapters(Transformer(CONFIG, rngs=nnx.Rngs(3)), 4)  # the same base
    zeroed = with_adapters(adapted, 0, scale=0.0)
    rng, lengths = np.random.default_rng(0), np.array([5, 0, 17])
    cache = _cache(CONFIG, lengths)
    traces.clear()
    for layout in (_chain, _tree, _tree):
        _, random, zero = _check_block((adapted, zeroed, base), layout, rng, lengths, cache)
        assert not np.allclose(random, zero, atol=1e-3)  # the adapters act at lookahead slots
    assert len(traces) == 2  # adapted and zeroed share one compiled program; the base its own

    # The training layout (text, then lookahead blocks), without a cache.
    batch = jnp.asarray(rng.integers(0, 64, (2, 24)), jnp.int32)
    layout = build_inputs(batch, sample_insertion_points(jax.random.key(0), 2, 24, 3), 4)
    text = layout.text_targets.shape[1]
    calls = [
        forward(
            m,
            layout.tokens,
            lookahead_slots=layout.lookahead_slots,
            positions=layout.positions,
            block_mask=layout.block_mask,
        )
        for m in (adapted, zeroed)
    ]
    np.testing.assert_array_equal(calls[0][:, :text], calls[1][:, :text])
    assert not np.allclose(calls[0][:, text:], calls[1][:, text:])


def _scanned(model: Transformer, config: ModelConfig) -> Transformer:
    """The looped model's weights in a model with scanned layers (`config`): no initialisation
    of stacked weights to compile."""
    scanned = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    pure = nnx.to_pure_dict(nnx.state(model))
    layers = [pure["layers"][i] for i in range(config.n_layers)]
    pure["layers"] = jax.tree.map(lambda *ws: jnp.stack(ws), *layers)
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(scanned, state)
    return scanned


def test_scanned_layers_remat_and_the_per_slot_gate_keep_token_positions_exact():
    looped = Transformer(CONFIG, rngs=nnx.Rngs(3))
    looped.set_adapters(RANK, gate="per_slot")
    looped = with_adapters(looped, 4)
    config = looped.config.replace(scan_layers=True, remat=True)
    adapted = _scanned(looped, config)
    rng, lengths = np.random.default_rng(1), np.array([2, 9, 0])
    cache = _cache(config, lengths)
    models = (adapted, with_adapters(adapted, 0, scale=0.0))
    inputs, random, zero = _check_block(models, _tree, rng, lengths, cache)
    assert not np.allclose(random, zero, atol=1e-3)
    scanned_logits = _block_call(adapted, cache, *inputs)[0]
    np.testing.assert_allclose(scanned_logits, _block_call(looped, cache, *inputs)[0], atol=1e-5)
    # Decoding loops the layers: the adapters come along.
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(loop_layers(adapted))),
        nnx.to_pure_dict(nnx.state(looped)),
    )


def test_no_adapters_no_adapter_weights():
    model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
    assert not nnx.state(model, AdapterParam) and not model.has_adapters
    assert {*Attention.SPECS, *MLP.SPECS} == set(ADAPTER_TARGETS)
    config = tiny_config(adapter_rank=RANK, adapter_targets=("wq", "w_down"))
    model = Transformer(config, rngs=nnx.Rngs(0))
    sizes = sum(x.size for x in jax.tree.leaves(nnx.state(model, HEAD_PARAMS)))
    assert sizes == config.num_head_params == 32 * 8 + 2 * RANK * (32 + 32 + 48 + 32)


@pytest.mark.parametrize("method", LOOKAHEAD_METHODS)
def test_greedy_pass_with_adapters_equals_greedy_ar_of_the_base(method):
    base, chain_token = chain_model(4, 3)
    adapted = nnx.clone(base)  # the same base and table
    adapted.set_adapters(RANK)
    adapted = with_adapters(adapted, 1, scale=0.1)
    prompts = [[*prompt[:-1], chain_token] for prompt in PROMPTS[:-1]] + PROMPTS[-1:]
    ar = generate(base, prompts, max_new_tokens=NEW, method="ar")
    ps = generate(adapted, prompts, max_new_tokens=NEW, method=method, num_lookahead=4)
    assert ps.tokens == ar.tokens
    accepted, reached = ps.stats.accepted_by_position, ps.stats.reached_by_position
    assert accepted[0] > 0 and reached[0] > accepted[0]  # drafts accepted and rejected


def test_sampled_pass_with_adapters_has_the_base_models_exact_distribution():
    base = sharp_model(20, vocab_size=6)
    adapted = with_adapters(sharp_model(20, vocab_size=6, adapter_rank=RANK), 2, scale=0.5)
    sampling = dict(temperature=1.0, top_k=0, top_p=1.0)
    exact = _exact_distribution(base, 3, **sampling)
    counts, stats = _sampled_counts(adapted, 2, **sampling)
    assert _chi_square_p_value(counts, exact) > 1e-3
    assert 0.05 < stats.acceptance_by_position[0] < 0.95
    # The test has power: accepting every (adapted) draft would give t2 ~ q_1.
    slots = jnp.asarray([[-1, -1, 0]])
    q1 = _process(
        np.asarray(forward(adapted, jnp.asarray([[*PROMPT, 0]]), lookahead_slots=slots))[0, 2],
        **sampling,
    )
    assert _chi_square_p_value(counts.sum(axis=2), np.outer(exact.sum(axis=(1, 2)), q1)) < 1e-6


def _decode(model):
    return generate(model, PROMPTS, max_new_tokens=NEW, method="pass", num_lookahead=4)


def test_a_head_with_adapters_round_trips_onto_a_fresh_base(tmp_path):
    source, _ = chain_model(4, 3)  # a table that drafts well: adapters change its acceptance
    source.set_adapters(RANK)
    source = with_adapters(source, 6, scale=0.3)
    info = save_head(source, tmp_path / "head")
    assert info.adapters == {"rank": RANK, "targets": list(ADAPTER_TARGETS), "gate": "lookahead"}
    assert read_head_info(tmp_path / "head") == info
    tensors = read_header(tmp_path / "head" / TABLE_FILE)
    assert tensors["layers.attn.adapters.wq.a"].shape == (2, 32, RANK)  # [layers, d, r]

    fresh, _ = chain_model(4, 3)  # the same base, without adapters
    fresh.lookahead[...] = jnp.zeros_like(fresh.lookahead[...])
    load_head(fresh, tmp_path / "head")
    assert fresh.config == CONFIG
    expected, result = _decode(source), _decode(fresh)
    assert result.tokens == expected.tokens
    assert result.stats.accepted_by_position == expected.stats.accepted_by_position
    without = _decode(with_adapters(fresh, 0, scale=0.0))
    assert without.tokens == expected.tokens  # lossless either way
    assert without.stats.accepted_by_position != expected.stats.accepted_by_position  # teeth

    other = Transformer(tiny_config(), rngs=nnx.Rngs(8))
    with pytest.raises(HeadMismatchError, match="other base weights"):
        load_head(other, tmp_path / "head")
    one_layer, _ = chain_model(4, 3)  # one weight of one layer differs
    one_layer.layers[1].mlp.w_down[...] = one_layer.layers[1].mlp.w_down[...] * 1.5
    with pytest.raises(HeadMismatchError, match="hash of every base weight"):
        load_head(one_layer, tmp_path / "head")

    # Scanned layers and the per-slot gate: the same head as the looped copy of the model.
    looped = Transformer(CONFIG, rngs=nnx.Rngs(5))
    looped.set_adapters(RANK, gate="per_slot")
    scanned = _scanned(with_adapters(looped, 6), looped.config.replace(scan_layers=True))
    scanned_info = save_head(scanned, tmp_path / "scanned")
    assert scanned_info == save_head(loop_layers(scanned), tmp_path / "looped")
    names = read_header(tmp_path / "scanned" / TABLE_FILE)
    assert names["layers.mlp.adapters.w_down.slot_scale"].shape == (2, 8)  # [layers, L_max]
    for name in names:
        np.testing.assert_array_equal(
            read_raw_tensor(tmp_path / "scanned" / TABLE_FILE, name),
            read_raw_tensor(tmp_path / "looped" / TABLE_FILE, name),
        )


def test_an_old_table_only_head_still_loads_and_removes_adapters(tmp_path):
    base = Transformer(tiny_config(), rngs=nnx.Rngs(9))
    base.lookahead[...] = jax.random.normal(jax.random.key(1), base.lookahead.shape)
    save_head(base, tmp_path / "head")
    info = json.loads((tmp_path / "head" / INFO_FILE).read_text())  # as format 1 wrote it
    del info["adapters"]
    info.update(format_version=1, base=base_fingerprint(base, version=1))
    (tmp_path / "head" / INFO_FILE).write_text(json.dumps(info))

    model = with_adapters(Transformer(tiny_config(adapter_rank=2), rngs=nnx.Rngs(9)), 3)
    assert load_head(model, tmp_path / "head").format_version == 1
    assert not model.has_adapters and not nnx.state(model, AdapterParam)
    np.testing.assert_array_equal(model.lookahead[...], base.lookahead[...])
    with pytest.raises(HeadMismatchError, match="embedding / final norm"):
        load_head(Transformer(tiny_config(), rngs=nnx.Rngs(1)), tmp_path / "head")


def test_adapter_config_and_stage_checks(tmp_path):
    with pytest.raises(ValueError, match=r"unknown \['wz'\]"):
        ModelConfig(adapter_rank=4, adapter_targets=("wq", "wz"))
    with pytest.raises(ValueError, match="adapter_gate='always'"):
        ModelConfig(adapter_gate="always")
    with pytest.raises(ValueError, match="needs max_lookahead >= 1"):
        ModelConfig(adapter_rank=4, max_lookahead=0)
    assert ModelConfig.from_dict({"adapter_targets": ["wq"]}).adapter_targets == ("wq",)
    stage = _stage("adapters", generation_share=1.0)
    assert (stage.trains_base, stage.lm_weight, trainable(stage)) == (False, 0.0, HEAD_PARAMS)
    assert stage.generated_rows(4) == 4
    assert stage.model_config(tiny_config(adapter_rank=2)).adapter_rank == 2
    assert _stage("joint").model_config(tiny_config(adapter_rank=2)).adapter_rank == 0
    with pytest.raises(ValueError, match=r"generation_share must be in \[0, 1\]"):
        StageConfig(name="adapters", steps=1, learning_rate=1.0, lookahead_weight=1.0,
                    generation_share=1.5)  # fmt: skip
    with pytest.raises(ValueError, match=r"set config\.model\.adapter_rank >= 1"):
        dataclasses.replace(_experiment(tmp_path, steps=3), stages=(stage,))


def test_adapters_stage_trains_only_the_head_and_exports_it(tmp_path):
    adapters = _stage("adapters", steps=3, warmup_steps=1, lookahead_loss="kl")
    exp = _experiment(tmp_path, steps=3)
    model = CONFIG.replace(max_seq_len=exp.model.max_seq_len)  # the weight shapes of the others
    exp = dataclasses.replace(exp, model=model, stages=(adapters,))
    run(exp, tmp_path / "run")

    workdir = tmp_path / "run"
    trained = load_model(stage_checkpoints(workdir, "adapters"))
    assert trained.config.adapter_rank == RANK
    initial = exp.model.replace(vocab_size=trained.config.vocab_size, adapter_rank=0)
    base = Transformer(initial, rngs=nnx.Rngs(exp.seed))  # the base it started from
    base_weights = nnx.All(nnx.Param, nnx.Not(HEAD_PARAMS))
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.state(base, base_weights),
        nnx.state(trained, base_weights),
    )  # the base is frozen, bit for bit
    assert not np.array_equal(base.lookahead[...], trained.lookahead[...])
    for block in trained.layers:
        for adapter in [*block.attn.adapters.values(), *block.mlp.adapters.values()]:
            assert np.any(adapter.b[...] != 0)  # every adapter trained (B starts at 0)

    head = stage_head(workdir, "adapters")
    assert read_head_info(head).adapters["rank"] == RANK
    load_head(base, head)  # onto the base: the trained model's outputs
    tokens, slots = jnp.asarray([[3, 5, 7, 0, 0, 0]]), jnp.asarray([[-1, -1, -1, 0, 1, 2]])
    np.testing.assert_array_equal(
        forward(base, tokens, lookahead_slots=slots),
        forward(trained, tokens, lookahead_slots=slots),
    )
    meta = load_params(trained, stage_checkpoints(workdir, "adapters"))
    assert meta["inputs"]["config.model.adapter_rank"] == RANK
