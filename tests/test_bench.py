"""The benchmark in quick mode: output files and their structure, never timings."""

import json

from conftest import chain_model

from pass_jax.bench import protocol, report


def test_quick_benchmark_writes_results_table_and_plots(tmp_path):
    models = {"chain": chain_model(1, 2, max_lookahead=2)[0]}
    quick = protocol.Protocol(
        max_new_tokens=12,
        temperatures=(0.0, 0.8),
        num_lookahead=2,
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
        assert ("autoregressive", 0.0) in labels and ("[UNK] lookahead, L=2", 0.8) in labels
        assert ("PaSS, L=1", 0.8) in labels and ("PaSS, L=1", 0.0) not in labels  # sweep at 0.8
        assert set(model["forward_cost_relative"]) == {"1", "2", "3"}
        for record in model["records"]:
            assert record["tau"] >= 1.0
            assert record["tau"] <= record["tau_bound"] + 1e-9
            assert record["seconds_per_sequence"] > 0
            assert len(record["acceptance_by_position"]) == (record["num_lookahead"] or 0)
    chain_pass = [r for r in saved["models"]["chain"]["records"] if r["label"] == "PaSS, L=2"]
    assert all(r["acceptance_by_position"][0] > 0 for r in chain_pass)
    table = files["markdown"].read_text()
    assert "| PaSS, L=2 |" in table and "### chain" in table and "T=0.8" in table
