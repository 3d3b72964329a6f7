"""The ahead-of-time decode check: abstract arrays, fake devices, per-device memory figures."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import jax
from conftest import tiny_config

from pass_jax import aot, sharding
from pass_jax.experiment import ExperimentConfig

CONFIG_7B = Path(__file__).parents[1] / "configs" / "7b.py"
SMALL = dict(n_layers=2, d_model=256, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=512)
BATCH, PROMPT, NEW, L, VOCAB = 4, 16, 16, 4, 1024


def test_cli_compiles_a_scaled_down_7b_on_8_fake_devices():
    overrides = [f"--config.model.{k}={v}" for k, v in SMALL.items()] + [
        f"--config.tokenizer.vocab_size={VOCAB}",
        f"--config.decode.batch_size={BATCH}",
        f"--config.decode.prompt_len={PROMPT}",
        f"--config.decode.max_new_tokens={NEW}",
    ]
    command = [sys.executable, "-m", "pass_jax.aot", f"--config={CONFIG_7B}", "--mesh=2,1,4"]
    proc = subprocess.run(
        [*command, *overrides, "--json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)

    assert report["mesh"] == {"data": 2, "fsdp": 1, "tensor": 4}
    capacity = 16 + 16 + L
    assert report["shape"]["capacity"] == capacity
    d, f, layers, hd = SMALL["d_model"], SMALL["d_ff"], SMALL["n_layers"], SMALL["head_dim"]
    sharded = 2 * VOCAB * d + layers * (4 * d * 4 * hd + 3 * d * f)  # split 4 ways on `tensor`
    replicated = (2 * layers + 1 + 8) * d  # norms and the 8-row lookahead table
    assert report["params_bytes"] == 2 * (sharded // 4 + replicated) + 4 * hd // 2  # + inv_freq
    # k and v [layers, B, S, K, D] bf16, split over data (B) and tensor (K).
    assert report["cache_bytes"] == 2 * 2 * layers * (BATCH // 2) * capacity * (4 // 4) * hd
    prefill, decode = report["programs"]
    assert (prefill["name"], decode["name"]) == ("prefill", "decode")
    for program in report["programs"]:
        assert program["argument"] >= report["params_bytes"] // 2
        assert program["output"] >= report["cache_bytes"]
        assert program["temp"] > 0 and program["compile_s"] > 0
    assert decode["alias"] >= report["cache_bytes"]  # the donated cache is updated in place
    assert report["peak"] == max(
        p["argument"] + p["output"] - p["alias"] + p["temp"] for p in (prefill, decode)
    )
    assert set(report["fits"]) == set(aot.TARGETS)


def test_decode_report_in_process():
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    report = aot.decode_report(
        tiny_config(), mesh, batch_size=2, prompt_len=5, max_new_tokens=3, num_lookahead=0
    )
    assert [p.name for p in report.programs] == ["prefill", "decode"]
    assert report.resident == report.params_bytes + report.cache_bytes
    assert "share of a device's memory" in aot.format_report(report)


def test_7b_config_has_llama2_shapes_and_the_training_layout():
    config = runpy.run_path(str(CONFIG_7B))["get_config"]()
    model = aot.model_config(config)
    assert model.num_params - model.d_model * model.max_lookahead == 6_738_415_616  # LLaMA-2-7B
    assert (model.dtype, model.param_dtype, model.scan_layers, model.remat) == (
        "bfloat16",
        "bfloat16",
        True,
        True,
    )
    training = {k: v for k, v in config.to_dict().items() if k not in ("mesh", "decode")}
    experiment = ExperimentConfig.from_config(training)
    assert experiment.model == model
    (stage,) = experiment.stages
    assert (stage.name, stage.learning_rate, stage.steps, stage.warmup_steps) == (
        "lookahead",
        1e-2,
        10_000,
        2_000,
    )
    assert experiment.data.batch_size == 8
