"""The decoding engine's one-call methods, draft trees and multi-candidate verifiers: greedy
output equals greedy AR token for token, sampled output has the model's exact distribution (each
verifier with a mutation that must fail), perfect drafts reach each method's bound, and bad
options are clear errors before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_model, sharp_model, tiny_model
from test_invariants import (
    VOCAB,
    _chi_square_p_value,
    _exact_distribution,
    _sampled_counts,
)

from pass_jax.decode import generation, verify
from pass_jax.decode.generation import generate
from pass_jax.decode.tree import DraftTree

MEDUSA_TREE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0))  # depth 3, 7 nodes
DECODERS = {
    "pass_fused": dict(method="pass_fused"),
    "pass_tree": dict(method="pass_tree"),
    "pass, 3 candidates": dict(method="pass", candidates=3),
    "pass_fused, 2 candidates": dict(method="pass_fused", candidates=2),
    "pass_tree, Medusa-like tree": dict(method="pass_tree", tree=MEDUSA_TREE),
}

# (seed, good drafts, L, batch, prompt lengths, max_new, eos step, decoders): as the greedy grid
# of test_invariants (a `chain_model` whose first `good drafts` drafts are right on its chain);
# each case's model has exactly the cache its largest call needs, so the cache fills up.
GREEDY_CASES = [
    (10, 2, 2, 8, [1, 7, 3], 24, None, ["pass_fused", "pass_tree, Medusa-like tree"]),
    (11, 3, 4, 8, [1, 2, 3, 4, 5, 6, 9], 30, 9, ["pass_tree", "pass, 3 candidates"]),
    (12, 8, 8, 3, [2, 11, 3], 17, 5, ["pass_fused", "pass_fused, 2 candidates"]),
    (13, 4, 4, 8, [4, 10], 25, 12, ["pass_fused, 2 candidates", "pass_tree"]),
    (14, 1, 1, 1, [30], 40, None, ["pass_tree", "pass_fused"]),
    (15, None, 2, 8, [3, 1, 4, 1, 5, 9], 26, 20,
     ["pass, 3 candidates", "pass_tree, Medusa-like tree"]),
]  # fmt: skip


def _greedy_case(case) -> dict[str, dict[str, int]]:
    seed, good, num_la, batch, lengths, max_new, eos_step, names = case
    longest = max(max(lengths), 3)
    block = max(_block_len(DECODERS[name], num_la) for name in names)
    config = dict(vocab_size=16, max_seq_len=longest + max_new + block - 1)
    if good is None:
        model, chain_token = tiny_model(seed, **config), 0
    else:
        model, chain_token = chain_model(seed, good, **config)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 16, n).tolist() for n in lengths]
    for prompt in prompts[:-1]:
        prompt[-1] = chain_token
    prompts += [rng.integers(0, 16, 3).tolist() for _ in range(batch - len(prompts))]
    ar = generate(model, prompts, max_new_tokens=max_new)
    eos = None
    if eos_step is not None:
        eos = ar.tokens[0][eos_step]
        ar = generate(model, prompts, max_new_tokens=max_new, eos_id=eos)
    windows = {}
    for name in names:
        options = dict(DECODERS[name])
        if "tree" not in options:
            options["num_lookahead"] = num_la
        result = generate(model, prompts, max_new_tokens=max_new, eos_id=eos, **options)
        assert result.tokens == ar.tokens, (seed, name)
        stats = result.stats
        windows[name] = {
            "all accepted": stats.accepted_by_position[-1],
            "none accepted": stats.reached_by_position[0] - stats.accepted_by_position[0],
            "ended at EOS": sum(row[-1] == eos and len(row) < max_new for row in result.tokens),
        }
    return windows


def _block_len(options: dict, num_la: int) -> int:
    tree = options.get("tree")
    draft_tree = (
        DraftTree.create(tree) if tree else DraftTree.top_k(num_la, options.get("candidates", 1))
    )
    return generation.DecodeMethod(options["method"], draft_tree).block_len


def test_every_method_and_tree_equals_greedy_ar_token_for_token():
    totals = {name: {} for name in DECODERS}
    for case in GREEDY_CASES:
        for name, counts in _greedy_case(case).items():
            for kind, n in counts.items():
                totals[name][kind] = totals[name].get(kind, 0) + n
    # Every decoder saw whole windows accepted, windows rejected at once, and rows ending at EOS.
    for name, counts in totals.items():
        assert min(counts.values()) >= 1, (name, counts)


@pytest.mark.parametrize("method", ["pass_fused", "pass_tree"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_perfect_drafts_reach_l_plus_1_tokens_per_call(method, temperature):
    """All embeddings equal: every position predicts the same distribution, so every draft is
    accepted (greedy: the argmax; sampled: q == p). After the first, draftless call, every call
    yields L+1 tokens."""
    num_la, iterations = 3, 4
    model = tiny_model(3, vocab_size=16, max_seq_len=64)
    shared = jax.random.normal(jax.random.key(0), (model.config.d_model,))
    model.embed[...] = jnp.broadcast_to(shared, model.embed[...].shape)
    model.lookahead[...] = jnp.broadcast_to(shared, model.lookahead[...].shape)
    max_new = 1 + iterations * (num_la + 1)
    result = generate(
        model,
        [[1, 2, 3]] * 4,
        max_new_tokens=max_new,
        method=method,
        num_lookahead=num_la,
        temperature=temperature,
    )
    assert result.stats.forward_passes == 1 + iterations
    assert result.stats.acceptance_by_position == [1.0] * num_la


# ---- the output distribution --------------------------------------------------------------

# Each case: the first 3 tokens of 6000 rows against the exact distribution (test_invariants).
DISTRIBUTION_CASES = {
    "fused chain, sampled drafts": dict(method="pass_fused", num_lookahead=2),
    "3 candidates with replacement": dict(method="pass", num_lookahead=2, candidates=3),
    "3 candidates without replacement": dict(
        method="pass", num_lookahead=2, candidates=3, draft_rule="distinct"
    ),
    "top-3 candidates, one-hot": dict(
        method="pass", num_lookahead=2, candidates=3, draft_rule="argmax"
    ),
    "argmax chain, one-hot": dict(method="pass_fused", num_lookahead=2, draft_rule="argmax"),
    "Medusa-like tree without replacement": dict(
        method="pass_tree", tree=MEDUSA_TREE, draft_rule="distinct"
    ),
}
SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0)


def _counts(model, options: dict):
    options = dict(options)
    return _sampled_counts(model, options.pop("num_lookahead", None), **options, **SAMPLING)


@pytest.fixture(scope="module")
def sampled_model():
    model = sharp_model(20, vocab_size=VOCAB)
    return model, _exact_distribution(model, 3, **SAMPLING)


@pytest.mark.parametrize("options", DISTRIBUTION_CASES.values(), ids=DISTRIBUTION_CASES.keys())
def test_every_verifier_has_the_models_exact_distribution(sampled_model, options):
    model, exact = sampled_model
    counts, stats = _counts(model, options)
    assert _chi_square_p_value(counts, exact) > 1e-3
    assert 0.05 < stats.acceptance_by_position[0] < 0.95  # both branches of the rule ran


def _mutated_verifier(monkeypatch, mutation: str) -> None:
    """Breaks one verification rule (the compiled programs are dropped before and after)."""
    if mutation == "residual is p":
        monkeypatch.setattr(verify, "_residual", lambda p, q: p)
    else:  # candidates drawn without replacement, verified as if drawn with replacement
        tree_sampled = verify.verify_tree_sampled
        monkeypatch.setattr(
            verify,
            "verify_tree_sampled",
            lambda *args: tree_sampled(*args[:-1], "sampled"),
        )
    generation._EXECUTABLES.clear()


@pytest.mark.parametrize(
    ("case", "mutation"),
    [
        ("fused chain, sampled drafts", "residual is p"),
        ("3 candidates with replacement", "residual is p"),
        ("3 candidates without replacement", "rejected candidates stay in q"),
    ],
)
def test_a_broken_verifier_fails_the_distribution_test(sampled_model, monkeypatch, case, mutation):
    model, exact = sampled_model
    _mutated_verifier(monkeypatch, mutation)
    try:
        counts, _ = _counts(model, DISTRIBUTION_CASES[case])
    finally:
        monkeypatch.undo()
        generation._EXECUTABLES.clear()
    assert _chi_square_p_value(counts, exact) < 1e-6


# ---- trees and errors -----------------------------------------------------------------------


def test_draft_trees_are_checked_and_ordered():
    tree = DraftTree.create([(0, 0), (1,), (0,), (0, 1)])
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1))
    assert (tree.depth, tree.num_candidates, tree.is_chain) == (2, 2, False)
    assert DraftTree.create([(0,), (0, 0)]).is_chain
    assert DraftTree.top_k(2, 3).paths == ((0,), (1,), (2,), (0, 0), (0, 1), (0, 2))
    arrays = tree.arrays
    assert arrays.parent.tolist() == [-1, 0, 0, 1, 1]
    assert arrays.children.tolist() == [[1, 2], [3, 4], [-1, -1], [-1, -1], [-1, -1]]
    assert arrays.path_nodes[4].tolist() == [0, 1, 4]
    for paths, message in [
        ([(0, 0)], "no parent"),
        ([(0,), (2,)], "lower-ranked sibling"),
        ([(0,), ()], "at least one rank"),
        ([(0,), (-1,)], "negative rank"),
    ]:
        with pytest.raises(ValueError, match=message):
            DraftTree.create(paths)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="pass_beam"), "unknown method"),
        (dict(method="pass_tree", num_lookahead=8), "cannot hold"),  # 81 tokens a call
        (dict(method="pass", tree=[(0,)] + [(0,) * d for d in range(2, 10)]), "L_max=8"),
        (dict(method="pass", num_lookahead=2, candidates=17), "exceed the vocabulary"),
        (dict(method="pass", candidates=0), "candidates must be >= 1"),
        (dict(method="pass", candidates=2, tree=[(0,)]), "either candidates or tree"),
        (dict(method="pass", num_lookahead=3, tree=[(0,)]), "differs from the tree's depth"),
        (dict(method="pass", tree=[(1,)]), "lower-ranked sibling"),
        (dict(method="pass_fused", draft_rule="greedy"), "unknown draft_rule"),
        (dict(method="ar", candidates=2), "drafts nothing"),
    ],
)
def test_bad_engine_options_are_clear_errors_before_compiling(kwargs, message):
    model = tiny_model(0, vocab_size=16, max_seq_len=64)
    before = len(generation._EXECUTABLES)
    with pytest.raises(ValueError, match=message):
        generate(model, [[1, 2, 3]], max_new_tokens=20, **kwargs)
    assert len(generation._EXECUTABLES) == before
