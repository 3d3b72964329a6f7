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
    model: Transformer, *, block_len: int, context: int, capacity: int, repeats: int
) -> float:
    """Median time of one jitted cached forward on `block_len` new tokens per row, batch 1,
    after `context` committed positions, in a cache of `capacity` slots.

    The cache is donated and threaded from call to call (its length never advances), as in the
    decoding loop: without donation every call would also copy the whole cache.
    """
    graphdef, params = nnx.split(model)

    @functools.partial(jax.jit, donate_argnums=1)
    def step(params, cache, tokens):
        logits, cache = nnx.merge(graphdef, params)(tokens, cache=cache)
        return logits, cache

    cache = KVCache.create(model.config, 1, capacity)
    cache = cache.replace(lengths=jnp.full((1,), context, jnp.int32))
    tokens = jnp.zeros((1, block_len), jnp.int32)

    def call():
        nonlocal cache
        logits, cache = step(params, cache, tokens)
        return logits

    return median_seconds(call, repeats=repeats, warmup=2)


def cost_curve(
    model: Transformer, block_lens: list[int], *, context: int, capacity: int, repeats: int
) -> dict[int, float]:
    """Time of a forward on each block length, relative to a forward on one token."""
    seconds = {
        n: forward_seconds(model, block_len=n, context=context, capacity=capacity, repeats=repeats)
        for n in sorted(set([1, *block_lens]))
    }
    return {n: seconds[n] / seconds[1] for n in block_lens}
