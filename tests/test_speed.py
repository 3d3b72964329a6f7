"""Parameter sharing and SPEED (`method="speed"`): a shared model computes what its layers
unrolled into distinct copies compute; greedy SPEED equals greedy AR token for token whether its
early predictions are right, wrong or mixed; sampled SPEED has the model's exact distribution
(with a mutation that must fail); bad options are clear errors before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sharp_model, tiny_model
from flax import nnx
from test_invariants import VOCAB, _chi_square_p_value, _exact_distribution, _sampled_counts

from pass_jax.config import ModelConfig
from pass_jax.decode import generation, verify
from pass_jax.decode.generation import generate
from pass_jax.experiment import ExperimentConfig, StageConfig, default_config
from pass_jax.kv_cache import KVCache
from pass_jax.model import Transformer

REPEATS = 3
# Every model has these shapes (one set of eager ops to compile). Every greedy case: the trained
# early head, 4 rows, prompts of at most 16 tokens and 17-32 new tokens, so that the cases share
# their compiled programs (AR, and SPEED at each pipeline depth).
SHARED = dict(vocab_size=VOCAB, n_repeats=REPEATS, max_seq_len=64)
GREEDY = dict(SHARED, early_head="trained")


@nnx.jit
def _prefill(model: Transformer, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits [B, T, V] and the written keys [depth, B, S, K, D] of a prefill into a fresh
    cache."""
    hidden, cache = model.hidden_states(tokens, cache=KVCache.create(model.config, 1, 24))
    return model.logits(hidden), cache.k


def _scanned(model: Transformer) -> Transformer:
    """The same model with its layers stacked for `lax.scan`."""
    scanned = nnx.eval_shape(
        lambda: Transformer(model.config.replace(scan_layers=True), rngs=nnx.Rngs(0))
    )
    pure = nnx.to_pure_dict(nnx.state(model))
    layers = [pure["layers"][i] for i in range(model.config.n_layers)]
    pure["layers"] = jax.tree.map(lambda *w: jnp.stack(w), *layers)
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(scanned, state)
    return scanned


def test_a_shared_model_equals_its_layers_unrolled_into_distinct_copies():
    shared = tiny_model(0, **SHARED)
    unrolled = tiny_model(1, **dict(SHARED, n_layers=2 * REPEATS, n_repeats=1))
    for i, block in enumerate(unrolled.layers):
        nnx.update(block, nnx.state(shared.layers[i % 2]))
    for name in ("embed", "lm_head", "lookahead"):
        getattr(unrolled, name)[...] = getattr(shared, name)[...]
    tokens = jax.random.randint(jax.random.key(0), (1, 20), 0, VOCAB)
    unrolled_logits, unrolled_keys = _prefill(unrolled, tokens)
    for model in (shared, _scanned(shared)):
        logits, keys = _prefill(model, tokens)
        assert keys.shape[0] == 2 * REPEATS  # a cache layer per layer application
        np.testing.assert_allclose(logits, unrolled_logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(keys, unrolled_keys, rtol=1e-5, atol=1e-5)
    assert shared.config.num_params < unrolled.config.num_params


def _bigram(model: Transformer, early_scale: float) -> Transformer:
    """Every block's output projections zeroed: each repeat returns its input, so the early
    prediction reads the final residual stream. The trained early head's projection set to
    `early_scale - 1` times the identity scales its logits by `early_scale` (its norm and the
    final norm are both the identity at initialisation): 1 makes every early prediction right,
    -1 (the argmin) every one wrong."""
    for block in model.layers:
        block.attn.wo[...] = jnp.zeros_like(block.attn.wo[...])
        block.mlp.w_down[...] = jnp.zeros_like(block.mlp.w_down[...])
    model.early_proj[...] = (early_scale - 1) * jnp.eye(model.config.d_model)
    return model


def _mixed(seed: int) -> Transformer:
    """A random model whose early head is a random perturbation of the shared head's."""
    model = sharp_model(seed, **GREEDY)
    noise = jax.random.normal(jax.random.key(seed), model.early_proj[...].shape)
    model.early_proj[...] = 0.2 * noise
    return model


# (model, prompt lengths, max_new, EOS step (None: no EOS), pipeline depths, early accuracy:
# "right", "wrong" or None for anything in between).
GREEDY_CASES = {
    "random": (lambda: sharp_model(1, **GREEDY), [3, 5, 1, 7], 24, None, (3, 2), None),
    "random early head, EOS": (lambda: _mixed(2), [16, 2, 9, 4], 30, 10, (3,), None),
    "always right": (lambda: _bigram(sharp_model(3, **GREEDY), 1.0), [4, 1, 2, 8], 24, None,
                     (3, 2), "right"),
    "always wrong": (lambda: _bigram(sharp_model(4, **GREEDY), -1.0), [2, 6, 3, 1], 20, 6, (3,),
                     "wrong"),
}  # fmt: skip


@pytest.mark.parametrize("case", GREEDY_CASES.values(), ids=GREEDY_CASES.keys())
def test_greedy_speed_equals_greedy_ar_token_for_token(case):
    build, lengths, max_new, eos_step, depths, accuracy = case
    model = build()
    rng = np.random.default_rng(max_new)
    prompts = [rng.integers(0, VOCAB, n).tolist() for n in lengths]
    ar = generate(model, prompts, max_new_tokens=max_new)
    eos = None
    if eos_step is not None:
        eos = ar.tokens[0][eos_step]
        ar = generate(model, prompts, max_new_tokens=max_new, eos_id=eos)
        assert ar.tokens[0][-1] == eos and len(ar.tokens[0]) < max_new
    for depth in depths:
        result = generate(
            model, prompts, max_new_tokens=max_new, eos_id=eos, method="speed",
            pipeline_depth=depth,
        )  # fmt: skip
        assert result.tokens == ar.tokens, depth
        stats = result.stats
        assert stats.reached_by_position[0] > 0 and 1 <= stats.tokens_in_flight <= depth
        if accuracy == "right":
            assert stats.acceptance_rate == 1.0
            if depth == REPEATS:  # a token per call once the pipeline is full
                assert stats.forward_passes == REPEATS + max_new - 1
        elif accuracy == "wrong":
            assert stats.acceptance_rate == 0.0  # every token flushed: R calls per token
            assert stats.per_row.forward_passes == [REPEATS * len(row) for row in ar.tokens]
        else:
            assert 0.0 < stats.acceptance_rate < 1.0


SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0)


@pytest.fixture(scope="module")
def sampled_model():
    model = sharp_model(20, **SHARED)  # the shared early head
    return model, _exact_distribution(model, 3, **SAMPLING)


def test_sampled_speed_has_the_models_exact_distribution(sampled_model):
    model, exact = sampled_model
    counts, stats = _sampled_counts(model, None, method="speed", **SAMPLING)
    assert _chi_square_p_value(counts, exact) > 1e-3
    assert 0.05 < stats.acceptance_rate < 0.95  # both branches of the rule ran
    assert stats.tokens_in_flight > 2.0


def test_a_broken_rule_fails_the_distribution_test(sampled_model, monkeypatch):
    model, exact = sampled_model
    monkeypatch.setattr(verify, "_residual", lambda p, q: p)  # a rejection resamples from p
    generation._EXECUTABLES.clear()
    try:
        counts, _ = _sampled_counts(model, None, method="speed", **SAMPLING)
    finally:
        monkeypatch.undo()
        generation._EXECUTABLES.clear()
    assert _chi_square_p_value(counts, exact) < 1e-6


UNSHARED = dict(SHARED, n_repeats=1)


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (GREEDY, dict(pipeline_depth=4), r"pipeline_depth=4 is outside \[1, n_repeats=3\]"),
        (GREEDY, dict(pipeline_depth=0), r"pipeline_depth=0 is outside"),
        (GREEDY, dict(num_lookahead=2), "its own option is pipeline_depth"),
        (GREEDY, dict(adaptive="acceptance"), "no draft windows"),
        (GREEDY, dict(max_new_tokens=60), "tokens in flight past them"),
        (GREEDY, dict(method="ar", pipeline_depth=2), "an option of method='speed'"),
        (UNSHARED, {}, "this model has n_repeats=1"),
    ],
)
def test_bad_speed_options_are_clear_errors_before_compiling(config, kwargs, message):
    model = tiny_model(0, **config)
    options = dict(max_new_tokens=20, method="speed") | kwargs
    before = len(generation._EXECUTABLES)
    with pytest.raises(ValueError, match=message):
        generate(model, [[1, 2, 3]], **options)
    assert len(generation._EXECUTABLES) == before


def test_bad_sharing_configs_are_clear_errors():
    with pytest.raises(ValueError, match="n_repeats must be >= 1"):
        ModelConfig(n_repeats=0)
    with pytest.raises(ValueError, match=r"early_head='trained' .* needs n_repeats > 1"):
        ModelConfig(early_head="trained")
    with pytest.raises(ValueError, match="early_head='last'"):
        ModelConfig(n_repeats=2, early_head="last")
    with pytest.raises(ValueError, match="0 in the frozen-base stages"):
        StageConfig("lookahead", 10, 1e-2, lookahead_weight=1.0, early_weight=0.5)
    config = default_config()
    config.base.early_weight = 0.5
    with pytest.raises(ValueError, match="needs a parameter-shared model"):
        ExperimentConfig.from_config(config)
    config.model.n_repeats, config.hf_dir = 2, "/no/hf/dir"  # refused before it is read
    with pytest.raises(ValueError, match="an HF LLaMA's layers are distinct"):
        ExperimentConfig.from_config(config)
