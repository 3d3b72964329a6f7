"""The benchmark in quick mode: output files and their structure, never timings."""

import json

import pytest
from conftest import chain_model, tiny_model

from pass_jax.bench import protocol, report, train_step
from pass_jax.bench.timing import ForwardTimer
from pass_jax.experiment import ExperimentConfig, default_config


def test_quick_benchmark_writes_results_table_and_plots(tmp_path):
    models = {"chain": chain_model(1, 2, max_lookahead=2)[0]}
    quick = protocol.Protocol(
        max_new_tokens=12,
        temperatures=(0.0, 0.8),
        num_lookahead=2,
        methods=("pass", "pass_tree"),
        sweep_lookaheads=(1, 2),
        repeats=1,
        cost_block_lens=(1, 2),
    )
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    results = protocol.run(models, prompts, quick)
    results.update(num_prompts=len(prompts), prompt_len=4)
    files = report.write(results, tmp_path, machine="test")

    assert {p.name for p in tmp_path.iterdir()} == {
        "results.json",
        "results.md",
        "speedup_vs_L.png",
        "speedup_vs_temperature.png",
        "acceptance_by_position.png",
    }
    for name in ("speedup_vs_L", "speedup_vs_temperature", "acceptance_by_position"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(files["json"].read_text())
    assert set(saved["models"]) == set(models)
    for model in saved["models"].values():
        labels = {(r["label"], r["temperature"]) for r in model["records"]}
        assert ("autoregressive", 0.0) in labels and ("pass_tree, L=2", 0.8) in labels
        assert ("PaSS, L=1", 0.8) in labels and ("PaSS, L=1", 0.0) not in labels  # sweep at 0.8
        # pass: 3-token calls (2 at L=1), pass_tree 9
        assert set(model["forward_cost_relative"]) == {"1", "2", "3", "9"}
        for record in model["records"]:
            assert record["tau"] >= 1.0
            assert record["tau"] <= record["tau_bound"] + 1e-9
            assert record["seconds_per_sequence"] > 0
            assert len(record["acceptance_by_position"]) == (record["num_lookahead"] or 0)
    chain_pass = [r for r in saved["models"]["chain"]["records"] if r["label"] == "PaSS, L=2"]
    assert all(r["acceptance_by_position"][0] > 0 for r in chain_pass)
    for record in saved["models"]["chain"]["records"]:  # exact arithmetic: greedy is lossless
        greedy = record["temperature"] == 0.0
        assert record.get("greedy_identical") == (1.0 if greedy else None)
        assert record.get("greedy_agreed_tokens") == (12.0 if greedy else None)
    table = files["markdown"].read_text()
    assert "| PaSS, L=2 |" in table and "### chain" in table and "T=0.8" in table
    assert "PaSS, L=2: 100% identical, 12 tokens agree on average" in table
    assert "L sweep at T=0.8, and every speculative method:" in table
    assert "| pass_tree, L=2 | 0.0 |" in table and "| 9 |" in table and "| 3+3 |" in table
    # Without T=0.8 no sweep runs, and the table does not announce one.
    results["protocol"]["temperatures"] = (0.0,)
    for model in results["models"].values():
        model["records"] = [r for r in model["records"] if r["temperature"] == 0.0]
    greedy_only = report.markdown(results, machine="test")
    assert "L sweep" not in greedy_only and "Every speculative method:" in greedy_only


def test_method_specs_name_the_options_and_bad_ones_are_errors():
    method = protocol.Method.parse("pass_tree:3x2:argmax", default_lookahead=4)
    assert method == protocol.Method("pass_tree", 3, 2, "argmax")
    assert method.label == "pass_tree, L=3, 2 candidates, argmax drafts"
    assert method.call_block_lens == [1 + 6 + 7 * 3]
    assert protocol.Method.parse("pass", 4).call_block_lens == [5, 5]
    assert protocol.Method.parse("pass_fused:x3", 2) == protocol.Method("pass_fused", 2, 3)
    for spec in ("beam", "pass:four", "pass:2:greedy"):
        with pytest.raises(ValueError, match=r"unknown method|bad option"):
            protocol.Protocol(methods=(spec,))


def test_greedy_agreement_counts_the_tokens_before_the_first_difference():
    assert protocol._common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert protocol._common_prefix([1, 2], [1, 2]) == 2
    settings = protocol.Protocol(max_new_tokens=4)
    agreement = protocol._greedy_agreement([4, 2, 4, 0], settings)
    assert agreement == {"greedy_identical": 0.5, "greedy_agreed_tokens": 2.5}


def test_train_step_benchmark_reads_the_steps_flops():
    config = default_config()
    config.model.update(
        d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128, max_seq_len=64,
        max_lookahead=2, matmul_dtype="bfloat16",
    )  # fmt: skip
    config.tokenizer.vocab_size = 256
    config.data.update(seq_len=32, batch_size=4)
    config.eval.update(num_prompts=0)  # no acceptance evaluation: only the train step runs
    exp = ExperimentConfig.from_config(config)
    result = train_step.measure(exp, "base", row_groups=2, steps=1, repeats=1)
    assert result["matmul_operands"] == "bfloat16"

    # 6 FLOPs per weight per token (forward + backward) in the layers and the output head, and
    # the attention scores and mixing: 12 * layers * seq_len * heads * head_dim per token.
    m = exp.model
    layer = m.d_model * (2 * m.n_heads + 2 * m.n_kv_heads) * m.head_dim + 3 * m.d_model * m.d_ff
    weights = m.n_layers * layer + m.d_model * m.vocab_size
    attention = 12 * m.n_layers * exp.data.seq_len * m.n_heads * m.head_dim
    assert 0.9 < result["mflop_per_token"] * 1e6 / (6 * weights + attention) < 1.1
    assert result["tokens_per_s"] == pytest.approx(4 * 32 / (result["step_ms"] / 1e3))
    assert set(result["matmul_gflop_per_s"]) == {
        "128x64x32",
        "128x64x64",
        "128x64x128",
        "128x64x256",
    }
    with pytest.raises(ValueError, match="stage 'distill' is not one of the config's"):
        train_step.measure(exp, "distill", row_groups=1, steps=1, repeats=1)


def test_forward_timer_starts_early_enough_to_fit_its_calls_in_the_cache():
    # `bench.loop_overhead --max_new_tokens 16`: a 32-slot cache, a mean context of 16, too
    # short for 16 timed calls of 16 tokens from position 8, so the timed calls start earlier.
    timer = ForwardTimer(tiny_model(), [1, 16], context=16, capacity=32)
    timer.sample()
    assert set(timer.relative_cost()) == {1, 16}
    with pytest.raises(ValueError, match="capacity 31 is too small for 16 calls"):
        ForwardTimer(tiny_model(), [1, 16], context=8, capacity=31)
