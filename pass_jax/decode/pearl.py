"""PEARL (Liu et al. 2024, seed 001): parallel speculative decoding with adaptive draft length,
with the draft model of `draft_model` (`method="pearl"`).

Each iteration the target makes one call and the draft model drafts one window of `gamma`
tokens `w_1 .. w_gamma`; neither needs the other's output of that iteration, so on two devices
they run at the same time (here, in one program, one after the other). A row is in one of two
modes:

- *pre-verify* (no drafts pending): the call is on the pending token alone, and the window is
  drafted from it. The call's output verifies `w_1`: the target verifies the first draft while
  the draft model drafts the rest.
- *post-verify* (the last window's `w_1` was accepted and is the pending token): the call feeds
  it and that window's other drafts `w_2 .. w_gamma`, while the draft model drafts the next
  window from `w_gamma` as if all were accepted. The call verifies `w_2 .. w_gamma`, then the
  new `w_1` against its last output, in place of a bonus token.

A row whose drafts are all accepted, the new `w_1` included, stays in post-verify: windows chain
for as long as drafts are accepted, so the draft length adapts, `k * gamma` drafts without a
break; any rejection drops the window drafted meanwhile and returns the row to pre-verify, where
a rejected first draft costs one draft's verification. Verification is the usual speculative
sampling (`verify.verify_sampled`; greedy: argmax matching), so PEARL is lossless.

In the loop each call is a chain of `gamma - 1` drafts (`CallLayout`). The window is drafted
after the call (`after_call`) from the token fixed before it, so its inputs do not depend on the
call; the drafter then verifies the new `w_1`. `acceptance_by_position` counts a call's drafts
in the order they are verified: `w_1` first in pre-verify; `w_2 .. w_gamma`, then the new
`w_1`, in post-verify.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pass_jax import sampling
from pass_jax.decode import verify
from pass_jax.decode.draft_model import draft_tokens
from pass_jax.decode.tree import CallLayout
from pass_jax.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from pass_jax.decode.generation import DecodeStats
    from pass_jax.decode.loop import CallResult, DecodeState


@struct.dataclass
class PearlState:
    """What the draft model drafts from, fixed before the target call."""

    frontier: jax.Array  # [B] int32: the last token of the row's drafted sequence (not fed)
    post: jax.Array  # [B] bool: post-verify (the call feeds `gamma - 1` drafts)


@dataclasses.dataclass(frozen=True)
class PearlDrafter:
    """PEARL's drafter: the draft model (`graphdef`; weights `DecodeState.draft_params`) drafts
    a window of `num_drafts` tokens per call; the call's drafts are the last window's."""

    graphdef: nnx.GraphDef
    num_drafts: int

    def needs_probs(self, sampler: Sampler) -> bool:
        return not sampler.greedy

    def init_state(self, batch: int) -> PearlState:
        return PearlState(
            frontier=jnp.zeros((batch,), jnp.int32), post=jnp.zeros((batch,), jnp.bool_)
        )

    def before_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState,
    ) -> DecodeState:  # fmt: skip
        """Fixes the mode and the token to draft from: the pending one, or the last window's
        last draft."""
        if self.num_drafts == 1:
            post = jnp.zeros_like(state.pending, jnp.bool_)
            frontier = state.pending
        else:
            post = state.drafts.valid[:, 1]
            frontier = jnp.where(post, state.drafts.tokens[:, self.num_drafts - 1], state.pending)
        return state.replace(drafter_state=PearlState(frontier=frontier, post=post))

    def after_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState, result: CallResult,
    ) -> DecodeState:  # fmt: skip
        """Drafts the window, verifies its first draft where the call accepted every draft it
        fed, and keeps the rest as the next call's drafts if that one was accepted."""
        gamma, mode = self.num_drafts, state.drafter_state
        rows = jnp.arange(state.pending.shape[0])
        draft_keys, check_keys = sampling.split_keys(keys, 2)
        model = nnx.merge(self.graphdef, state.draft_params)
        feed = mode.frontier[:, None]  # [B, 1]
        cache, window, q = draft_tokens(
            model, state.draft_cache, feed, jnp.ones_like(mode.frontier), gamma, draft_keys,
            sampler, params,
        )  # fmt: skip
        fed = jnp.where(mode.post, gamma - 1, 0)  # [B]: drafts the call fed
        verified = result.active & (result.accepted == fed)  # w_1 sits at the bonus position
        first = window[:, 0]
        if sampler.greedy:  # the next token is the argmax there
            accepted, pending = verified & (state.pending == first), state.pending
        else:
            p = sampler.probabilities(result.logits[rows, fed], params)  # [B, V]
            # An accepted w_1 is the next token: the distribution after it is one-hot on it.
            p = jnp.stack([p, jax.nn.one_hot(first, p.shape[-1], dtype=p.dtype)], axis=1)
            count, token = verify.verify_sampled(
                check_keys, p, q[:, :1], first[:, None], verified[:, None]
            )
            accepted, pending = count == 1, jnp.where(verified, token, state.pending)
        post = jnp.where(result.active, accepted, mode.post)
        drafts = state.drafts
        drafts = drafts.replace(
            tokens=drafts.tokens.at[:, 1:gamma].set(window[:, 1:]),
            valid=drafts.valid.at[:, 1:gamma].set(post[:, None]),
            probs=None if q is None else drafts.probs.at[:, : gamma - 1].set(q[:, 1:]),
        )
        # The draft cache holds the committed tokens, then w_1 .. w_{gamma-1} in post-verify.
        lengths = state.cache.lengths + jnp.where(post, gamma - 1, 0)
        return state.replace(
            pending=pending,
            drafts=drafts,
            draft_cache=cache.replace(lengths=lengths),
            reached=state.reached.at[rows, fed].add(verified.astype(jnp.int32)),
            accepted=state.accepted.at[rows, fed].add(accepted.astype(jnp.int32)),
        )


def projected_parallel_s(stats: DecodeStats, draft_call_s: float, target_call_s: float) -> float:
    """A projection, not a measurement: PEARL's decode time had each iteration's window of
    draft calls (`draft_call_s` each) and its target call (`target_call_s`) run at the same
    time on two devices: the measured time less the shorter of the two per iteration."""
    iterations = stats.forward_passes
    gamma = stats.draft_forward_passes // max(iterations, 1)
    return max(stats.decode_s - iterations * min(gamma * draft_call_s, target_call_s), 0.0)
