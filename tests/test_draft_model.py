"""Draft-model speculative sampling (`sps`) and PEARL (`pearl`): greedy output equals greedy AR
token for token, sampled output has the model's exact distribution (with a mutation that must
fail), the draft model's cache rolls back (a draft equal to the target has every draft
accepted), bad input is a clear error before compiling, and pearl runs on a mesh with the draft
model placed there."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sharp_model, tiny_model
from flax import nnx
from multidevice import run_on_devices
from test_invariants import VOCAB, _chi_square_p_value, _exact_distribution, _sampled_counts

from pass_jax import sharding
from pass_jax.decode import generation, verify
from pass_jax.decode.generation import generate
from pass_jax.decode.pearl import projected_parallel_s

LENGTHS, MAX_NEW = [1, 7, 3, 2, 5, 4], 16
# One layer, as the draft models: every draft of a case shares one compiled program. The draft
# caches of pearl, gamma 3, fill up: 7 + 16 + (2 * 3 - 1) - 1 positions.
GREEDY_MODEL = dict(vocab_size=16, max_seq_len=27, n_layers=1, n_kv_heads=4)
CASES = [("sps", 1), ("sps", 3), ("pearl", 2), ("pearl", 3)]


def _partly_right(model):
    """A copy of `model` with noise on its output head: a draft that is right part of the
    time."""
    draft = nnx.clone(model)
    head = draft.lm_head[...]
    draft.lm_head[...] = head + jnp.std(head) * jax.random.normal(jax.random.key(1), head.shape)
    return draft


def _prompts(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 16, n).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def greedy_target():
    model = sharp_model(0, **GREEDY_MODEL)
    prompts = _prompts(0)
    ar = generate(model, prompts, max_new_tokens=MAX_NEW)
    eos = ar.tokens[0][5]
    ar_eos = generate(model, prompts, max_new_tokens=MAX_NEW, eos_id=eos)
    return model, prompts, ar.tokens, eos, ar_eos.tokens


@pytest.mark.parametrize(("method", "gamma"), CASES)
def test_greedy_equals_greedy_ar_token_for_token(greedy_target, method, gamma):
    """A partly right draft (with EOS), a wrong one and the target itself: always AR's tokens;
    the first two see windows accepted whole and rejected at once."""
    model, prompts, ar, eos, ar_eos = greedy_target
    options = dict(max_new_tokens=MAX_NEW, method=method, num_lookahead=gamma)
    partly = generate(model, prompts, eos_id=eos, draft_model=_partly_right(model), **options)
    assert partly.tokens == ar_eos
    assert sum(row[-1] == eos and len(row) < MAX_NEW for row in partly.tokens) >= 1
    wrong = generate(model, prompts, draft_model=tiny_model(5, **GREEDY_MODEL), **options)
    assert wrong.tokens == ar
    for stats in (partly.stats, wrong.stats):
        assert stats.draft_forward_passes == gamma * stats.forward_passes
    reached, accepted = partly.stats.reached_by_position, partly.stats.accepted_by_position
    assert accepted[-1] >= 1 and reached[0] - accepted[0] >= 1, (reached, accepted)
    assert wrong.stats.acceptance_by_position[0] < partly.stats.acceptance_by_position[0]


@pytest.mark.parametrize(("method", "gamma"), CASES)
def test_a_draft_equal_to_the_target_has_every_draft_accepted(greedy_target, method, gamma):
    """The draft cache rolls back to what was accepted (and feeds the last draft of a whole
    window again): a draft model equal to the target proposes the target's own tokens, so each
    call yields `gamma + 1` tokens (sps), or `gamma` after a first call that verifies one draft
    (pearl, which samples no bonus token)."""
    model, prompts, ar, _, _ = greedy_target
    result = generate(
        model, prompts, max_new_tokens=MAX_NEW, method=method, num_lookahead=gamma,
        draft_model=nnx.clone(model),
    )  # fmt: skip
    assert result.tokens == ar
    calls = -(-MAX_NEW // (gamma + 1)) if method == "sps" else 1 + -(-(MAX_NEW - 1) // gamma)
    assert result.stats.forward_passes == calls
    assert result.stats.acceptance_by_position == [1.0] * gamma


# ---- the output distribution --------------------------------------------------------------

SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0)


@pytest.fixture(scope="module")
def sampled_target():
    model = sharp_model(20, vocab_size=VOCAB)
    return model, _exact_distribution(model, 3, **SAMPLING)


def _counts(model, method: str):
    draft = sharp_model(21, vocab_size=VOCAB, n_layers=1)
    return _sampled_counts(model, 2, method=method, draft_model=draft, **SAMPLING)


@pytest.mark.parametrize("method", ["sps", "pearl"])
def test_sampled_output_has_the_models_exact_distribution(sampled_target, method):
    model, exact = sampled_target
    counts, stats = _counts(model, method)
    assert _chi_square_p_value(counts, exact) > 1e-3
    assert 0.05 < stats.acceptance_by_position[0] < 0.95  # both branches of the rule ran


def test_a_broken_residual_fails_the_distribution_test(sampled_target, monkeypatch):
    """pearl's residual: both the call's and that of the draft verified at the bonus position
    (sps verifies as the lookahead chains do: their mutations are in test_engine)."""
    model, exact = sampled_target
    monkeypatch.setattr(verify, "_residual", lambda p, q: p)
    generation._EXECUTABLES.clear()
    try:
        counts, _ = _counts(model, "pearl")
    finally:
        monkeypatch.undo()
        generation._EXECUTABLES.clear()
    assert _chi_square_p_value(counts, exact) < 1e-6


# ---- errors, the projection, a mesh ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="sps"), "drafts with a draft model"),
        (dict(method="pearl", draft_model="small"), "drafts with a draft model"),
        (dict(method="ar", draft={}), "drafts with no draft model"),
        (dict(method="pass_fused", draft={}), "drafts with no draft model"),
        (dict(method="sps", draft={}, num_lookahead=0), "gamma >= 1"),
        (dict(method="pearl", draft={}, candidates=2), "drafts a chain"),
        (dict(method="sps", draft={}, draft_rule="argmax"), "drafts a chain"),
        (dict(method="sps", draft=dict(vocab_size=17)), "vocabulary has 17"),
        (dict(method="pearl", draft=dict(max_seq_len=28)), "max_seq_len is 28"),
    ],
)
def test_bad_draft_model_input_is_a_clear_error_before_compiling(kwargs, message):
    """`draft`: the draft model's config overrides. pearl with gamma 4 writes 7 draft positions
    past 3 + 20 tokens: 29 > 28."""
    model = tiny_model(0, max_seq_len=64)
    if "draft" in kwargs:
        kwargs["draft_model"] = tiny_model(1, n_layers=1, **kwargs.pop("draft"))
    before = len(generation._EXECUTABLES)
    with pytest.raises(ValueError, match=message):
        generate(model, [[1, 2, 3]], max_new_tokens=20, **kwargs)
    assert len(generation._EXECUTABLES) == before


def test_decode_checks_its_draft_model_flags_first(tmp_path):
    """Refused in one line before anything loads (the HF directory does not exist); sps with a
    draft checkpoint needs no --head, so it gets as far as loading."""
    from test_cli import _forked_mains  # here: the mesh test's subprocess imports this module

    hf = [f"--hf_dir={tmp_path / 'no_model'}", "--prompt=x"]
    cases = {
        "--draft_checkpoint is for --method sps or pearl, not pass": [
            *hf, "--method=pass", "--draft_checkpoint=x",
        ],
        "--method pearl drafts with a draft model: give --draft_checkpoint": [
            *hf, "--method=pearl",
        ],
        "a draft model drafts at least 1 token": [*hf, "--draft_checkpoint=x", "--num_lookahead=0"],
        "tokenizer not found": [*hf, "--method=sps", "--draft_checkpoint=x"],
    }  # fmt: skip
    for (message, case), (status, output) in zip(
        cases.items(), _forked_mains("decode", list(cases.values())), strict=True
    ):
        assert status == 2 and output.count("\n") == 1 and message in output, (case, output)


def test_the_parallel_projection_hides_the_shorter_of_draft_and_target_per_iteration():
    stats = SimpleNamespace(forward_passes=10, draft_forward_passes=30, decode_s=1.0)
    assert projected_parallel_s(stats, draft_call_s=0.01, target_call_s=0.05) == pytest.approx(
        1.0 - 10 * 0.03
    )
    assert projected_parallel_s(stats, draft_call_s=0.03, target_call_s=0.05) == pytest.approx(
        1.0 - 10 * 0.05
    )


def test_pearl_on_a_mesh_equals_greedy_ar(greedy_target):
    _, _, ar, _, _ = greedy_target
    run_on_devices("test_draft_model", "check_sharded_draft_model", json.dumps(ar))


def check_sharded_draft_model(expected: str) -> None:
    """On 8 devices: pearl with the target on a data x tensor mesh and the draft model left
    unsharded (`generate` places it there) gives AR's tokens."""
    assert jax.device_count() == 8
    model = sharp_model(0, **GREEDY_MODEL)
    draft = _partly_right(model)
    sharding.shard_model(model, sharding.make_mesh((2, 1, 4)))
    result = generate(
        model, _prompts(0), max_new_tokens=MAX_NEW, method="pearl", num_lookahead=3,
        draft_model=draft,
    )  # fmt: skip
    assert result.tokens == json.loads(expected)
