"""Sampling: the static `Sampler` and its traced parameters, the sampler's draws, and the
reductions it is built on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pass_jax import sampling
from pass_jax.sampling import Sampler


def test_create_splits_the_static_sampler_from_its_traced_parameters():
    sampler, params = Sampler.create(temperature=0.7, top_k=3, top_p=0.9)
    assert sampler == Sampler(greedy=False, top_k=3, use_top_p=True)
    assert hash(sampler) == hash(Sampler(False, 3, True))  # a static jit argument
    np.testing.assert_allclose([params.temperature, params.top_p], [0.7, 0.9], rtol=1e-6)
    greedy, params = Sampler.create()
    assert greedy == Sampler(greedy=True, top_k=0, use_top_p=False)
    assert float(params.temperature) > 0  # never divides by zero
    # Traced values: another temperature or top-p value is the same sampler.
    assert Sampler.create(0.5, 3, 0.8)[0] == sampler
    for bad, message in [
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            Sampler.create(**bad)


def test_choose_is_argmax_when_greedy_and_draws_from_probabilities_otherwise():
    logits = jnp.asarray([[[0.0, 3.0, 1.0, 2.9]]])  # [B=1, 1, V=4]
    keys = jax.random.split(jax.random.key(0), 1)
    greedy, params = Sampler.create()
    assert greedy.choose(keys, logits, params).tolist() == [[1]]
    top2, params = Sampler.create(temperature=1.0, top_k=2)
    probs = top2.probabilities(logits, params)
    np.testing.assert_array_equal(probs[0, 0] > 0, [False, True, False, True])
    draws = {int(top2.choose(jax.random.split(k, 1), logits, params)[0, 0])
             for k in jax.random.split(jax.random.key(1), 64)}  # fmt: skip
    assert draws == {1, 3}


def test_sampler_draws_the_given_distribution_and_never_a_zero_probability_token():
    probs = np.zeros(64, np.float32)
    probs[[0, 5, 6, 40, 63]] = [0.5, 0.2, 1e-3, 0.299, 0.0]
    probs[62] = 1 - probs.sum()  # the tail mass sits next to a zero at the very end
    rows = 20000
    keys = jax.random.split(jax.random.key(0), rows)
    batch = jnp.broadcast_to(jnp.asarray(probs), (rows, 2, 64))  # [B, 2, V]
    draws = np.asarray(jax.jit(sampling.sample)(keys, batch)).reshape(-1)
    assert set(np.unique(draws)) <= set(np.flatnonzero(probs))
    support = np.flatnonzero(probs)
    observed = np.array([(draws == t).sum() for t in support])
    expected = probs[support] / probs[support].sum() * draws.size
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # Positions of one row are independent draws, not copies.
    pairs = np.asarray(jax.jit(sampling.sample)(keys, batch))
    assert np.mean(pairs[:, 0] == pairs[:, 1]) < 0.5


def test_argmax_and_cumsum_match_numpy_including_ties_and_odd_sizes():
    rng = np.random.default_rng(0)
    for size in (1, 63, 64, 65, 4096, 5003):
        ties = rng.integers(0, 4, (3, 2, size)).astype(np.float32)  # many tied maxima
        np.testing.assert_array_equal(sampling.argmax(jnp.asarray(ties)), np.argmax(ties, -1))
        probs = rng.dirichlet(np.ones(size), (3, 2)).astype(np.float32)
        np.testing.assert_allclose(
            sampling.cumsum(jnp.asarray(probs)), np.cumsum(probs, -1), rtol=1e-5, atol=1e-6
        )
    assert sampling.argmax(jnp.zeros((2, 7))).dtype == jnp.int32
