"""`generate`: exactness against full forwards, batching, sampling options, EOS, statistics,
compilation, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import forward, greedy_reference, sharp_model, tiny_model

from pass_jax.decode import generation as decode
from pass_jax.decode.generation import generate


def test_greedy_generate_equals_full_forward_reference_with_mixed_prompt_lengths():
    model = tiny_model(0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13]]
    result = generate(model, prompts, max_new_tokens=12)
    for prompt, tokens in zip(prompts, result.tokens, strict=True):
        assert tokens == greedy_reference(model, prompt, 12)
    assert result.stats.forward_passes == 12
    assert result.stats.new_tokens == 36
    assert result.stats.tau == 1.0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_rows_output_does_not_depend_on_the_rest_of_the_batch(temperature):
    model = tiny_model(1)
    alone = generate(model, [[7, 8, 9]], max_new_tokens=10, temperature=temperature, seed=5)
    batch = generate(
        model,
        [[7, 8, 9], [1] * 20, [2, 3]],
        max_new_tokens=10,
        temperature=temperature,
        seed=5,
    )
    assert batch.tokens[0] == alone.tokens[0]


def _allowed_tokens(model, prompt, tokens, keep):
    """For each generated token, whether it is among the tokens `keep(probs)` allows."""
    seq = jnp.asarray([prompt + tokens], jnp.int32)
    probs = np.asarray(jax.nn.softmax(forward(model, seq)[0], axis=-1))
    return [keep(probs[len(prompt) - 1 + i])[tok] for i, tok in enumerate(tokens)]


def test_top_k_samples_only_the_k_most_likely_tokens():
    model = tiny_model(2)
    prompts = [[3, 1, 4], [1, 5, 9, 2]]
    result = generate(model, prompts, max_new_tokens=24, temperature=2.0, top_k=3, seed=1)

    def top3(probs):
        return probs >= np.sort(probs)[-3]

    for prompt, tokens in zip(prompts, result.tokens, strict=True):
        assert all(_allowed_tokens(model, prompt, tokens, top3))
    # and not always the argmax: sampling happened
    assert not all(_allowed_tokens(model, prompts[0], result.tokens[0], lambda p: p == p.max()))


def test_top_p_samples_only_from_the_nucleus():
    model = tiny_model(3)
    prompts = [[2, 7, 1, 8]]
    top_p = 0.5
    result = generate(model, prompts, max_new_tokens=24, temperature=3.0, top_p=top_p, seed=2)

    def nucleus(probs):
        p = np.exp(np.log(probs) / 3.0)  # temperature 3 on the logits
        p = p / p.sum()
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        allowed = np.zeros_like(p, bool)
        allowed[order[before < top_p]] = True
        return allowed

    assert all(_allowed_tokens(model, prompts[0], result.tokens[0], nucleus))
    assert len(set(result.tokens[0])) > 1


def test_same_seed_same_output_and_rows_get_independent_randomness():
    model = tiny_model(4)
    prompts = [[5, 6, 7]] * 4
    a = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=11)
    b = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=11)
    c = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=12)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
    assert len({tuple(t) for t in a.tokens}) > 1  # identical prompts, different rows


def test_eos_ends_each_row_and_max_new_tokens_is_exact():
    model = tiny_model(5)
    prompts = [[1, 2], [9, 9, 9, 9]]
    free = generate(model, prompts, max_new_tokens=20)
    eos = free.tokens[0][6]  # a token row 0 produces at step 7
    result = generate(model, prompts, max_new_tokens=20, eos_id=eos)
    cut = free.tokens[0].index(eos) + 1
    assert result.tokens[0] == free.tokens[0][:cut]
    for free_row, row in zip(free.tokens, result.tokens, strict=True):
        expected = free_row[: free_row.index(eos) + 1] if eos in free_row else free_row
        assert row == expected
    for n in (1, 5, 17):
        assert all(len(t) == n for t in generate(model, prompts, max_new_tokens=n).tokens)


@pytest.mark.parametrize(("num_la", "iterations"), [(1, 6), (2, 5), (4, 3), (8, 3)])
def test_perfect_drafts_reach_the_upper_bound_on_tau(num_la, iterations):
    """All embeddings equal: every position predicts the same token, so every draft is the
    greedy continuation and each iteration yields L+2 tokens in 2 calls. (The shapes are those
    of test_invariants' greedy grid, whose programs they share.)"""
    model = tiny_model(num_la, vocab_size=16, max_seq_len=78)
    shared = jax.random.normal(jax.random.key(0), (model.config.d_model,))
    model.embed[...] = jnp.broadcast_to(shared, model.embed[...].shape)
    model.lookahead[...] = jnp.broadcast_to(shared, model.lookahead[...].shape)
    max_new = iterations * (num_la + 2)
    result = generate(
        model, [[1, 2, 3]] * 8, max_new_tokens=max_new, method="pass", num_lookahead=num_la
    )
    assert result.stats.tau == pytest.approx((num_la + 2) / 2)
    assert result.stats.forward_passes == 2 * iterations
    assert result.stats.acceptance_by_position == [1.0] * num_la


def test_acceptance_statistics_are_consistent():
    model = sharp_model(20, vocab_size=16)
    prompts = [[1, 2, 3], [4, 5], [6]]
    result = generate(
        model, prompts, max_new_tokens=40, method="pass", num_lookahead=4, temperature=1.0
    )
    per_row = result.stats.per_row
    for reached, accepted in zip(per_row.reached, per_row.accepted, strict=True):
        # draft i+1 is verified exactly when drafts 1..i were accepted
        assert reached[1:] == accepted[:-1]
        assert all(a <= r for a, r in zip(accepted, reached, strict=True))
    assert per_row.new_tokens == [40, 40, 40]
    assert all(t >= 1.0 for t in per_row.tau)
    assert result.stats.tau == pytest.approx(120 / sum(per_row.forward_passes))
    assert 0.0 < result.stats.acceptance_rate < 1.0


def test_repeated_calls_in_one_bucket_compile_once():
    model = tiny_model(6)
    generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=10)
    compiled = len(decode._EXECUTABLES)
    second = generate(model, [[9, 8, 7, 6, 5], [4]], max_new_tokens=12, temperature=0.0, seed=3)
    assert len(decode._EXECUTABLES) == compiled
    assert second.stats.compile_s == 0.0
    # temperature and top-p values are traced: changing them does not recompile either
    generate(model, [[1, 2]], max_new_tokens=10, temperature=0.5, top_p=0.9)
    compiled = len(decode._EXECUTABLES)
    generate(model, [[3, 2]], max_new_tokens=9, temperature=0.9, top_p=0.7, seed=4)
    assert len(decode._EXECUTABLES) == compiled
    # PaSS likewise, whatever the prompts and max_new_tokens within the buckets
    generate(model, [[1, 2, 3], [4]], max_new_tokens=20, method="pass", num_lookahead=4)
    compiled = len(decode._EXECUTABLES)
    again = generate(model, [[5, 6], [7, 8, 9]], max_new_tokens=25, method="pass", num_lookahead=4)
    assert len(decode._EXECUTABLES) == compiled and again.stats.compile_s == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prompts=[]), "prompts is empty"),
        (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
        (dict(prompts=[[1] * 90]), r"longest prompt \(90 tokens\) \+ max_new_tokens \(10\)"),
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(method="beam"), "unknown method 'beam'"),
        (dict(prompts=[[1, 64]]), "outside the vocabulary"),
        (dict(eos_id=99), "eos_id 99 outside the vocabulary"),
    ],
)
def test_bad_input_is_a_clear_error_before_compiling(kwargs, message):
    model = tiny_model(7)
    compiled = len(decode._EXECUTABLES)
    call = dict(prompts=[[1, 2, 3]], max_new_tokens=10) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model, call.pop("prompts"), **call)
    assert len(decode._EXECUTABLES) == compiled


@pytest.mark.parametrize(
    ("model_kwargs", "call", "message"),
    [
        (dict(max_lookahead=4), dict(num_lookahead=5), r"num_lookahead=5 is outside \[0, 4\]"),
        (dict(max_lookahead=4), dict(num_lookahead=-1), r"num_lookahead=-1 is outside"),
        (dict(max_lookahead=0), dict(num_lookahead=1), "needs a lookahead table"),
        (dict(max_lookahead=0), dict(method="pass_unk"), "needs a lookahead table"),
        (dict(max_lookahead=4), dict(method="ar", num_lookahead=2), "method='ar' drafts nothing"),
        (
            dict(max_lookahead=8, max_seq_len=40),
            dict(num_lookahead=8),
            r"largest call past them \(8\)",
        ),
    ],
)
def test_bad_pass_input_is_a_clear_error_before_compiling(model_kwargs, call, message):
    model = tiny_model(0, **model_kwargs)
    compiled = len(decode._EXECUTABLES)
    call = {"method": "pass"} | call
    with pytest.raises(ValueError, match=message):
        generate(model, [[1, 2, 3]], max_new_tokens=30, **call)
    assert len(decode._EXECUTABLES) == compiled


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(prompts=[[1.7, 2.2, 3.9]]), ValueError, "prompt 0 must be a sequence of integer"),
        (dict(prompts=[[True, False]]), ValueError, "prompt 0 must be a sequence of integer"),
        (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an integer, got 2.5"),
        (dict(method="pass", num_lookahead=1.0), TypeError, "num_lookahead must be an integer"),
        (dict(top_k=2.5), TypeError, "top_k must be an integer"),
        (dict(seed=0.5), TypeError, "seed must be an integer"),
        (dict(eos_id=True), TypeError, "eos_id must be an integer"),
    ],
)
def test_non_integer_ids_and_counts_are_clear_errors_before_compiling(kwargs, error, message):
    model = tiny_model(7)
    compiled = len(decode._EXECUTABLES)
    call = dict(prompts=[[1, 2, 3]], max_new_tokens=10) | kwargs
    with pytest.raises(error, match=message):
        generate(model, call.pop("prompts"), **call)
    assert len(decode._EXECUTABLES) == compiled


def test_numpy_integer_ids_and_counts_are_accepted():
    model = tiny_model(7)
    prompt = np.array([1, 2, 3], np.int32)
    result = generate(model, [prompt], max_new_tokens=np.int64(5), seed=np.int32(1), top_k=3)
    assert result.tokens == generate(model, [[1, 2, 3]], max_new_tokens=5, seed=1, top_k=3).tokens
