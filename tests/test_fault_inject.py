"""The fault-injection tool: a tiny run killed, damaged and resumed matches the reference."""

import json

from pass_jax.tools import fault_inject

FAST = {  # one stage, no decoding in the evaluation: a run in about 10 s
    "stages": "base",
    "tokenizer.max_train_bytes": 50_000,
    "eval.num_prompts": 0,
}


def test_a_killed_and_damaged_run_recovers_exactly(tmp_path):
    report = fault_inject.inject(
        tmp_path / "fi",
        runs=1,
        seed=3,
        damage=1.0,
        base_steps=4,
        checkpoint_every=1,
        overrides=FAST,
    )
    (run,) = report["runs"]
    assert run["outcome"] == "recovered", run
    assert report["summary"]["faults_injected"] == 1
    assert json.loads((tmp_path / "fi" / "fault_inject.json").read_text()) == report
