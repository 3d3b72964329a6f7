"""The jitted decoding programs: prefill, and one `lax.while_loop` for every method.

Cache convention (ALGORITHMS.md): a row with committed tokens `t_0 .. t_{n-1}` holds the keys and
values of `t_0 .. t_{n-2}`; `t_{n-1}` is *pending* (sampled, not yet written). Prefill therefore
commits all prompt tokens but the last, which becomes the first pending token.

Every method is a sequence of `model_call`s (`DecodeMethod.layouts`): each feeds the pending
token, the draft tree and any lookahead blocks; verifies the tree; commits the accepted path;
appends the new tokens; and drafts the next tree from the lookahead outputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pass_jax.decode import verify
from pass_jax.decode.drafting import Drafts
from pass_jax.decode.methods import DecodeMethod
from pass_jax.decode.tree import CallLayout
from pass_jax.kv_cache import KVCache
from pass_jax.model import Transformer
from pass_jax.sampling import Sampler, SamplingParams, split_keys


@struct.dataclass
class DecodeState:
    """Everything a decoding loop carries from one iteration to the next."""

    cache: KVCache
    pending: jax.Array  # [B] int32: sampled, KV not yet in the cache
    drafts: Drafts  # the tree the next verifying call checks
    tokens: jax.Array  # [B, N] int32: new tokens, written left to right
    num_new: jax.Array  # [B] int32: new tokens so far
    done: jax.Array  # [B] bool: EOS produced or max_new tokens reached
    keys: jax.Array  # [B] PRNG keys, one stream per row
    row_calls: jax.Array  # [B] int32: model calls made while the row was active
    calls: jax.Array  # [] int32: model calls made
    reached: jax.Array  # [B, D] int32: how often a draft at depth i was verified
    accepted: jax.Array  # [B, D] int32: how often a draft at depth i was accepted
    max_new: jax.Array  # [] int32: the call's token limit per row (traced: free to change)
    eos_id: jax.Array  # [] int32: the call's EOS token, -1 for none (traced)
    prompt: jax.Array  # [B, P] int32, right-padded: a row's context is its prompt, then `tokens`
    prompt_lengths: jax.Array  # [B] int32
    drafter_state: Any  # whatever the method's drafter carries (None for lookahead drafting)
    draft_params: Any  # the draft model's weights (methods with one; None otherwise)
    draft_cache: KVCache | None  # the draft model's cache, under the same convention


@struct.dataclass
class CallResult:
    """What one model call verified, for the drafter to draft the next tree from."""

    logits: jax.Array  # [B, T, V]: every output of the call (lookahead blocks included)
    valid: jax.Array  # [B, N+1]: the tree nodes the call verified
    last: jax.Array  # [B]: the deepest accepted node
    accepted: jax.Array  # [B]: accepted drafts (the depth of `last`)
    active: jax.Array  # [B]: rows that were decoding during the call


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


def model_call(
    model: Transformer,
    method: DecodeMethod,
    layout: CallLayout,
    sampler: Sampler,
    params: SamplingParams,
    state: DecodeState,
) -> DecodeState:
    """One model call on `layout`: verify the tree, commit, emit, draft the next tree.

    A call runs even when every row is done (and then commits nothing): skipping it with a
    `lax.cond` would make XLA copy the whole cache on every iteration.
    """
    tree = layout.tree
    arrays, size = tree.arrays, tree.num_nodes + 1
    batch = state.pending.shape[0]
    active = ~state.done
    keys, verify_keys, draft_keys = split_keys(state.keys, 3)
    drafter = method.drafter
    state = drafter.before_call(layout, draft_keys, sampler, params, state)
    valid = state.drafts.valid[:, :size] if tree.num_nodes else jnp.ones((batch, 1), jnp.bool_)
    node_tokens = state.drafts.tokens[:, :size]
    tokens, slots, positions, mask = layout.inputs(
        state.pending, node_tokens, valid, state.cache.lengths
    )
    logits, cache = model(
        tokens,
        lookahead_slots=slots if layout.attach else None,
        positions=positions,
        block_mask=mask,
        cache=state.cache,
    )  # [B, T, V]
    node_logits = logits[:, :size]

    # Verify: the last accepted node and the next token.
    if sampler.greedy and tree.is_chain:
        last, next_token = verify.verify_greedy(node_logits, node_tokens[:, 1:], valid[:, 1:])
    elif sampler.greedy:
        last, next_token = verify.verify_tree_greedy(node_logits, node_tokens, valid, arrays)
    else:
        p = sampler.probabilities(node_logits, params)  # [B, N+1, V]
        probs = state.drafts.probs if tree.num_nodes else None
        q = None if probs is None else probs[:, : tree.depth]
        if tree.is_chain:
            drafts = node_tokens[:, 1:]
            last, next_token = verify.verify_sampled(verify_keys, p, q, drafts, valid[:, 1:])
        else:
            last, next_token = verify.verify_tree_sampled(
                verify_keys, p, q, node_tokens, valid, arrays, method.draft_rule
            )
    accepted = jnp.asarray(arrays.depth)[last]  # [B]
    path = jnp.asarray(arrays.path_nodes)[last]  # [B, D+1]: block offsets of the accepted path

    # Commit the accepted path (moved into place when a tree's path is not contiguous).
    if not tree.is_chain:
        cache = cache.gather_block(path)
    cache = cache.commit(jnp.where(active, accepted + 1, 0))

    # The new tokens: the accepted drafts, then the next token.
    window = jnp.take_along_axis(node_tokens, path, axis=1)[:, 1:]  # [B, D]
    window = jnp.pad(window, ((0, 0), (0, 1)))  # [B, D+1]: the next token goes after them
    state = state.replace(
        cache=cache,
        keys=keys,
        pending=jnp.where(active, next_token, state.pending),
        row_calls=state.row_calls + active,
        calls=state.calls + 1,
    )
    if tree.num_nodes:
        depth = jnp.arange(tree.depth, dtype=jnp.int32)[None, :]  # [1, D]
        child_valid = valid[:, jnp.maximum(jnp.asarray(arrays.children[:, 0]), 0)]
        has_children = child_valid & (jnp.asarray(arrays.children[:, 0]) >= 0)  # [B, N+1]
        walked = jnp.take_along_axis(has_children, path[:, :-1], axis=1)  # [B, D]
        reached = active[:, None] & walked & (depth <= accepted[:, None])
        state = state.replace(
            reached=state.reached.at[:, : tree.depth].add(reached),
            accepted=state.accepted.at[:, : tree.depth].add(reached & (depth < accepted[:, None])),
        )
    result = CallResult(logits=logits, valid=valid, last=last, accepted=accepted, active=active)
    state = drafter.after_call(layout, draft_keys, sampler, params, state, result)
    # The drafter may have replaced the next token (PEARL verifies a draft of its own there).
    window = window.at[jnp.arange(batch), accepted].set(state.pending)
    return _emit(state, window, accepted + 1, active)


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


def initial_state(
    model: Transformer,
    method: DecodeMethod,
    sampler: Sampler,
    buffer_len: int,
    cache: KVCache,
    pending: jax.Array,
    keys: jax.Array,
    max_new: jax.Array,
    eos_id: jax.Array,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    draft_params: nnx.State | None = None,
    draft_cache: KVCache | None = None,
) -> DecodeState:
    """The state a decoding loop starts from (the arguments as `decode`'s): nothing drafted,
    nothing emitted."""
    batch, depth = pending.shape[0], method.tree.depth
    with_probs = method.drafter.needs_probs(sampler) and depth > 0
    return DecodeState(
        cache=cache,
        pending=pending,
        drafts=Drafts.none(method.tree, batch, model.config.vocab_size, with_probs),
        tokens=jnp.zeros((batch, buffer_len), jnp.int32),
        num_new=jnp.zeros((batch,), jnp.int32),
        done=jnp.zeros((batch,), jnp.bool_),
        keys=keys,
        row_calls=jnp.zeros((batch,), jnp.int32),
        calls=jnp.int32(0),
        reached=jnp.zeros((batch, depth), jnp.int32),
        accepted=jnp.zeros((batch, depth), jnp.int32),
        max_new=max_new,
        eos_id=eos_id,
        prompt=prompt,
        prompt_lengths=prompt_lengths,
        drafter_state=method.drafter.init_state(batch),
        draft_params=draft_params,
        draft_cache=draft_cache,
    )


def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    cache: KVCache,
    pending: jax.Array,  # [B] int32: each prompt's last token
    keys: jax.Array,  # [B] PRNG keys
    sampling: SamplingParams,
    max_new: jax.Array,  # [] int32
    eos_id: jax.Array,  # [] int32, -1 for none
    prompt: jax.Array,  # [B, P] int32, right-padded prompts
    prompt_lengths: jax.Array,  # [B] int32
    draft_params: nnx.State | None = None,  # the draft model's weights (DRAFT_MODEL_METHODS)
    draft_cache: KVCache | None = None,  # its prefilled cache
    *,
    method: DecodeMethod,
    sampler: Sampler,
    buffer_len: int,
) -> DecodeState:
    """Decodes in one `lax.while_loop` until every row is done, one iteration being the calls
    of `method.layouts`."""
    model = nnx.merge(graphdef, params)
    state = initial_state(
        model, method, sampler, buffer_len, cache, pending, keys, max_new, eos_id, prompt,
        prompt_lengths, draft_params, draft_cache,
    )  # fmt: skip
    layouts = method.layouts
    max_calls = len(layouts) * (buffer_len + 1)  # every iteration makes progress; a guard

    def step(state: DecodeState) -> DecodeState:
        for layout in layouts:
            state = model_call(model, method, layout, sampler, sampling, state)
        return state

    def cond(state: DecodeState) -> jax.Array:
        return ~jnp.all(state.done) & (state.calls < max_calls)

    return jax.lax.while_loop(cond, step, state)
