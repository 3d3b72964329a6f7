"""The train.py and decode.py scripts, end to end in subprocesses, and config errors."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from pass_jax.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = {
    "model.d_model": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "model.n_kv_heads": 2,
    "model.head_dim": 16,
    "model.d_ff": 64,
    "model.max_seq_len": 128,
    "tokenizer.vocab_size": 400,
    "tokenizer.max_train_bytes": 300_000,
    "data.max_documents": 24,
    "data.seq_len": 32,
    "data.batch_size": 2,
    "base.steps": 3,
    "base.warmup_steps": 1,
    "lookahead.steps": 2,
    "lookahead.warmup_steps": 1,
    "joint.steps": 2,
    "joint.warmup_steps": 1,
    "eval.loss_batches": 1,
    "eval.num_prompts": 1,
    "eval.prompt_len": 8,
    "eval.max_new_tokens": 8,
    "train.log_every": 1,
}


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / name), "--config", str(ROOT / "configs/tiny.py"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _overrides() -> list[str]:
    return [f"--config.{key}={value}" for key, value in TINY_OVERRIDES.items()]


def test_train_then_decode_compare(tmp_path):
    trained = _script("train.py", f"--workdir={tmp_path}", *_overrides())
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "[joint] greedy pass: acceptance by position" in trained.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["stage"] for r in records if r["event"] == "eval"]
    assert evaluated == ["base", "lookahead", "joint"]
    assert {"loss", "tokens_per_s", "lr"} <= set(records[0])

    decoded = _script(
        "decode.py",
        f"--workdir={tmp_path}",
        "--prompt=def ",
        "--max_new_tokens=8",
        "--compare",
        *_overrides(),
    )
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    assert "tau" in decoded.stdout
    assert "wall-clock ratio (ar / pass, per token)" in decoded.stdout
    assert "same tokens: True" in decoded.stdout  # greedy PaSS is lossless


def test_unknown_config_override_is_a_clear_error(tmp_path):
    result = _script("train.py", f"--workdir={tmp_path}", "--config.foo=1")
    assert result.returncode != 0
    assert "unknown config key 'foo' in --config.foo=1" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ("data", "sequence_len", r"unknown key\(s\) in config.data: \['sequence_len'\]"),
        ("model", "d_modle", r"unknown ModelConfig key\(s\) \['d_modle'\]"),
        ("joint", "lookahead_wieght", r"unknown key\(s\) in config.joint"),
    ],
)
def test_misspelt_config_file_key_is_a_clear_error(section, key, message):
    config = runpy.run_path(str(ROOT / "configs/tiny.py"))["get_config"]()
    config[section][key] = 1
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_config(config)
