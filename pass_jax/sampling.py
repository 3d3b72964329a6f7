"""Logits processing and sampling, shared by every decoding method.

The target distribution `p` and any draft distribution `q` go through the same processing:
temperature, then top-k, then top-p, renormalised, in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How logits become a distribution. `temperature == 0` means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def static_key(self) -> tuple[bool, int, bool]:
        """What changes the compiled program: greedy or not, top-k, whether top-p is on."""
        return (self.greedy, self.top_k, self.top_p < 1.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """The traced part of sampling: values that change without recompiling."""

    temperature: jax.Array  # [] float32
    top_p: jax.Array  # [] float32

    @classmethod
    def from_config(cls, config: SamplingConfig) -> SamplingParams:
        return cls(jnp.float32(max(config.temperature, 1e-6)), jnp.float32(config.top_p))


def probabilities(
    logits: jax.Array, params: SamplingParams, *, top_k: int, use_top_p: bool
) -> jax.Array:
    """Processed distribution [..., V] float32 from logits [..., V]."""
    logits = logits.astype(jnp.float32) / params.temperature
    if 0 < top_k < logits.shape[-1]:
        # The min of the top-k values, not its last element: XLA rewrites top_k + slice into a
        # full sort of the vocabulary (40x slower on CPU).
        kth = jnp.min(jax.lax.top_k(logits, top_k)[0], axis=-1, keepdims=True)  # [..., 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    probs = jax.nn.softmax(logits, axis=-1)
    if use_top_p:
        sorted_probs = -jnp.sort(-probs, axis=-1)  # [..., V] descending
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        kept = jnp.sum(mass_before < params.top_p, axis=-1, keepdims=True)  # [..., 1] >= 1
        cutoff = jnp.take_along_axis(sorted_probs, kept - 1, axis=-1)  # smallest kept prob
        probs = jnp.where(probs >= cutoff, probs, 0.0)
        probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
    return probs


def sample(keys: jax.Array, probs: jax.Array) -> jax.Array:
    """One token per row from probs [B, ..., V] with per-row keys [B]; int32 [B, ...].

    Inverse-CDF sampling: one uniform draw per position (a Gumbel draw per vocabulary entry
    costs ~V times the random bits). Only tokens of positive probability can be drawn.
    """
    cdf = jnp.cumsum(probs, axis=-1)  # [B, ..., V]
    u = uniform(keys, probs.shape[1:-1]) * cdf[..., -1]  # [B, ...]
    positive = probs > 0
    candidates = (cdf > u[..., None]) & positive  # [B, ..., V]
    first = jnp.argmax(candidates, axis=-1)
    last = probs.shape[-1] - 1 - jnp.argmax(jnp.flip(positive, axis=-1), axis=-1)
    return jnp.where(jnp.any(candidates, axis=-1), first, last).astype(jnp.int32)


def uniform(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-row uniform draws [B, *shape] in [0, 1) from keys [B]."""
    return jax.vmap(lambda key: jax.random.uniform(key, shape))(keys)


def split_keys(keys: jax.Array, num: int) -> jax.Array:
    """Splits per-row keys [B] into [num, B]."""
    return jnp.moveaxis(jax.vmap(lambda key: jax.random.split(key, num))(keys), 1, 0)
