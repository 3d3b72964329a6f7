"""Logits processing and sampling, shared by every decoding method.

The target distribution `p` and any draft distribution `q` go through the same processing:
temperature, then top-k, then top-p, renormalised, in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """The traced part of sampling: values that change without recompiling."""

    temperature: jax.Array  # [] float32
    top_p: jax.Array  # [] float32


@dataclasses.dataclass(frozen=True)
class Sampler:
    """The static part of sampling, which shapes the compiled program: greedy (argmax) or
    sampled, top-k (0: off), and whether top-p is on. Hashable, so it can be a static argument."""

    greedy: bool = True
    top_k: int = 0
    use_top_p: bool = False

    @classmethod
    def create(
        cls, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0
    ) -> tuple[Sampler, SamplingParams]:
        """The sampler and its traced parameters; `temperature == 0` means greedy."""
        cls.check(temperature, top_k, top_p)
        params = SamplingParams(jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p))
        return cls(temperature == 0.0, int(top_k), top_p < 1.0), params

    @staticmethod
    def check(temperature: float, top_k: int, top_p: float) -> None:
        """Raises a `ValueError` (`TypeError` for a non-integer `top_k`) naming a bad value."""
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if check_integer("top_k", top_k) < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")

    def probabilities(self, logits: jax.Array, params: SamplingParams) -> jax.Array:
        """Processed distribution [..., V] float32 from logits [..., V]."""
        logits = logits.astype(jnp.float32) / params.temperature
        if 0 < self.top_k < logits.shape[-1]:
            # The min of the top-k values, not its last element: XLA rewrites top_k + slice into
            # a full sort of the vocabulary (40x slower on CPU).
            kth = jnp.min(jax.lax.top_k(logits, self.top_k)[0], axis=-1, keepdims=True)
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        probs = jax.nn.softmax(logits, axis=-1)
        if self.use_top_p:
            sorted_probs = -jnp.sort(-probs, axis=-1)  # [..., V] descending
            mass_before = cumsum(sorted_probs) - sorted_probs
            kept = jnp.sum(mass_before < params.top_p, axis=-1, keepdims=True)  # [..., 1] >= 1
            cutoff = jnp.take_along_axis(sorted_probs, kept - 1, axis=-1)  # smallest kept prob
            probs = jnp.where(probs >= cutoff, probs, 0.0)
            probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
        return probs

    def choose(self, keys: jax.Array, logits: jax.Array, params: SamplingParams) -> jax.Array:
        """One token per position of logits [B, ..., V] with keys [B]: argmax if greedy, else
        sampled from `probabilities`; int32 [B, ...]."""
        if self.greedy:
            return argmax(logits)
        return sample(keys, self.probabilities(logits, params))


def check_integer(name: str, value: object) -> int:
    """`value` if it is an integer (a Python or NumPy int, not a bool), else a `TypeError`
    naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def sample(keys: jax.Array, probs: jax.Array) -> jax.Array:
    """One token per row from probs [B, ..., V] with per-row keys [B]; int32 [B, ...].

    Inverse-CDF sampling: one uniform draw per position (a Gumbel draw per vocabulary entry
    costs ~V times the random bits). Only tokens of positive probability can be drawn.
    """
    cdf = cumsum(probs)  # [B, ..., V]
    u = uniform(keys, probs.shape[1:-1]) * cdf[..., -1]  # [B, ...]
    positive = probs > 0
    candidates = (cdf > u[..., None]) & positive  # [B, ..., V]
    first = _first_index(candidates)
    last = _last_index(positive)  # when rounding leaves u at or above the total
    return jnp.where(jnp.any(candidates, axis=-1), first, last)


def argmax(x: jax.Array) -> jax.Array:
    """Index of the first maximum along the last axis, int32: `jnp.argmax` as two plain
    reductions, which XLA:CPU runs faster than argmax's index-value reduction."""
    return _first_index(x == jnp.max(x, axis=-1, keepdims=True))


def cumsum(x: jax.Array, block: int = 64) -> jax.Array:
    """Inclusive cumulative sum along the last axis, float32, as two small triangular matmuls
    (within blocks of `block` entries, then across blocks) at full float32 precision. XLA:CPU's
    `cumsum` is a scan of many small ops, slower over a vocabulary."""
    size = x.shape[-1]
    num_blocks = -(-size // block)
    x = jnp.pad(x.astype(jnp.float32), [(0, 0)] * (x.ndim - 1) + [(0, num_blocks * block - size)])
    blocks = x.reshape(*x.shape[:-1], num_blocks, block)  # [..., N, K]
    upper = jnp.triu(jnp.ones((block, block), jnp.float32))  # [i, j]: i <= j
    within = jnp.einsum("...ni,ij->...nj", blocks, upper, precision="highest")
    before = jnp.triu(jnp.ones((num_blocks, num_blocks), jnp.float32), 1)  # [m, n]: m < n
    offsets = jnp.einsum("...m,mn->...n", within[..., -1], before, precision="highest")
    total = within + offsets[..., None]  # [..., N, K]
    return total.reshape(*x.shape[:-1], num_blocks * block)[..., :size]


def _first_index(mask: jax.Array) -> jax.Array:
    """Index of the first True along the last axis (0 where none), int32."""
    index = jax.lax.broadcasted_iota(jnp.int32, mask.shape, mask.ndim - 1)
    first = jnp.min(jnp.where(mask, index, mask.shape[-1]), axis=-1)
    return jnp.where(first == mask.shape[-1], 0, first)


def _last_index(mask: jax.Array) -> jax.Array:
    """Index of the last True along the last axis (size - 1 where none), int32."""
    index = jax.lax.broadcasted_iota(jnp.int32, mask.shape, mask.ndim - 1)
    last = jnp.max(jnp.where(mask, index, -1), axis=-1)
    return jnp.where(last < 0, mask.shape[-1] - 1, last)


def uniform(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-row uniform draws [B, *shape] in [0, 1) from keys [B]."""
    return jax.vmap(lambda key: jax.random.uniform(key, shape))(keys)


def split_keys(keys: jax.Array, num: int) -> jax.Array:
    """Splits per-row keys [B] into [num, B]."""
    return jnp.moveaxis(jax.vmap(lambda key: jax.random.split(key, num))(keys), 1, 0)
