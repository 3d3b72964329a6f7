"""Prompt lookup (n-gram drafts from the row's own context), as a method and as backing for the
lookahead methods, and adaptive draft length: greedy output equals greedy AR token for token,
sampled output has the model's exact distribution (with mutations that must fail), copies come
only from the row's own context, a repeated pattern reaches L+1 tokens per call, and bad options
are clear errors before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_model, sharp_model, tiny_model
from flax import nnx
from test_invariants import VOCAB, _chi_square_p_value, _exact_distribution, _sampled_counts

from pass_jax.decode import generation, prompt_lookup, verify
from pass_jax.decode.generation import generate
from pass_jax.decode.prompt_lookup import ngram_match, row_context

# ---- the matcher ----------------------------------------------------------------------------

match = jax.jit(ngram_match, static_argnums=(2, 3, 4))


def test_ngram_match_copies_after_the_latest_occurrence_of_the_longest_ngram():
    rows = [  # (context, length, drafts with ngram_max 3, with ngram_max 2); None: no match
        ([1, 2, 3, 4, 1, 2, 3, 5, 9, 1, 2, 3], 12, [5, 9, 1, 2], [5, 9, 1, 2]),  # the latest
        ([7, 8, 9, 3, 8, 9, 2, 4, 9, 1, 7, 8, 9], 13, [3, 8, 9, 2], [2, 4, 9, 1]),  # longest n
        ([4, 6, 4, 6, 7, 7, 7, 7, 7, 7, 7, 7, 6], 4, [4, 6, 4, 6], [4, 6, 4, 6]),  # periodic
        ([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 5], 5, None, None),  # nothing past the length
        ([3, 3, 3], 1, None, None),
    ]
    context = jnp.asarray([c + [0] * (13 - len(c)) for c, *_ in rows], jnp.int32)
    length = jnp.asarray([row[1] for row in rows], jnp.int32)
    for ngram_max, column in [(3, 2), (2, 3)]:
        drafts, found = match(context, length, 4, ngram_max, 1)
        expected = [row[column] for row in rows]
        assert found.tolist() == [e is not None for e in expected]
        assert [d for d, e in zip(drafts.tolist(), expected, strict=True) if e] == [
            e for e in expected if e
        ]
    # With ngram_min=2, a 1-gram does not count.
    _, found = match(jnp.asarray([[5, 1, 7, 1]]), jnp.asarray([4]), 2, 3, 2)
    assert not found[0]


def test_copies_come_only_from_the_rows_own_context():
    """Row 1 ends with `1 2`, which only row 0 continues; row 0's copy spans its prompt and its
    new tokens."""
    prompt = jnp.asarray([[3, 1, 2, 7, 5, 0], [9, 8, 0, 0, 0, 0]], jnp.int32)
    tokens = jnp.asarray([[1, 2, 0, 0], [1, 2, 0, 0]], jnp.int32)
    context, length = jax.jit(row_context, static_argnums=4)(
        prompt, jnp.asarray([5, 2]), tokens, jnp.asarray([2, 2]), 3
    )
    assert context.shape == (2, 13) and length.tolist() == [7, 4]
    assert context[0, :7].tolist() == [3, 1, 2, 7, 5, 1, 2]
    assert context[1, :4].tolist() == [9, 8, 1, 2]
    drafts, found = match(context, length, 3, 3, 1)
    assert found.tolist() == [True, False]
    assert drafts[0].tolist() == [7, 5, 1]


# ---- greedy: token for token ------------------------------------------------------------------

NUM_LA, MAX_NEW, GREEDY_MODEL = 3, 24, dict(vocab_size=16, max_seq_len=64, n_layers=1)
BACKED = dict(backing="prompt_lookup")
CONFIDENT = dict(adaptive="confidence", adaptive_threshold=0.2)  # see `greedy_cases`
ACCEPTING = dict(adaptive="acceptance", adaptive_threshold=0.3)
DECODERS = {
    "prompt_lookup": dict(method="prompt_lookup"),
    "pass_fused, backed": dict(method="pass_fused", **BACKED),
    "pass_fused, backed, acceptance window": dict(method="pass_fused", **BACKED, **ACCEPTING),
    "pass, 2 candidates, backed past a confident prefix": dict(
        method="pass", candidates=2, **BACKED, **CONFIDENT
    ),
    # The draft model: the chain model (right for itself, mostly wrong for the other).
    "sps, acceptance window": dict(method="sps", **ACCEPTING),
}


@pytest.fixture(scope="module")
def greedy_cases():
    """Two models of one shape (so that they share compiled programs), heads scaled up (the
    argmax unchanged) so that draft confidences vary: a chain model (lookahead drafts' max
    probability ~0.16: `CONFIDENT` cuts every window, copies only) and a random one (0.16-0.27:
    cut at varying depths). Both soon repeat themselves, so copies are often right. A batch of
    4 with repetitive and random prompts; EOS ends a row of the random model's batch midway.
    With the AR reference."""
    cases = []
    for seed, good, eos in [(30, 3, None), (32, None, 14)]:
        if good is None:
            model, chain_token = tiny_model(seed, **GREEDY_MODEL), 0
        else:
            model, chain_token = chain_model(seed, good, **GREEDY_MODEL)
        model.lm_head[...] = 10.0 * model.lm_head[...]
        model = nnx.merge(*jax.device_put(nnx.split(model)))  # every leaf a device array alike
        rng = np.random.default_rng(seed)
        prompts = [[4, 7, 1, 4, 7, 1, 4, chain_token], [5, 5, 2, 5, 5]]
        prompts += rng.integers(0, 16, (2, 6)).tolist()
        ar = generate(model, prompts, max_new_tokens=MAX_NEW, eos_id=eos)
        cases.append((model, prompts, eos, ar.tokens))
    return cases


@pytest.fixture(scope="module")
def greedy_runs(greedy_cases):
    """Every decoder on every case: {name: (tokens per case, summed statistics)}."""
    runs = {}
    for name, options in DECODERS.items():
        tokens, totals = [], dict(calls=0, verified=0, accepted=0, rejected=0, eos=0)
        if options["method"] == "sps":
            options = dict(options, draft_model=greedy_cases[0][0])
        for model, prompts, eos, _ in greedy_cases:
            result = generate(
                model, prompts, max_new_tokens=MAX_NEW, num_lookahead=NUM_LA, eos_id=eos, **options
            )
            stats = result.stats
            tokens.append(result.tokens)
            totals["calls"] += sum(stats.per_row.forward_passes)
            totals["verified"] += stats.reached_by_position[0]
            totals["accepted"] += stats.accepted_by_position[0]
            totals["rejected"] += stats.reached_by_position[0] - stats.accepted_by_position[0]
            totals["eos"] += sum(row[-1] == eos and len(row) < MAX_NEW for row in result.tokens)
        runs[name] = tokens, totals
    return runs


def test_greedy_equals_greedy_ar_token_for_token(greedy_cases, greedy_runs):
    expected = [case[-1] for case in greedy_cases]
    for name, (tokens, totals) in greedy_runs.items():
        assert tokens == expected, name
        # Drafts accepted, drafts rejected, and rows ending at EOS.
        assert min(totals["accepted"], totals["rejected"], totals["eos"]) >= 1, (name, totals)


def test_backing_drafts_after_a_rejection(greedy_runs):
    """Alone, pass_fused's call after a rejection is draftless, as is a row's first call (so
    drafts are verified in at most `calls - rejections - rows` calls); backed, most of those
    calls verify copies."""
    backed = greedy_runs["pass_fused, backed"][1]
    assert backed["verified"] > backed["calls"] - backed["rejected"] / 2, backed


def test_adaptive_schedules_change_only_the_speed(greedy_runs):
    """Whole windows and the acceptance window give the same tokens (the AR tokens, above) in
    different numbers of calls."""
    full = greedy_runs["pass_fused, backed"][1]
    cut = greedy_runs["pass_fused, backed, acceptance window"][1]
    assert full["calls"] != cut["calls"], (full, cut)


def test_a_repeated_pattern_reaches_l_plus_1_tokens_per_call(greedy_cases):
    """The chain model's greedy text is periodic; with prompts of that text, every copy is
    right: every call yields L+1 tokens."""
    model, _, _, ar_tokens = greedy_cases[0]
    text = ar_tokens[0][-14:]
    prompts = [text[start : start + 10] for start in range(4)]
    ar = generate(model, prompts, max_new_tokens=MAX_NEW)
    result = generate(
        model, prompts, max_new_tokens=MAX_NEW, method="prompt_lookup", num_lookahead=NUM_LA
    )
    assert result.tokens == ar.tokens
    assert result.stats.per_row.forward_passes == [MAX_NEW // (NUM_LA + 1)] * 4
    assert result.stats.acceptance_by_position == [1.0] * NUM_LA


# ---- the output distribution --------------------------------------------------------------

SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0)
DISTRIBUTION_CASES = {  # (options, whether the model has a lookahead table)
    "prompt lookup, one-hot copies": (dict(method="prompt_lookup"), False),
    # Lookahead drafts up to the first unsure depth (max probability 0.39-0.48), then copies;
    # copies after a rejection.
    "mixed chain: lookahead then copies": (
        dict(method="pass_fused", backing="prompt_lookup", adaptive="confidence",
             adaptive_threshold=0.43),
        True,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def sampled_models():
    """{has a table: (model, exact distribution)}; prompt lookup runs on a model without one."""
    models = {
        table: sharp_model(20, vocab_size=VOCAB, n_layers=1, max_lookahead=8 * table)
        for table in (0, 1)
    }
    return {
        bool(table): (model, _exact_distribution(model, 3, **SAMPLING))
        for table, model in models.items()
    }


@pytest.mark.parametrize("case", DISTRIBUTION_CASES)
def test_sampled_output_has_the_models_exact_distribution(sampled_models, case):
    options, table = DISTRIBUTION_CASES[case]
    model, exact = sampled_models[table]
    counts, stats = _sampled_counts(model, 2, **options, **SAMPLING)
    assert _chi_square_p_value(counts, exact) > 1e-3
    assert stats.reached_by_position[1] > 500  # second drafts were verified often
    assert 0.05 < stats.acceptance_by_position[0] < 0.95  # both branches of the rule ran


@pytest.mark.parametrize(
    ("case", "mutation"),
    [
        ("prompt lookup, one-hot copies", "residual is p"),
        ("mixed chain: lookahead then copies", "copies verified with the lookahead's q"),
    ],
)
def test_a_broken_rule_fails_the_distribution_test(sampled_models, monkeypatch, case, mutation):
    options, table = DISTRIBUTION_CASES[case]
    model, exact = sampled_models[table]
    if mutation == "residual is p":
        monkeypatch.setattr(verify, "_residual", lambda p, q: p)
    else:
        monkeypatch.setattr(prompt_lookup, "one_hot_rows", lambda probs, fixed, tokens: probs)
    generation._EXECUTABLES.clear()
    try:
        counts, _ = _sampled_counts(model, 2, **options, **SAMPLING)
    finally:
        monkeypatch.undo()
        generation._EXECUTABLES.clear()
    assert _chi_square_p_value(counts, exact) < 1e-6


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="prompt_lookup", ngram_size=0), "ngram_size must be >= 1"),
        (dict(method="prompt_lookup", ngram_min=0), r"ngram_min must be in \[1, ngram_size=3\]"),
        (dict(method="prompt_lookup", ngram_size=2, ngram_min=3), "ngram_min must be in"),
        (dict(method="prompt_lookup", ngram_size=2.5), "ngram_size must be an integer"),
        (dict(method="prompt_lookup", candidates=2), "drafts a chain"),
        (dict(method="prompt_lookup", tree=[(0,)]), "drafts a chain"),
        (dict(method="ar", backing="prompt_lookup"), "option of the lookahead methods"),
        (dict(method="prompt_lookup", backing="prompt_lookup"), "option of the lookahead"),
        (dict(method="pass", backing="ngram"), "unknown backing"),
        (dict(method="pass", adaptive="entropy"), "unknown adaptive rule"),
        (dict(method="ar", adaptive="acceptance"), "adaptive windows need drafts"),
        (dict(method="prompt_lookup", adaptive="confidence"), "use adaptive='acceptance'"),
        (dict(method="pass", adaptive="confidence", adaptive_threshold=1.0), r"in \(0, 1\)"),
        (dict(method="pass", adaptive="acceptance", adaptive_threshold=0), r"in \(0, 1\)"),
    ],
)
def test_bad_options_are_clear_errors_before_compiling(kwargs, message):
    model = tiny_model(0, vocab_size=16, max_seq_len=64)
    before = len(generation._EXECUTABLES)
    with pytest.raises((ValueError, TypeError), match=message):
        generate(model, [[1, 2, 3]], max_new_tokens=20, **kwargs)
    assert len(generation._EXECUTABLES) == before
