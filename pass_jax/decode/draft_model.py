"""Draft-model speculative sampling (`method="sps"`; Leviathan et al., Chen et al.; the PaSS
paper's Algorithm 2): a second, smaller model with the target's vocabulary drafts `gamma` tokens
autoregressively before each target call, which verifies them as one chain.

The draft model has its own KV cache (`DecodeState.draft_cache`) with per-row lengths, under
the target's convention: it holds a prefix of the row's tokens, and the rest (the pending token,
and the token before it when the draft model never saw that one) is fed at the start of the next
drafting round. Drafting writes its keys and values without committing them; after the target
call each row's draft cache is cut to what the target accepted (rollback is setting lengths).
When every draft is accepted, the last draft's keys and values were never written (it was never
fed to the draft model): the next round feeds it with the pending (bonus) token.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from pass_jax import sampling
from pass_jax.decode.drafting import Drafts
from pass_jax.decode.tree import CallLayout
from pass_jax.kv_cache import KVCache
from pass_jax.model import Transformer
from pass_jax.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from pass_jax.decode.loop import CallResult, DecodeState

DEFAULT_GAMMA = 4  # drafts per window of the draft-model methods


def draft_tokens(
    model: Transformer,
    cache: KVCache,
    feed: jax.Array,  # [B, F] int32: each row's first `count` tokens are fed first
    count: jax.Array,  # [B] int32 in [1, F]
    num_drafts: int,
    keys: jax.Array,  # [B]
    sampler: Sampler,
    params: SamplingParams,
) -> tuple[KVCache, jax.Array, jax.Array | None]:
    """Feeds each row's `count` tokens, then drafts `num_drafts` tokens one at a time (argmax if
    greedy, else sampled from the processed draft distribution `q`).

    Returns the cache with everything fed written but not committed (the lengths unchanged),
    the drafts [B, G] and `q` [B, G, V] (None if greedy). The last draft is not fed.
    """
    batch = feed.shape[0]
    step_keys = sampling.split_keys(keys, num_drafts)  # [G, B]

    def choose(step: int | jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        if sampler.greedy:
            return sampling.argmax(logits), None
        q = sampler.probabilities(logits, params)  # [B, V]
        return sampling.sample(step_keys[step], q), q

    logits, written = model(feed, cache=cache)  # [B, F, V]
    token, q = choose(0, logits[jnp.arange(batch), count - 1])
    tokens = jnp.zeros((batch, num_drafts), jnp.int32).at[:, 0].set(token)  # [B, G]
    probs = None if q is None else jnp.zeros((*tokens.shape, q.shape[-1])).at[:, 0].set(q)

    def body(step, carry):
        written, tokens, probs = carry
        logits, written = model(tokens[:, step - 1, None], cache=written)  # [B, 1, V]
        token, q = choose(step, logits[:, 0])
        probs = None if q is None else probs.at[:, step].set(q)
        return written.commit(jnp.ones_like(count)), tokens.at[:, step].set(token), probs

    carry = (written.commit(count), tokens, probs)
    written, tokens, probs = jax.lax.fori_loop(1, num_drafts, body, carry)
    return written.replace(lengths=cache.lengths), tokens, probs


@dataclasses.dataclass(frozen=True)
class DraftModelDrafter:
    """SpS: before each call the draft model (`graphdef`; its weights `DecodeState.draft_params`)
    drafts a chain of `num_drafts` tokens; after it, the draft cache keeps what was accepted.
    Its state is the token before the pending one [B] (fed again after a fully accepted
    window)."""

    graphdef: nnx.GraphDef
    num_drafts: int

    def needs_probs(self, sampler: Sampler) -> bool:
        return not sampler.greedy

    def init_state(self, batch: int) -> jax.Array:
        return jnp.zeros((batch,), jnp.int32)

    def before_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState,
    ) -> DecodeState:  # fmt: skip
        """Drafts the chain from the row's unfed tokens: the pending one, after the one before it
        where the draft cache lacks that (`count` 2)."""
        count = state.cache.lengths + 1 - state.draft_cache.lengths  # [B]: 1 or 2
        pending, before = state.pending, state.drafter_state
        feed = jnp.stack([jnp.where(count == 2, before, pending), pending], axis=1)  # [B, 2]
        model = nnx.merge(self.graphdef, state.draft_params)
        cache, tokens, probs = draft_tokens(
            model, state.draft_cache, feed, count, self.num_drafts, keys, sampler, params
        )
        drafts = Drafts(
            tokens=jnp.pad(tokens, ((0, 0), (1, 0))),
            valid=jnp.ones((tokens.shape[0], self.num_drafts + 1), jnp.bool_),
            probs=probs,
        )
        return state.replace(drafts=drafts, draft_cache=cache)

    def after_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState, result: CallResult,
    ) -> DecodeState:  # fmt: skip
        """Rolls the draft cache to the target's committed tokens, less the last draft when the
        whole window was accepted (never fed to the draft model: fed next round)."""
        full = result.accepted == self.num_drafts  # [B]
        lengths = state.cache.lengths - full
        last_draft = state.drafts.tokens[:, self.num_drafts]
        return state.replace(
            draft_cache=state.draft_cache.replace(
                lengths=jnp.where(result.active, lengths, state.draft_cache.lengths)
            ),
            drafter_state=jnp.where(result.active & full, last_draft, state.drafter_state),
        )
