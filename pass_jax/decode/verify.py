"""Lossless verification of drafted tokens (speculative sampling), in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pass_jax import sampling


def verify_greedy(target_logits: jax.Array, drafts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Greedy verification by argmax matching.

    target_logits [B, L+1, V]: the target at each draft's slot, then after the last draft.
    drafts [B, L]. Returns (accepted [B], next_token [B]): the number of leading drafts equal to
    the target's argmax, and the argmax at the first mismatch (or after the last draft).
    """
    target = sampling.argmax(target_logits)  # [B, L+1]
    accepted = _leading_true(drafts == target[:, :-1])
    next_token = jnp.take_along_axis(target, accepted[:, None], axis=1)[:, 0]
    return accepted, next_token


def verify_sampled(
    keys: jax.Array,  # [B]
    p: jax.Array,  # [B, L+1, V] target probabilities
    q: jax.Array,  # [B, L, V] draft probabilities
    drafts: jax.Array,  # [B, L] drafts sampled from q
) -> tuple[jax.Array, jax.Array]:
    """Speculative sampling: accept `d_i` with probability `min(1, p_i(d_i) / q_i(d_i))`.

    On the first rejection, the next token comes from `norm(max(0, p_i - q_i))`; when every draft
    is accepted, from `p_{L+1}` (the bonus token). Returns (accepted [B], next_token [B]).
    """
    num_drafts = drafts.shape[1]
    u_keys, r_keys = sampling.split_keys(keys, 2)
    p_draft = jnp.take_along_axis(p[:, :num_drafts], drafts[..., None], axis=-1)[..., 0]  # [B, L]
    q_draft = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]  # [B, L]
    u = sampling.uniform(u_keys, (num_drafts,))  # [B, L]
    accepted = _leading_true(u * q_draft < p_draft)  # u < p/q without dividing
    p_next = jnp.take_along_axis(p, accepted[:, None, None], axis=1)[:, 0]  # [B, V]
    q_pad = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)  # [B, L+1, V]
    q_next = jnp.take_along_axis(q_pad, accepted[:, None, None], axis=1)[:, 0]  # [B, V]
    residual = jnp.maximum(p_next - q_next, 0.0)
    mass = jnp.sum(residual, axis=-1, keepdims=True)
    residual = jnp.where(mass > 0, residual / jnp.maximum(mass, 1e-30), p_next)
    return accepted, sampling.sample(r_keys, residual)


def _leading_true(flags: jax.Array) -> jax.Array:
    """Length of the leading run of True along the last axis: [B, L] -> [B] int32."""
    return jnp.sum(jnp.cumprod(flags.astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)
