"""End-to-end exactness of decoding: greedy PaSS equals greedy AR token for token, and sampled
PaSS (and AR) draw from exactly the model's processed distribution."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_model, forward, sharp_model, tiny_model
from scipy import stats as scipy_stats

from pass_jax.decode.generation import generate

# (seed, good drafts, L, prompt lengths, max_new, eos step). Each case uses a `chain_model` whose
# first `good drafts` drafts are right whenever the pending token is on the chain (None: an
# unaltered random model, drafts right by chance); the given rows end with the chain token except
# the last, and random 3-token rows fill the batch up to BATCH (so that cases share compiled
# programs). The eos step picks EOS as the token AR produced at that step of row 0.
GREEDY_CASES = [
    (0, None, 1, [5], 20, None),
    (2, 3, 4, [1, 2, 3, 4, 5, 6, 7, 9], 30, 9),
    (3, 2, 8, [12, 1, 6, 2, 9], 27, 3),
    (6, 1, 2, [3, 1, 4, 1, 5, 9], 30, 20),
    (7, 5, 8, [30], 40, None),  # nearly full cache: 30 + 40 + 8 == max_seq_len
]
BATCH, GREEDY_MODEL = 8, dict(vocab_size=16, max_seq_len=78)


def _fill_batch(prompts: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
    return prompts + [rng.integers(0, 16, 3).tolist() for _ in range(BATCH - len(prompts))]


def test_greedy_pass_equals_greedy_ar_token_for_token():
    windows = {"all accepted": 0, "partly accepted": 0, "none accepted": 0, "ended at EOS": 0}
    for seed, good, num_la, lengths, max_new, eos_step in GREEDY_CASES:
        if good is None:
            model, chain_token = tiny_model(seed, **GREEDY_MODEL), 0
        else:
            model, chain_token = chain_model(seed, good, **GREEDY_MODEL)
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, 16, n).tolist() for n in lengths]
        for prompt in prompts[:-1]:
            prompt[-1] = chain_token
        prompts = _fill_batch(prompts, rng)
        ar = generate(model, prompts, max_new_tokens=max_new)
        eos = None
        if eos_step is not None:
            eos = ar.tokens[0][eos_step]
            ar = generate(model, prompts, max_new_tokens=max_new, eos_id=eos)
        ps = generate(
            model, prompts, max_new_tokens=max_new, method="pass", num_lookahead=num_la, eos_id=eos
        )
        assert ps.tokens == ar.tokens, (seed, num_la)
        assert min(ps.stats.per_row.tau) >= 1.0
        reached, accepted = ps.stats.reached_by_position, ps.stats.accepted_by_position
        windows["all accepted"] += accepted[-1]
        windows["partly accepted"] += accepted[0] - accepted[-1]
        windows["none accepted"] += reached[0] - accepted[0]
        if eos is not None:
            windows["ended at EOS"] += sum(
                row[-1] == eos and len(row) < max_new for row in ps.tokens
            )
    # The grid exercised every kind of verification window, and rows ending at EOS.
    assert min(windows.values()) >= 5, windows


def test_pass_unk_baseline_and_zero_lookahead_are_exact_too():
    model, _ = chain_model(9, 3, **GREEDY_MODEL)
    prompts = _fill_batch([[1, 2, 3], [4]], np.random.default_rng(9))
    ar = generate(model, prompts, max_new_tokens=20)
    unk = generate(model, prompts, max_new_tokens=20, method="pass_unk", num_lookahead=4)
    zero = generate(model, prompts, max_new_tokens=20, method="pass", num_lookahead=0)
    assert unk.tokens == ar.tokens == zero.tokens
    assert zero.stats.tau == 1.0 and zero.stats.num_lookahead == 0


# ---- the output distribution --------------------------------------------------------------

VOCAB, PROMPT, SAMPLES = 6, [1, 2], 6000


def _process(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Temperature, top-k, top-p on one logits vector, in numpy (independent of the library)."""
    z = logits.astype(np.float64) / temperature
    if top_k:
        z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = np.zeros_like(p, bool)
        keep[order[(np.cumsum(p[order]) - p[order]) < top_p]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


def _exact_distribution(model, num_tokens, **processing) -> np.ndarray:
    """P(first `num_tokens` new tokens) [V]*n from full forwards on every continuation."""
    outcomes = list(itertools.product(range(VOCAB), repeat=num_tokens))
    seqs = jnp.asarray([PROMPT + list(o) for o in outcomes], jnp.int32)
    logits = np.asarray(forward(model, seqs))
    probs = np.ones(len(outcomes))
    for i, outcome in enumerate(outcomes):
        for step, token in enumerate(outcome):
            probs[i] *= _process(logits[i, len(PROMPT) - 1 + step], **processing)[token]
    return probs.reshape((VOCAB,) * num_tokens)


def _chi_square_p_value(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit; outcomes expected < 5 times are pooled. Sampling an
    outcome of probability 0 rejects outright (p-value 0)."""
    counts, expected = counts.ravel(), expected_probs.ravel() * counts.sum()
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    if expected[-1] == 0:
        if observed[-1] > 0:
            return 0.0
        observed, expected = observed[:-1], expected[:-1]
    return scipy_stats.chisquare(observed, expected).pvalue


def _sampled_counts(model, num_la, method="pass", seed=0, **sampling) -> tuple[np.ndarray, dict]:
    result = generate(
        model,
        [PROMPT] * SAMPLES,
        max_new_tokens=3,
        method=method,
        num_lookahead=num_la,
        seed=seed,
        **sampling,
    )
    counts = np.zeros((VOCAB,) * 3)
    for row in result.tokens:
        counts[tuple(row)] += 1
    return counts, result.stats


# Each case: the first 3 tokens of 6000 independent rows against the exact distribution.
# A correct sampler fails a case with probability 1e-3 (the p-value threshold); seeds are fixed,
# so the suite is deterministic. The model's drafts are accepted 10-70% of the time.
DISTRIBUTION_CASES = [
    ("T=1", 2, dict(temperature=1.0, top_k=0, top_p=1.0), False),
    ("T=0.7, top-k 3", 2, dict(temperature=0.7, top_k=3, top_p=1.0), False),
    ("top-p 0.8", 2, dict(temperature=1.0, top_k=0, top_p=0.8), False),
    ("L=1: bonus tokens", 1, dict(temperature=1.0, top_k=0, top_p=1.0), False),
    ("random bad table", 3, dict(temperature=1.0, top_k=0, top_p=1.0), True),
]


@pytest.mark.parametrize(
    ("num_la", "sampling", "random_table"),
    [case[1:] for case in DISTRIBUTION_CASES],
    ids=[case[0] for case in DISTRIBUTION_CASES],
)
def test_sampled_pass_has_the_models_exact_distribution(num_la, sampling, random_table):
    model = sharp_model(20, vocab_size=VOCAB)
    if random_table:
        table = model.lookahead[...]
        model.lookahead[...] = 5.0 * jax.random.normal(jax.random.key(1), table.shape)
    exact = _exact_distribution(model, 3, **sampling)
    counts, stats = _sampled_counts(model, num_la, **sampling)
    assert _chi_square_p_value(counts, exact) > 1e-3
    # Both branches of the acceptance rule were exercised.
    assert 0.05 < stats.acceptance_by_position[0] < 0.95
    # The test has power: accepting every draft would give t2 ~ q_1, which it rejects.
    slots = jnp.asarray([[-1, -1, 0]])
    q1 = _process(
        np.asarray(forward(model, jnp.asarray([[*PROMPT, 0]]), lookahead_slots=slots))[0, 2],
        **sampling,
    )
    wrong = np.outer(exact.sum(axis=(1, 2)), q1)
    assert _chi_square_p_value(counts.sum(axis=2), wrong) < 1e-6


def test_ar_sampling_has_the_models_exact_distribution():
    model = sharp_model(20, vocab_size=VOCAB)
    sampling = dict(temperature=0.7, top_k=4, top_p=0.9)
    counts, _ = _sampled_counts(model, None, method="ar", **sampling)
    assert _chi_square_p_value(counts, _exact_distribution(model, 3, **sampling)) > 1e-3
