"""Prompt lookup: drafts copied from the row's own context, matched on device inside the loop.

A row's context is its prompt, then its new tokens (the last one is the pending token). The
drafts are the tokens that followed the most recent earlier occurrence of the context's last `n`
tokens, for the longest `n` in `[ngram_min, ngram_max]` that occurs; a copy that runs into the
end of the context repeats its period (`a b a b` drafts `a b a b ...`). Each draft is a fixed
token, verified as a one-hot proposal, so any model can use it and the output stays exact.

`PromptLookupDrafter` is the drafter of `method="prompt_lookup"` and, wrapped around another
drafter (`inner`), the backing of the lookahead methods: the main chain's slots that `inner` left
without a draft (after a rejection, or past a confident prefix) get the n-gram continuation of
the context followed by the drafts `inner` kept.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from pass_jax.decode.tree import CallLayout, DraftTree
from pass_jax.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from pass_jax.decode.drafting import Drafter
    from pass_jax.decode.loop import CallResult, DecodeState

DEFAULT_NGRAM = (3, 1)  # the longest and shortest n-gram matched
DEFAULT_DRAFTS = 4  # drafts per window of method="prompt_lookup"


def row_context(
    prompt: jax.Array,  # [B, P] int32, right-padded
    prompt_lengths: jax.Array,  # [B] int32
    tokens: jax.Array,  # [B, N] int32: new tokens
    num_new: jax.Array,  # [B] int32
    room: int,
) -> tuple[jax.Array, jax.Array]:
    """Each row's prompt then its new tokens, [B, P+N+room] (past a row's length: anything),
    and each row's length [B]."""
    width, num_prompt = prompt.shape[1] + tokens.shape[1] + room, prompt.shape[1]
    index = jnp.arange(width)[None, :]  # [1, C]
    new_index = jnp.clip(index - prompt_lengths[:, None], 0, tokens.shape[1] - 1)
    from_new = jnp.take_along_axis(tokens, new_index, axis=1)  # [B, C]
    from_prompt = jnp.pad(prompt, ((0, 0), (0, width - num_prompt)))
    context = jnp.where(index < prompt_lengths[:, None], from_prompt, from_new)
    return context, prompt_lengths + num_new


def ngram_match(
    context: jax.Array,  # [B, C] int32
    length: jax.Array,  # [B] int32: a row's tokens are context[b, :length[b]]
    num_drafts: int,
    ngram_max: int,
    ngram_min: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """The drafts [B, num_drafts] that continue each row's last `n` tokens as their most recent
    earlier occurrence did (the longest `n` in `[ngram_min, ngram_max]` with one), and whether a
    row found one [B]. Draft `i` copies `context[s + i % (length - s)]`, `s` where the occurrence's
    continuation starts: past the row's end, the copy repeats its period."""
    batch, width = context.shape
    index = jnp.arange(width)  # [C]: s, where a continuation starts
    start = jnp.full((batch,), -1, jnp.int32)
    for n in range(ngram_max, ngram_min - 1, -1):
        last = jnp.clip(length[:, None] - n + jnp.arange(n), 0, width - 1)
        suffix = jnp.take_along_axis(context, last, axis=1)  # [B, n]
        shifted = jnp.pad(context, ((0, 0), (n, 0)))  # shifted[:, k + s] = context[:, s - n + k]
        match = (index >= n) & (index < length[:, None])  # [B, C]: an earlier occurrence
        for k in range(n):
            match &= shifted[:, k : k + width] == suffix[:, k : k + 1]
        latest = jnp.max(jnp.where(match, index, -1), axis=1).astype(jnp.int32)
        start = jnp.where(start < 0, latest, start)
    found = start >= 0
    period = length - start  # [B] >= 1
    source = start[:, None] + jnp.arange(num_drafts) % period[:, None]  # [B, num_drafts]
    drafts = jnp.take_along_axis(context, jnp.clip(source, 0, width - 1), axis=1)
    return drafts, found


def main_chain(tree: DraftTree) -> np.ndarray:
    """Node indices of the tree's rank-0 path `(0,), (0, 0), ...`, by depth."""
    nodes = []
    while (0,) * (len(nodes) + 1) in tree.paths:
        nodes.append(tree.paths.index((0,) * (len(nodes) + 1)) + 1)
    return np.asarray(nodes, np.int32)


def one_hot_rows(probs: jax.Array, fixed: jax.Array, tokens: jax.Array) -> jax.Array:
    """Draft distributions probs [B, D, V] with a one-hot row on tokens [B, D] at the depths
    whose draft is a fixed token, fixed [B, D]: speculative sampling's `min(1, p/q)` and
    `norm(max(0, p - q))` then become the one-hot rule (accept with `p(d)`; remove `d`)."""
    one_hot = jax.nn.one_hot(tokens, probs.shape[-1], dtype=probs.dtype)
    return jnp.where(fixed[..., None], one_hot, probs)


@dataclasses.dataclass(frozen=True)
class PromptLookupDrafter:
    """n-gram drafts on the main chain before each verifying call: every slot (no `inner`), or
    the slots that `inner` left without a draft (backing). A row is backed where no node deeper
    than its kept main-chain prefix is valid, so a depth's proposal is either `inner`'s `q` or
    one-hot, never both; one-hot proposals go into `Drafts.probs` where `q` is carried."""

    ngram_max: int
    ngram_min: int = 1
    inner: Drafter | None = None

    def needs_probs(self, sampler: Sampler) -> bool:
        return self.inner is not None and self.inner.needs_probs(sampler)

    def init_state(self, batch: int) -> Any:
        return None if self.inner is None else self.inner.init_state(batch)

    def before_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState,
    ) -> DecodeState:  # fmt: skip
        if self.inner is not None:
            state = self.inner.before_call(layout, keys, sampler, params, state)
        tree = layout.tree
        nodes = main_chain(tree)
        if not nodes.size:
            return state
        drafts, size = state.drafts, len(nodes)
        valid = drafts.valid if self.inner is not None else drafts.valid.at[:, 1:].set(False)
        kept_valid, kept_tokens = valid[:, nodes], drafts.tokens[:, nodes]  # [B, M]
        kept = jnp.sum(kept_valid, axis=1)  # [B]: the main chain's valid prefix
        deeper = valid & (jnp.asarray(tree.arrays.depth) > kept[:, None])  # [B, N+1]
        context, length = row_context(
            state.prompt, state.prompt_lengths, state.tokens, state.num_new, size
        )
        rows, offsets = jnp.arange(context.shape[0])[:, None], jnp.arange(size)
        at = jnp.where(kept_valid, length[:, None] + offsets, context.shape[1])
        context = context.at[rows, at].set(kept_tokens, mode="drop")  # the kept drafts
        copies, found = ngram_match(context, length + kept, size, self.ngram_max, self.ngram_min)
        backed = found & ~jnp.any(deeper, axis=1)  # [B]
        new = backed[:, None] & (offsets >= kept[:, None])  # [B, M]: depths filled by copies
        copy_index = jnp.clip(offsets - kept[:, None], 0, size - 1)
        copied = jnp.take_along_axis(copies, copy_index, axis=1)  # [B, M]
        tokens = drafts.tokens.at[:, nodes].set(jnp.where(new, copied, kept_tokens))
        drafts = drafts.replace(tokens=tokens, valid=valid.at[:, nodes].set(kept_valid | new))
        if drafts.probs is not None:
            probs = drafts.probs.at[:, :size].set(one_hot_rows(drafts.probs[:, :size], new, copied))
            drafts = drafts.replace(probs=probs)
        return state.replace(drafts=drafts)

    def after_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState, result: CallResult,
    ) -> DecodeState:  # fmt: skip
        if self.inner is None:  # the next call copies afresh
            return state
        return self.inner.after_call(layout, keys, sampler, params, state, result)
