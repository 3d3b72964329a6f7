"""Timing helpers: warm-up first, then the median over repeats, always on finished work."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pass_jax.kv_cache import KVCache
from pass_jax.model import Transformer


def median_seconds(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` (its outputs waited for) after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_seconds(
    model: Transformer,
    *,
    block_len: int,
    context: int,
    capacity: int,
    repeats: int,
    calls_per_run: int = 16,
) -> float:
    """Median time of one cached forward on `block_len` new tokens, batch 1, after `context`
    committed positions, in a cache of `capacity` slots.

    Measured as the decoding loop runs it: `calls_per_run` forwards inside one jitted
    `fori_loop` (no per-call Python dispatch), the cache donated and carried from call to call
    (its length never advances), each call reading what the one before it wrote.
    """
    graphdef, params = nnx.split(model)

    @functools.partial(jax.jit, donate_argnums=1)
    def run(params, cache, tokens):
        model = nnx.merge(graphdef, params)

        def body(_, carry):
            cache, checksum = carry
            logits, cache = model(tokens, cache=cache)  # [1, T, V]
            return cache, checksum + logits[0, -1, 0]

        return jax.lax.fori_loop(0, calls_per_run, body, (cache, jnp.float32(0)))

    cache = KVCache.create(model.config, 1, capacity)
    cache = cache.replace(lengths=jnp.full((1,), context, jnp.int32))
    tokens = jnp.zeros((1, block_len), jnp.int32)

    def call():
        nonlocal cache
        cache, checksum = run(params, cache, tokens)
        return checksum

    return median_seconds(call, repeats=repeats, warmup=1) / calls_per_run


def cost_curve(
    model: Transformer, block_lens: list[int], *, context: int, capacity: int, repeats: int
) -> dict[int, float]:
    """Time of a forward on each block length, relative to a forward on one token."""
    seconds = {
        n: forward_seconds(model, block_len=n, context=context, capacity=capacity, repeats=repeats)
        for n in sorted(set([1, *block_lens]))
    }
    return {n: seconds[n] / seconds[1] for n in block_lens}
