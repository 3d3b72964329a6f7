"""The decode loop's overhead: per-token time of `generate` against one jitted forward.

    python -m pass_jax.bench.loop_overhead [--max_new_tokens 256] [--repeats 5]
    python -m pass_jax.bench.loop_overhead --config configs/7b.py   # a config's model shape

Builds a random model (weights do not change the cost): ~50M parameters, or the model of
`--config` with its own dtypes (`--dtype` applies to the 50M model only), times `generate` (AR,
greedy, compile excluded) and a jitted single-token cached forward over the same cache capacity,
and prints both with their ratio, plus the cost of forwards on 2..16 tokens relative to one.
"""

from __future__ import annotations

import json
import statistics

from absl import flags
from flax import nnx
from ml_collections import config_flags

from pass_jax.aot import model_config
from pass_jax.bench.report import machine
from pass_jax.bench.timing import ForwardTimer
from pass_jax.cli.flags import run_main
from pass_jax.config import ModelConfig
from pass_jax.decode.generation import bucket, generate
from pass_jax.model import Transformer, loop_layers

_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "tokens generated per timed call")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repeats (the median is reported)")
_DTYPE = flags.DEFINE_string("dtype", "float32", "compute dtype (bfloat16 on accelerators)")
_OUT = flags.DEFINE_string("out", None, "optional JSON file for the raw figures")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: its model shape.")

MODEL_50M = dict(
    vocab_size=8192,
    d_model=576,
    n_layers=10,
    n_heads=9,
    n_kv_heads=9,
    head_dim=64,
    d_ff=1536,
    max_seq_len=1024,
    max_lookahead=8,
)


def measure(config: ModelConfig, max_new_tokens: int, repeats: int) -> dict:
    model = loop_layers(Transformer(config, rngs=nnx.Rngs(0)))  # as decoding runs it
    prompt = [[1] * 8]
    capacity = bucket(len(prompt[0])) + bucket(max_new_tokens)

    def run():
        return generate(model, prompt, max_new_tokens=max_new_tokens)

    first = run()  # compiles
    per_token_generate = (
        statistics.median(run().stats.decode_s for _ in range(repeats)) / max_new_tokens
    )
    context = len(prompt[0]) + max_new_tokens // 2  # the mean cache length during generation
    timer = ForwardTimer(model, [1, 2, 4, 5, 8, 16], context=context, capacity=capacity)
    timer.sample(rounds=max(repeats * 4, 20))
    per_token_forward = timer.seconds()[1]
    return {
        "params_millions": config.num_params / 1e6,
        "dtype": config.dtype,
        "max_new_tokens": max_new_tokens,
        "cache_capacity": capacity,
        "compile_s": first.stats.compile_s,
        "generate_ms_per_token": 1e3 * per_token_generate,
        "forward_ms_per_token": 1e3 * per_token_forward,
        "loop_overhead": per_token_generate / per_token_forward - 1.0,
        "forward_cost_relative_to_one_token": timer.relative_cost(),
        "machine": machine(),
    }


def main(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None:
        config = ModelConfig(**MODEL_50M, dtype=_DTYPE.value)
    else:
        config = model_config(_CONFIG.value)
    result = measure(config, _MAX_NEW.value, _REPEATS.value)
    print(json.dumps(result, indent=2))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    run_main(main)
