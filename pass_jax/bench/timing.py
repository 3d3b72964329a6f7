"""Timing a model's forward: compiled first, warmed up, then medians over samples."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pass_jax.kv_cache import KVCache
from pass_jax.model import Transformer


class ForwardTimer:
    """Times one cached forward on blocks of several lengths, batch 1, after `context` committed
    positions in a cache of `capacity` slots.

    A forward is measured as the decoding loop runs it: `calls_per_run` forwards inside one
    jitted `fori_loop` (no per-call Python dispatch), the cache donated and carried from call to
    call, each call committing one position (so that positions and masks change from call to
    call, as in decoding; the mean length is `context`, or as near it as `capacity` allows).
    Every length is compiled and warmed up once; `sample()` then times one run of each length,
    in a rotating order, so a caller can interleave samples with other work and drift hits
    every length alike. Figures are medians over all samples.
    """

    def __init__(
        self,
        model: Transformer,
        block_lens: Sequence[int],
        *,
        context: int,
        capacity: int,
        calls_per_run: int = 16,
    ):
        self.block_lens = sorted(set(block_lens))
        self.calls_per_run = calls_per_run
        self._samples: dict[int, list[float]] = {n: [] for n in self.block_lens}
        self._rotation = 0
        graphdef, self._params = nnx.split(model)

        room = capacity - calls_per_run - max(self.block_lens)  # the latest start that fits
        if room < 0:
            raise ValueError(
                f"capacity {capacity} is too small for {calls_per_run} calls on up to "
                f"{max(self.block_lens)} tokens"
            )
        start = min(max(context - calls_per_run // 2, 0), room)

        def run(params, cache, tokens):
            model = nnx.merge(graphdef, params)
            cache = cache.replace(lengths=jnp.full_like(cache.lengths, start))

            def body(_, carry):
                cache, checksum = carry
                logits, cache = model(tokens, cache=cache)  # [1, T, V]
                return cache.commit(jnp.ones_like(cache.lengths)), checksum + logits[0, -1, 0]

            return jax.lax.fori_loop(0, calls_per_run, body, (cache, jnp.float32(0)))

        self._cache = KVCache.create(model.config, 1, capacity)
        self._tokens = {n: jnp.zeros((1, n), jnp.int32) for n in self.block_lens}
        # Compiled ahead: a jitted call would compile again once the carried cache is committed.
        jitted = jax.jit(run, donate_argnums=1)
        self._runs = {
            n: jitted.lower(self._params, self._cache, self._tokens[n]).compile()
            for n in self.block_lens
        }
        for n in self.block_lens:
            self._time(n)  # warm-up, not recorded

    def _time(self, block_len: int) -> float:
        start = time.perf_counter()
        self._cache, checksum = self._runs[block_len](
            self._params, self._cache, self._tokens[block_len]
        )
        jax.block_until_ready(checksum)
        return (time.perf_counter() - start) / self.calls_per_run

    def sample(self, rounds: int = 1) -> None:
        """Times `rounds` runs of every block length, each round in a rotated order."""
        for _ in range(rounds):
            shift = self._rotation % len(self.block_lens)
            self._rotation += 1
            for n in self.block_lens[shift:] + self.block_lens[:shift]:
                self._samples[n].append(self._time(n))

    def seconds(self) -> dict[int, float]:
        """Median seconds of one forward, by block length."""
        if not all(self._samples.values()):
            raise ValueError("no samples yet: call sample() first")
        return {n: statistics.median(times) for n, times in self._samples.items()}

    def relative_cost(self) -> dict[int, float]:
        """Median time of a forward on each block length over a forward on one token."""
        seconds = self.seconds()
        if 1 not in seconds:
            raise ValueError("the cost curve is relative to one token: include block length 1")
        return {n: s / seconds[1] for n, s in seconds.items()}
