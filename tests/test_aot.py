"""The ahead-of-time decode check: abstract arrays, fake devices, per-device memory figures."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import jax
from conftest import tiny_config

from pass_jax import aot, sharding
from pass_jax.experiment import ExperimentConfig

ROOT = Path(__file__).parents[1]
CONFIG_7B = ROOT / "configs" / "7b.py"
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
    # Rank-16 adapters on all 7 projections: A [d_in, r] and B [r, d_out] split like the weight's
    # d_in / d_out (heads, MLP units: `tensor`; embed: `fsdp`, of size 1 here).
    r = 16
    sharded += layers * r * (4 * 4 * hd + 3 * f)  # B of wq, wk, wv, w_gate, w_up; A of wo, w_down
    replicated += layers * r * 7 * d  # A of wq, wk, wv, w_gate, w_up; B of wo, w_down
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
    assert model.num_params - model.num_head_params == 6_738_415_616  # LLaMA-2-7B
    assert (model.dtype, model.param_dtype, model.scan_layers, model.remat) == (
        "bfloat16",
        "bfloat16",
        True,
        True,
    )
    experiment = ExperimentConfig.from_config(config)
    assert experiment.model == model
    assert experiment.mesh.train_shape == (1, -1, 1)
    assert experiment.mesh.decode_shape == (1, 1, -1)
    assert experiment.decode.num_lookahead == 4
    lookahead, adapters = experiment.stages
    assert (lookahead.name, lookahead.learning_rate, lookahead.steps, lookahead.warmup_steps) == (
        "lookahead",
        1e-2,
        10_000,
        2_000,
    )
    assert (adapters.name, adapters.generated_rows(8), model.adapter_rank) == ("adapters", 0, 16)
    assert model.num_head_params == 8 * 4096 + 32 * 16 * (7 * 4096 + 4 * 4096 + 3 * 11008)
    assert experiment.data.batch_size == 8


def test_train_dry_run_sizes_a_scaled_down_7b_train_step_and_decode_loop(tmp_path):
    """`train.py --dry_run` on 8 fake CPU devices: the lookahead and adapters train steps on the
    FSDP mesh and the decoding programs (with the adapters) on the tensor-parallel mesh, with
    per-device memory; nothing runs."""
    overrides = [f"--config.model.{k}={v}" for k, v in SMALL.items()] + [
        f"--config.tokenizer.vocab_size={VOCAB}",
        "--config.data.seq_len=64",
        f"--config.decode.batch_size={BATCH}",
        f"--config.decode.prompt_len={PROMPT}",
        f"--config.decode.max_new_tokens={NEW}",
    ]
    command = [sys.executable, str(ROOT / "train.py"), f"--config={CONFIG_7B}"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run(
        [*command, f"--workdir={tmp_path / 'run'}", "--dry_run", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert out.startswith("dry run on 8 x cpu (cpu)")
    for stage in ("lookahead", "adapters"):
        assert f"train: mesh data=1 fsdp=8 tensor=1; stage {stage}, batch_size 8, seq_len 64" in out
    assert "decode: mesh data=1 fsdp=1 tensor=8; batch_size 4" in out
    number = r"\s+\d+\.\d{3}"
    for program in ("train_lookahead", "train_adapters", "prefill", "decode"):  # sizes, timings
        assert re.search(rf"^{program}(?:{number}){{5}}\s+\d+\.\d\s+\d+\.\d$", out, re.M), out
    assert out.count("share of a device's memory") == 3
    assert "params + optimizer state" in out and "params + KV cache" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
