"""The jitted decoding programs: prefill, and one `lax.while_loop` per decoding method.

Cache convention (ALGORITHMS.md): a row with committed tokens `t_0 .. t_{n-1}` holds the keys and
values of `t_0 .. t_{n-2}`; `t_{n-1}` is *pending* (sampled, not yet written). Prefill therefore
commits all prompt tokens but the last, which becomes the first pending token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pass_jax.decode import verify
from pass_jax.kv_cache import KVCache
from pass_jax.model import Transformer
from pass_jax.sampling import Sampler, SamplingParams, split_keys


@struct.dataclass
class DecodeState:
    """Everything a decoding loop carries from one iteration to the next."""

    cache: KVCache
    pending: jax.Array  # [B] int32: sampled, KV not yet in the cache
    tokens: jax.Array  # [B, N] int32: new tokens, written left to right
    num_new: jax.Array  # [B] int32: new tokens so far
    done: jax.Array  # [B] bool: EOS produced or max_new tokens reached
    keys: jax.Array  # [B] PRNG keys, one stream per row
    row_calls: jax.Array  # [B] int32: model calls made while the row was active
    calls: jax.Array  # [] int32: model calls made
    reached: jax.Array  # [B, L] int32: how often draft position i was verified
    accepted: jax.Array  # [B, L] int32: how often draft position i was accepted
    max_new: jax.Array  # [] int32: the call's token limit per row (traced: free to change)
    eos_id: jax.Array  # [] int32: the call's EOS token, -1 for none (traced)

    @property
    def num_lookahead(self) -> int:
        """Drafts per PaSS iteration (0 for autoregressive decoding)."""
        return self.reached.shape[1]


def _emit(
    state: DecodeState, window: jax.Array, count: jax.Array, active: jax.Array
) -> DecodeState:
    """Appends the first `count[b]` tokens of window [B, W] to each active row.

    Stops a row at EOS (kept) or at max_new tokens; the appended tokens never exceed either.
    """
    width = window.shape[1]
    offsets = jnp.arange(width, dtype=jnp.int32)[None, :]  # [1, W]
    valid = (offsets < count[:, None]) & active[:, None]
    is_eos = valid & (window == state.eos_id)
    eos_cut = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, width)
    room = state.max_new - state.num_new
    n = jnp.where(active, jnp.minimum(jnp.minimum(count, eos_cut), room), 0)  # [B]
    keep = offsets < n[:, None]
    index = jnp.where(keep, state.num_new[:, None] + offsets, state.tokens.shape[1])
    rows = jnp.arange(window.shape[0])[:, None]
    tokens = state.tokens.at[rows, index].set(window, mode="drop")
    num_new = state.num_new + n
    finished = jnp.any(is_eos & keep, axis=1) | (num_new >= state.max_new)
    return state.replace(tokens=tokens, num_new=num_new, done=state.done | (active & finished))


def ar_step(
    model: Transformer, sampler: Sampler, sampling: SamplingParams, state: DecodeState
) -> DecodeState:
    """Autoregressive decoding: one call on the pending token, one new token."""
    active = ~state.done
    keys, sample_keys = split_keys(state.keys, 2)
    logits, cache = model(state.pending[:, None], cache=state.cache)  # [B, 1, V]
    next_token = sampler.choose(sample_keys, logits[:, 0], sampling)  # [B]
    state = state.replace(
        cache=cache.commit(active),
        keys=keys,
        pending=jnp.where(active, next_token, state.pending),
        row_calls=state.row_calls + active,
        calls=state.calls + 1,
    )
    return _emit(state, next_token[:, None], jnp.ones_like(state.num_new), active)


def pass_step(
    model: Transformer, sampler: Sampler, sampling: SamplingParams, state: DecodeState
) -> DecodeState:
    """One iteration of PaSS (the paper's Algorithm 1): a draft call, then a verify call."""
    batch, num_la = state.pending.shape[0], state.num_lookahead
    active = ~state.done
    keys, token_keys, draft_keys, verify_keys = split_keys(state.keys, 4)

    # Draft call: [t_{n-1}, LA_1 .. LA_L] -> t_n (exact, kept) and drafts d_1 .. d_L.
    inputs = jnp.zeros((batch, num_la + 1), jnp.int32).at[:, 0].set(state.pending)
    slots = jnp.broadcast_to(jnp.arange(-1, num_la, dtype=jnp.int32), (batch, num_la + 1))
    logits, cache = model(inputs, lookahead_slots=slots, cache=state.cache)  # [B, L+1, V]
    next_token = sampler.choose(token_keys, logits[:, 0], sampling)  # [B]
    drafts = sampler.choose(draft_keys, logits[:, 1:], sampling)  # [B, L]
    draft_probs = None if sampler.greedy else sampler.probabilities(logits[:, 1:], sampling)
    state = state.replace(
        cache=cache.commit(active),
        keys=keys,
        pending=jnp.where(active, next_token, state.pending),
        row_calls=state.row_calls + active,
        calls=state.calls + 1,
    )
    state = _emit(state, next_token[:, None], jnp.ones_like(state.num_new), active)

    # Verify call: [t_n, d_1 .. d_L] -> accept a prefix of drafts, then a replacement or bonus.
    # It runs even when t_n finished every row (and then commits nothing): skipping it with a
    # `lax.cond` would make XLA copy the whole cache on every iteration.
    still = active & ~state.done
    inputs = jnp.concatenate([state.pending[:, None], drafts], axis=1)  # [B, L+1]
    logits, cache = model(inputs, cache=state.cache)  # [B, L+1, V]
    if sampler.greedy:
        accepted, last = verify.verify_greedy(logits, drafts)
    else:
        target_probs = sampler.probabilities(logits, sampling)  # [B, L+1, V]
        accepted, last = verify.verify_sampled(verify_keys, target_probs, draft_probs, drafts)
    position = jnp.arange(num_la, dtype=jnp.int32)[None, :]  # [1, L]
    window = jnp.concatenate([drafts, jnp.zeros_like(drafts[:, :1])], axis=1)  # [B, L+1]
    window = window.at[jnp.arange(batch), accepted].set(last)
    state = state.replace(
        cache=cache.commit(jnp.where(still, accepted + 1, 0)),
        pending=jnp.where(still, last, state.pending),
        row_calls=state.row_calls + still,
        calls=state.calls + 1,
        reached=state.reached + (still[:, None] & (position <= accepted[:, None])),
        accepted=state.accepted + (still[:, None] & (position < accepted[:, None])),
    )
    return _emit(state, window, accepted + 1, still)


def prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: jax.Array,  # [B, P] int32, right-padded prompts
    prompt_lengths: jax.Array,  # [B] int32, >= 1
    capacity: int,
) -> KVCache:
    """Writes each prompt into a fresh cache and commits all of it but the last token."""
    model = nnx.merge(graphdef, params)
    cache = KVCache.create(model.config, tokens.shape[0], capacity)
    _, cache = model.hidden_states(tokens, cache=cache)
    return cache.commit(prompt_lengths - 1)


def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    cache: KVCache,
    pending: jax.Array,  # [B] int32: each prompt's last token
    keys: jax.Array,  # [B] PRNG keys
    sampling: SamplingParams,
    max_new: jax.Array,  # [] int32
    eos_id: jax.Array,  # [] int32, -1 for none
    *,
    sampler: Sampler,
    num_lookahead: int,
    buffer_len: int,
) -> DecodeState:
    """Decodes in one `lax.while_loop` until every row is done: PaSS with `num_lookahead`
    drafts per iteration, autoregressive for 0."""
    model = nnx.merge(graphdef, params)
    batch = pending.shape[0]
    state = DecodeState(
        cache=cache,
        pending=pending,
        tokens=jnp.zeros((batch, buffer_len), jnp.int32),
        num_new=jnp.zeros((batch,), jnp.int32),
        done=jnp.zeros((batch,), jnp.bool_),
        keys=keys,
        row_calls=jnp.zeros((batch,), jnp.int32),
        calls=jnp.int32(0),
        reached=jnp.zeros((batch, num_lookahead), jnp.int32),
        accepted=jnp.zeros((batch, num_lookahead), jnp.int32),
        max_new=max_new,
        eos_id=eos_id,
    )
    step = functools.partial(pass_step if num_lookahead else ar_step, model, sampler, sampling)
    max_calls = 2 * buffer_len + 2  # every call makes progress; a guard, never reached

    def cond(state: DecodeState) -> jax.Array:
        return ~jnp.all(state.done) & (state.calls < max_calls)

    return jax.lax.while_loop(cond, step, state)
