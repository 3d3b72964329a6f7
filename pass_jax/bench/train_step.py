"""Training throughput against the machine's own matrix-multiply rate.

    python -m pass_jax.bench.train_step --config configs/small.py [--stage base] \
        [--row_groups 4] [--steps 10] [--repeats 3]

Times the config's train step (random weights and tokens: they do not change the cost; compile
time reported apart, warm-up steps untimed, median over repeats) and reads its FLOPs from XLA's
cost analysis. Beside it, the rate of one jitted matrix multiply of each shape the step's layers
and output head run (`[batch * seq_len, d_model] @ [d_model, n]`, on operands of the model's
`matmul_dtype`, accumulating in its compute dtype), sampled between the timed steps (the same
machine states): tokens/s at that rate is what the step would reach if all its FLOPs ran as
fast as its matrix multiplies do in isolation.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from pass_jax.bench.report import machine
from pass_jax.config import ModelConfig
from pass_jax.experiment import ExperimentConfig
from pass_jax.model import Transformer
from pass_jax.training.optim import make_optimizer
from pass_jax.training.trainer import train_step_program

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_STAGE = flags.DEFINE_string("stage", "base", "Which of the config's stages to time.")
_ROW_GROUPS = flags.DEFINE_integer("row_groups", None, "Override config.train.row_groups.")
_STEPS = flags.DEFINE_integer("steps", 10, "Train steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (the median is reported).")


@functools.partial(jax.jit, static_argnums=2)
def _matmul(a: jax.Array, b: jax.Array, out_dtype: jnp.dtype) -> jax.Array:
    return jnp.matmul(a, b, preferred_element_type=out_dtype)


def _matmul_seconds(config: ModelConfig, rows: int, widths: list[int], calls: int = 10) -> dict:
    """Median seconds of `calls` jitted `[rows, d_model] @ [d_model, n]` on the config's matmul
    operands, by width n."""
    seconds = {}
    for width in widths:
        a = jnp.ones((rows, config.d_model), config.operand_dtype)
        b = jnp.ones((config.d_model, width), config.operand_dtype)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            jax.block_until_ready(_matmul(a, b, config.compute_dtype))
            times.append(time.perf_counter() - start)
        seconds[width] = statistics.median(times)
    return seconds


def measure(
    exp: ExperimentConfig, stage_name: str, row_groups: int, steps: int, repeats: int
) -> dict:
    """Tokens/s, FLOPs and achieved GFLOP/s of one stage's train step, and the matmul rates."""
    stages = {stage.name: stage for stage in exp.stages}
    if stage_name not in stages:
        raise ValueError(f"stage {stage_name!r} is not one of the config's {list(stages)}")
    stage, config = stages[stage_name], exp.model
    model = Transformer(config, rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model, stage)
    program = train_step_program(
        nnx.graphdef((model, optimizer)), stage, config.max_lookahead, row_groups=row_groups
    )
    shape = (exp.data.batch_size, exp.data.seq_len)
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, config.vocab_size, shape, np.int32)) for _ in range(2)]
    state, key = nnx.state((model, optimizer)), jax.random.key(0)

    start = time.perf_counter()
    compiled = program.lower(state, batches[0], key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]

    def run(state):
        for i in range(steps):
            state, metrics = compiled(state, batches[i % 2], key)
        return state, metrics

    tokens = shape[0] * shape[1]  # text tokens per step, as train.py counts them
    widths = sorted({config.d_model, config.n_kv_heads * config.head_dim, config.d_ff})
    widths.append(config.vocab_size)
    _matmul_seconds(config, tokens, widths, calls=1)  # compiles
    state, _ = run(state)  # warm-up
    # Steps and matmuls sampled alternately, so that both see the same machine states.
    step_times, matmul_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = run(state)
        jax.block_until_ready(metrics)
        step_times.append((time.perf_counter() - start) / steps)
        matmul_times.append(_matmul_seconds(config, tokens, widths))
    step_s = statistics.median(step_times)
    rates = {
        n: 2 * tokens * config.d_model * n / statistics.median(t[n] for t in matmul_times) / 1e9
        for n in widths
    }
    return {
        "stage": stage.name,
        "params_millions": config.num_params / 1e6,
        "matmul_operands": config.operand_dtype.name,
        "batch": list(shape),
        "row_groups": row_groups,
        "compile_s": compile_s,
        "step_ms": 1e3 * step_s,
        "tokens_per_s": tokens / step_s,
        "gflop_per_step": flops / 1e9,
        "mflop_per_token": flops / tokens / 1e6,
        "achieved_gflop_per_s": flops / step_s / 1e9,
        "matmul_gflop_per_s": {f"{tokens}x{config.d_model}x{n}": r for n, r in rates.items()},
        "tokens_per_s_at_matmul_rate": {
            "slowest": min(rates.values()) * 1e9 * tokens / flops,
            "fastest": max(rates.values()) * 1e9 * tokens / flops,
        },
        "machine": machine(),
    }


def main(argv: list[str]) -> None:
    del argv
    exp = ExperimentConfig.from_config(_CONFIG.value)  # the vocabulary: tokenizer.vocab_size
    row_groups = exp.train.row_groups if _ROW_GROUPS.value is None else _ROW_GROUPS.value
    print(
        json.dumps(measure(exp, _STAGE.value, row_groups, _STEPS.value, _REPEATS.value), indent=2)
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
