"""PaSS decoding: greedy exactness, the exact output distribution, tau bounds, statistics."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_model, forward, sharp_model, tiny_model
from scipy import stats as scipy_stats

from pass_jax.decode import generation as decode
from pass_jax.decode.generation import generate

# (seed, good drafts, L, prompt lengths (one per row), max_new, eos step). Each case uses a
# `chain_model` whose first `good drafts` drafts are right whenever the pending token is on the
# chain (None: an unaltered random model, drafts right by chance); rows end with the chain token
# except the last. The eos step picks EOS as the token AR produced at that step of row 0.
GREEDY_CASES = [
    (0, None, 1, [5], 20, None),
    (1, 2, 2, [1, 7, 3], 24, None),
    (2, 3, 4, [1, 2, 3, 4, 5, 6, 7, 9], 30, 9),
    (3, 2, 8, [12, 1, 6, 2, 9], 27, 3),
    (4, 4, 4, [4, 10], 25, 12),
    (5, 8, 8, [2, 2, 11, 3], 17, None),
    (6, 1, 2, [3, 1, 4, 1, 5, 9], 30, 20),
    (7, 5, 8, [30], 40, None),  # nearly full cache: 30 + 40 + 8 == max_seq_len
]


def test_greedy_pass_equals_greedy_ar_token_for_token():
    windows = {"all accepted": 0, "partly accepted": 0, "none accepted": 0, "ended at EOS": 0}
    for seed, good, num_la, lengths, max_new, eos_step in GREEDY_CASES:
        if good is None:
            model, chain_token = tiny_model(seed, vocab_size=16, max_seq_len=78), 0
        else:
            model, chain_token = chain_model(seed, good, vocab_size=16, max_seq_len=78)
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, 16, n).tolist() for n in lengths]
        for prompt in prompts[:-1]:
            prompt[-1] = chain_token
        eos = None
        if eos_step is not None:
            eos = generate(model, prompts[:1], max_new_tokens=max_new).tokens[0][eos_step]
        ar = generate(model, prompts, max_new_tokens=max_new, eos_id=eos)
        ps = generate(
            model, prompts, max_new_tokens=max_new, method="pass", num_lookahead=num_la, eos_id=eos
        )
        assert ps.tokens == ar.tokens, (seed, num_la)
        assert min(ps.stats["per_row"]["tau"]) >= 1.0
        reached, accepted = ps.stats["reached_by_position"], ps.stats["accepted_by_position"]
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
    model, _ = chain_model(9, 3, vocab_size=16)
    prompts = [[1, 2, 3], [4]]
    ar = generate(model, prompts, max_new_tokens=20)
    unk = generate(model, prompts, max_new_tokens=20, method="pass_unk", num_lookahead=3)
    zero = generate(model, prompts, max_new_tokens=20, method="pass", num_lookahead=0)
    assert unk.tokens == ar.tokens == zero.tokens
    assert zero.stats["tau"] == 1.0 and zero.stats["num_lookahead"] == 0


@pytest.mark.parametrize("num_la", [1, 2, 4, 8])
def test_perfect_drafts_reach_the_upper_bound_on_tau(num_la):
    """All embeddings equal: every position predicts the same token, so every draft is the
    greedy continuation and each iteration yields L+2 tokens in 2 calls."""
    model = tiny_model(num_la)
    shared = jax.random.normal(jax.random.key(0), (model.config.d_model,))
    model.embed[...] = jnp.broadcast_to(shared, model.embed[...].shape)
    model.lookahead[...] = jnp.broadcast_to(shared, model.lookahead[...].shape)
    max_new = 3 * (num_la + 2)
    result = generate(
        model, [[1, 2, 3]], max_new_tokens=max_new, method="pass", num_lookahead=num_la
    )
    assert result.stats["tau"] == pytest.approx((num_la + 2) / 2)
    assert result.stats["forward_passes"] == 6
    assert result.stats["acceptance_by_position"] == [1.0] * num_la


def test_acceptance_statistics_are_consistent():
    model = sharp_model(20, vocab_size=16)
    prompts = [[1, 2, 3], [4, 5], [6]]
    result = generate(
        model, prompts, max_new_tokens=40, method="pass", num_lookahead=4, temperature=1.0
    )
    per_row = result.stats["per_row"]
    for reached, accepted in zip(per_row["reached"], per_row["accepted"], strict=True):
        # draft i+1 is verified exactly when drafts 1..i were accepted
        assert reached[1:] == accepted[:-1]
        assert all(a <= r for a, r in zip(accepted, reached, strict=True))
    assert per_row["new_tokens"] == [40, 40, 40]
    assert all(t >= 1.0 for t in per_row["tau"])
    assert result.stats["tau"] == pytest.approx(120 / sum(per_row["forward_passes"]))
    assert 0.0 < result.stats["acceptance_rate"] < 1.0


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
    assert 0.05 < stats["acceptance_by_position"][0] < 0.95
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


@pytest.mark.parametrize(
    ("model_kwargs", "call", "message"),
    [
        (dict(max_lookahead=4), dict(num_lookahead=5), r"num_lookahead=5 is outside \[0, 4\]"),
        (dict(max_lookahead=4), dict(num_lookahead=-1), r"num_lookahead=-1 is outside"),
        (dict(max_lookahead=0), dict(num_lookahead=1), "needs a lookahead table"),
        (dict(max_lookahead=0), dict(method="pass_unk"), "needs a lookahead table"),
        (dict(max_lookahead=4), dict(method="ar", num_lookahead=2), "given with method='ar'"),
        (dict(max_lookahead=8, max_seq_len=40), dict(num_lookahead=8), r"lookahead window \(8\)"),
    ],
)
def test_bad_pass_input_is_a_clear_error_before_compiling(model_kwargs, call, message):
    model = tiny_model(0, **model_kwargs)
    compiled = len(decode._EXECUTABLES)
    call = {"method": "pass"} | call
    with pytest.raises(ValueError, match=message):
        generate(model, [[1, 2, 3]], max_new_tokens=30, **call)
    assert len(decode._EXECUTABLES) == compiled


def test_repeated_pass_calls_compile_once():
    model = tiny_model(8)
    generate(model, [[1, 2, 3], [4]], max_new_tokens=20, method="pass", num_lookahead=4)
    compiled = len(decode._EXECUTABLES)
    again = generate(model, [[5, 6], [7, 8, 9]], max_new_tokens=25, method="pass", num_lookahead=4)
    assert len(decode._EXECUTABLES) == compiled and again.stats["compile_s"] == 0.0
