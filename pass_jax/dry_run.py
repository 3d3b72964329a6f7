"""`train.py --dry_run`: an experiment's train steps and decode loop compiled against abstract
arrays (`jax.ShapeDtypeStruct`s with shardings, no weights allocated), with per-device memory.

It compiles for the devices JAX finds. Without an accelerator those are `FAKE_DEVICES` fake CPU
devices (`use_fake_cpu_devices`, called before JAX starts), so a laptop checks that a 7B
configuration partitions on 8 devices and sizes it (see `pass_jax.aot` for the figures).
"""

from __future__ import annotations

import os

import jax

from pass_jax import aot, sharding
from pass_jax.experiment import ExperimentConfig

FAKE_DEVICES = 8


def use_fake_cpu_devices(n: int = FAKE_DEVICES) -> None:
    """Gives the CPU platform `n` devices (unless XLA_FLAGS already sets a count). Call before
    JAX starts a backend; an accelerator, when present, stays the default backend."""
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", n)


def reports(exp: ExperimentConfig) -> list[aot.MemoryReport]:
    """One `TrainReport` per configured stage on the training mesh (global batch
    `data.batch_size` x `data.seq_len`), then the `DecodeReport` of `exp.decode` on the decoding
    mesh."""
    axes = exp.mesh.axes
    train_mesh = sharding.make_mesh(exp.mesh.train_shape, axes)
    results: list[aot.MemoryReport] = [
        aot.train_report(
            exp.model, stage, train_mesh, batch_size=exp.data.batch_size, seq_len=exp.data.seq_len
        )
        for stage in exp.stages
    ]
    decode = exp.decode
    num_lookahead = decode.num_lookahead
    if num_lookahead is None:
        num_lookahead = exp.model.max_lookahead
    results.append(
        aot.decode_report(
            exp.model,
            sharding.make_mesh(exp.mesh.decode_shape, axes),
            batch_size=decode.batch_size,
            prompt_len=decode.prompt_len,
            max_new_tokens=decode.max_new_tokens,
            num_lookahead=num_lookahead,
        )
    )
    return results


def format_dry_run(exp: ExperimentConfig) -> str:
    """The printed dry run: the devices, then each program's report."""
    devices = jax.devices()
    header = f"dry run on {len(devices)} x {devices[0].device_kind} ({jax.default_backend()})"
    return "\n\n".join([header, *(aot.format_report(r) for r in reports(exp))])
