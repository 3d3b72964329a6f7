"""Adaptive draft length: per row and per call, how many of the window's drafts are verified.

The call's shape stays that of the whole window; a shorter window only marks the deeper drafts
invalid (`Drafts.valid`), which is always lossless. Two rules (`ADAPTIVE_RULES`), each with a
probability threshold `t`:

- `"confidence"`: a window stops before the first draft whose draft distribution's largest
  probability (softmax of the draft logits, at temperature 1) is below `t`. A drafter that has
  draft logits applies it where it proposes (`confident_depths`).
- `"acceptance"`: a row verifies draft `i` while `prod_{k <= i} a_k >= t`, `a_k` the row's running
  acceptance at depth `k` so far (`(accepted + 1) / (verified + 1)`: a depth never verified counts
  as accepted, so the window grows back when drafts are accepted); always at least one draft.
  `AcceptanceWindow` wraps any drafter.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from pass_jax.decode.tree import CallLayout
from pass_jax.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from pass_jax.decode.drafting import Drafter
    from pass_jax.decode.loop import CallResult, DecodeState

ADAPTIVE_RULES = ("confidence", "acceptance")


def confident_depths(logits: jax.Array, threshold: float) -> jax.Array:
    """The depths before the first whose draft is unsure: logits [B, D, V] -> [B, D] bool."""
    logits = logits.astype(jnp.float32)
    top = 1.0 / jnp.sum(jnp.exp(logits - jnp.max(logits, -1, keepdims=True)), -1)  # [B, D]
    return jnp.cumprod(top >= threshold, axis=1).astype(jnp.bool_)


def acceptance_window(reached: jax.Array, accepted: jax.Array, threshold: float) -> jax.Array:
    """Drafts to verify per row [B] (>= 1) from the counts by depth so far, reached [B, D] and
    accepted [B, D] (`DecodeState`)."""
    rate = (accepted + 1.0) / (reached + 1.0)  # [B, D]
    chance = jnp.cumprod(rate, axis=1)  # decreasing: the chance that depths <= i are accepted
    return jnp.maximum(jnp.sum(chance >= threshold, axis=1), 1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class AcceptanceWindow:
    """`inner`'s drafts, cut per row to `acceptance_window` before each verifying call."""

    inner: Drafter
    threshold: float

    def needs_probs(self, sampler: Sampler) -> bool:
        return self.inner.needs_probs(sampler)

    def init_state(self, batch: int) -> Any:
        return self.inner.init_state(batch)

    def before_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState,
    ) -> DecodeState:  # fmt: skip
        state = self.inner.before_call(layout, keys, sampler, params, state)
        if not layout.tree.num_nodes:
            return state
        window = acceptance_window(state.reached, state.accepted, self.threshold)  # [B]
        depth = jnp.asarray(layout.tree.arrays.depth)  # [N+1]
        valid = state.drafts.valid & (depth <= window[:, None])
        return state.replace(drafts=state.drafts.replace(valid=valid))

    def after_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState, result: CallResult,
    ) -> DecodeState:  # fmt: skip
        return self.inner.after_call(layout, keys, sampler, params, state, result)
