"""Ahead-of-time compilation against abstract arrays: per-device memory without the hardware.

The model is built with `nnx.eval_shape` (no weights allocated), every argument is a
`jax.ShapeDtypeStruct` carrying its `NamedSharding` on the mesh, and the programs are lowered
exactly as `generate` plans and lowers them (`generation.DecodePlan`), then compiled; XLA's
`memory_analysis()` gives the per-device argument / output / alias / temp sizes. On a CPU host
with fake devices (`--fake_devices 8`) this checks that a configuration partitions and
compiles, and sizes it:

    python -m pass_jax.aot --config configs/7b.py [--mesh 1,1,8] [--config.decode.batch_size=16]

Two figures bound what a GPU/TPU device needs:

- `resident`: params + KV cache per device, exact (from the shardings): the lower bound.
- `peak` (argument + output - alias + temp): what the CPU compiler's program needs, an upper
  bound. XLA:CPU has no bf16 matmuls: it converts bf16 weights to f32 and hoists those converts
  out of the layer scan, so its temp holds an f32 copy of every weight per model call in the
  loop (for the 7B on 8-way tensor parallelism, ~6 of its ~8 GiB of decode temp), which no
  GPU/TPU program has (float32 weights have no such copy). Most of the rest of the decoding
  loop's temp is one more copy of the KV cache.

`train_report` does the same for one stage's train step, exactly as `trainer.Trainer` jits it
(state and batch shardings pinned, state donated); its resident figure is params + optimizer
state. `python train.py --config ... --dry_run` prints both reports for an experiment.

Any program that takes the graphdef first (`fn(graphdef, *args, **static)`, like
`loop.prefill` or `loop.decode`) can be checked with `compile_program`.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags

from pass_jax import sharding
from pass_jax.config import ModelConfig
from pass_jax.decode import generation
from pass_jax.experiment import StageConfig
from pass_jax.model import Transformer
from pass_jax.sampling import Sampler
from pass_jax.training import trainer
from pass_jax.training.optim import make_optimizer

GiB = 1 << 30
# Nominal memory per device, before what the runtime reserves.
TARGETS = {
    "H100 80GB": 80 * GiB,
    "H200 141GB": 141 * 10**9,
    "TPU v4": 32 * GiB,
    "TPU v5e": 16 * GiB,
}


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """One compiled program: per-device sizes in bytes (XLA `memory_analysis`) and timings."""

    name: str
    argument: int
    output: int
    alias: int
    temp: int
    generated_code: int
    lower_s: float
    compile_s: float

    @property
    def peak(self) -> int:
        """Live bytes at the worst point: inputs, outputs not aliasing a donated input, temps."""
        return self.argument + self.output - self.alias + self.temp


@dataclasses.dataclass(frozen=True)
class MemoryReport(abc.ABC):
    """Per-device memory of compiled programs on one mesh, and what stays resident between
    calls (exact, from the shardings: `parts()`)."""

    title: ClassVar[str]
    mesh: dict[str, int]
    shape: dict[str, Any]
    programs: list[ProgramMemory]

    @abc.abstractmethod
    def parts(self) -> dict[str, int]:
        """Resident bytes per device, by name."""

    @property
    def resident(self) -> int:
        return sum(self.parts().values())

    @property
    def peak(self) -> int:
        return max(p.peak for p in self.programs)

    def fits(self) -> dict[str, tuple[float, float]]:
        """(resident, peak) as fractions of each target device's memory."""
        return {name: (self.resident / size, self.peak / size) for name, size in TARGETS.items()}

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(resident=self.resident, peak=self.peak, fits=self.fits())
        return values


@dataclasses.dataclass(frozen=True)
class DecodeReport(MemoryReport):
    """`generate`'s two programs for one decoding shape (batch_size, prompt_block, capacity,
    buffer_len, num_lookahead, greedy)."""

    title: ClassVar[str] = "decode"
    params_bytes: int  # per device
    cache_bytes: int  # per device (k + v)

    def parts(self) -> dict[str, int]:
        return {"params": self.params_bytes, "KV cache": self.cache_bytes}


@dataclasses.dataclass(frozen=True)
class TrainReport(MemoryReport):
    """One stage's train step for one batch shape (stage, batch_size, seq_len, tokens per row
    with the lookahead blocks)."""

    title: ClassVar[str] = "train"
    params_bytes: int  # per device
    opt_state_bytes: int  # per device

    def parts(self) -> dict[str, int]:
        return {"params": self.params_bytes, "optimizer state": self.opt_state_bytes}


def abstract_model(config: ModelConfig, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graphdef and its state as `ShapeDtypeStruct`s sharded on `mesh`."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    return graphdef, _with_shardings(state, sharding.param_shardings(state, mesh))


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded arrays or `ShapeDtypeStruct`s (the largest
    shard of each leaf)."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def _measure(
    name: str, lower: Callable[[], jax.stages.Lowered]
) -> tuple[jax.stages.Compiled, ProgramMemory]:
    """Runs `lower()` and compiles the result; returns the executable and its memory figures."""
    start = time.perf_counter()
    lowered = lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    stats = compiled.memory_analysis()
    memory = ProgramMemory(
        name=name,
        argument=stats.argument_size_in_bytes,
        output=stats.output_size_in_bytes,
        alias=stats.alias_size_in_bytes,
        temp=stats.temp_size_in_bytes,
        generated_code=stats.generated_code_size_in_bytes,
        lower_s=lowered_at - start,
        compile_s=done - lowered_at,
    )
    return compiled, memory


def compile_program(
    name: str, fn: Callable[..., Any], args: tuple, donate: tuple[int, ...] = (), **static: Any
) -> tuple[jax.stages.Compiled, ProgramMemory]:
    """Lowers and compiles `fn(*args, **static)` like `generate` does (`args[0]` static,
    `donate` indexing `args[1:]`); returns the executable and its memory figures."""
    return _measure(name, generation.Program(fn, args[0], args[1:], static, donate).lower)


def abstract_train_state(
    config: ModelConfig, stage: StageConfig, mesh: Mesh
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The graphdef of (model, optimizer), their state as `ShapeDtypeStruct`s sharded on `mesh`,
    and those shardings (`Trainer`'s: optimizer moments like their params, counters replicated)."""

    def build() -> tuple[Transformer, nnx.Optimizer]:
        model = Transformer(config, rngs=nnx.Rngs(0))
        return model, make_optimizer(model, stage)

    graphdef, state = nnx.split(nnx.eval_shape(build))
    shardings = sharding.param_shardings(state, mesh)
    return graphdef, _with_shardings(state, shardings), shardings


def train_report(
    config: ModelConfig, stage: StageConfig, mesh: Mesh, *, batch_size: int, seq_len: int
) -> TrainReport:
    """Compiles `stage`'s train step on batches [batch_size, seq_len] (the global batch), on
    the stage's model (`config` with its adapters in the `adapters` stage only)."""
    config = stage.model_config(config)
    graphdef, state, shardings = abstract_train_state(config, stage, mesh)
    batch_shape = (batch_size, seq_len)
    batch = jax.ShapeDtypeStruct(
        batch_shape, jnp.int32, sharding=sharding.batch_sharding(mesh, batch_shape)
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
    step = trainer.train_step_program(
        graphdef, stage, config.max_lookahead, shardings, batch.sharding
    )

    def lower() -> jax.stages.Lowered:
        with jax.set_mesh(mesh):
            return step.lower(state, batch, key)

    _, memory = _measure(f"train_{stage.name}", lower)
    blocks = stage.num_insertions * config.max_lookahead if stage.trains_table else 0
    return TrainReport(
        mesh=dict(mesh.shape),
        shape=dict(
            stage=stage.name, batch_size=batch_size, seq_len=seq_len, tokens=seq_len - 1 + blocks
        ),
        programs=[memory],
        params_bytes=per_device_bytes(state[0]),
        opt_state_bytes=per_device_bytes(state[1]),
    )


def decode_report(
    config: ModelConfig,
    mesh: Mesh,
    *,
    batch_size: int,
    prompt_len: int,
    max_new_tokens: int,
    num_lookahead: int,
    greedy: bool = True,
) -> DecodeReport:
    """Compiles prefill and the decoding loop (PaSS with `num_lookahead` drafts, or AR for 0)
    for `batch_size` prompts of `prompt_len` tokens and `max_new_tokens` new tokens, planned
    and built as `generate` builds them."""
    sampler, sampling_params = Sampler.create(temperature=0.0 if greedy else 1.0)
    method = "pass" if num_lookahead else "ar"
    plan = generation.DecodePlan.create(
        config, batch_size, prompt_len, max_new_tokens, method, num_lookahead, sampler
    )
    graphdef, params = abstract_model(config, mesh)
    tokens, lengths, pending, keys = (
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, x.shape))
        for x in plan.row_inputs()
    )
    prefill, prefill_memory = _measure(
        "prefill", plan.prefill(graphdef, params, tokens, lengths).lower
    )
    cache = _with_shardings(prefill.out_info, prefill.output_shardings)
    # The traced scalars (sampling parameters, max_new_tokens, EOS id) stay concrete.
    decode = plan.decode(
        graphdef, params, cache, pending, keys, sampling_params, max_new_tokens, None, tokens,
        lengths,
    )  # fmt: skip
    _, decode_memory = _measure("decode", decode.lower)
    return DecodeReport(
        mesh=dict(mesh.shape),
        shape=dict(
            batch_size=batch_size,
            prompt_block=plan.prompt_block,
            capacity=plan.capacity,
            buffer_len=plan.buffer_len,
            num_lookahead=num_lookahead,
            greedy=greedy,
        ),
        params_bytes=per_device_bytes(params),
        cache_bytes=per_device_bytes((cache.k, cache.v)),
        programs=[prefill_memory, decode_memory],
    )


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The ModelConfig of an experiment config (the vocabulary size comes from the tokenizer)."""
    return ModelConfig.from_dict({**config.model, "vocab_size": config.tokenizer.vocab_size})


def format_report(report: MemoryReport) -> str:
    gib = lambda n: f"{n / GiB:9.3f}"
    mesh = " ".join(f"{k}={v}" for k, v in report.mesh.items())
    parts = ", ".join(f"{name} {gib(n).strip()}" for name, n in report.parts().items())
    lines = [
        f"{report.title}: mesh {mesh}; " + ", ".join(f"{k} {v}" for k, v in report.shape.items()),
        f"GiB per device: {parts}",
        "program          argument   output    alias     temp     peak  lower_s compile_s",
    ]
    for p in report.programs:
        sizes = "".join(gib(n) for n in (p.argument, p.output, p.alias, p.temp, p.peak))
        lines.append(f"{p.name:14s}{sizes} {p.lower_s:8.1f} {p.compile_s:9.1f}")
    lines.append(f"share of a device's memory: resident ({' + '.join(report.parts())}) .. peak")
    lines += [
        f"  {name:11s} {low:6.1%} .. {high:6.1%}" for name, (low, high) in report.fits().items()
    ]
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> None:
    del argv
    values = flags.FLAGS
    if values.fake_devices:  # before JAX starts its backend
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", values.fake_devices)
    config = values.config
    mesh_shape = values.mesh or config.mesh.decode_shape
    mesh = sharding.make_mesh([int(n) for n in mesh_shape], config.mesh.axes)
    report = decode_report(model_config(config), mesh, **config.decode, greedy=not values.sample)
    print(json.dumps(report.to_dict(), indent=1) if values.json else format_report(report))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
    flags.DEFINE_list("mesh", None, "mesh shape, e.g. 1,2,4 (default: config.mesh.decode_shape)")
    flags.DEFINE_integer("fake_devices", 8, "compile for N fake CPU devices; 0: the real devices")
    flags.DEFINE_bool("sample", False, "compile the sampling (not greedy) programs")
    flags.DEFINE_bool("json", False, "print the report as JSON")
    flags.mark_flag_as_required("config")
    app.run(_main)
