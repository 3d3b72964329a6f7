"""Drafters: what proposes the next call's draft tree.

A drafter fills `DecodeState.drafts` for the method's static `DraftTree`: a token per node,
which nodes are valid, and (for sampled drafts) the draft distribution of each depth that the
verifier needs. It has two hooks around every model call of the loop (`loop.model_call`):
`before_call` (e.g. run a draft model, copy n-grams from the context) and `after_call` (e.g.
read the lookahead outputs, roll a draft model's cache to the accepted length), and may carry
its own state in `DecodeState.drafter_state`. `LookaheadDrafter` drafts from the model's own
lookahead outputs (PaSS).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from pass_jax import sampling
from pass_jax.decode import adaptive
from pass_jax.decode.tree import CallLayout, DraftTree
from pass_jax.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from pass_jax.decode.loop import CallResult, DecodeState


@struct.dataclass
class Drafts:
    """The draft tree one call verifies, per row."""

    tokens: jax.Array  # [B, N+1] int32: node tokens (column 0, the root, unused)
    valid: jax.Array  # [B, N+1] bool, prefix-closed; column 0 (the root) always True
    probs: jax.Array | None  # [B, D, V] float32: q of each depth; None where not needed

    @classmethod
    def none(cls, tree: DraftTree, batch: int, vocab: int, with_probs: bool) -> Drafts:
        """No drafts: every row's next call is draftless."""
        size = tree.num_nodes + 1
        return cls(
            tokens=jnp.zeros((batch, size), jnp.int32),
            valid=jnp.zeros((batch, size), jnp.bool_).at[:, 0].set(True),
            probs=jnp.zeros((batch, tree.depth, vocab), jnp.float32) if with_probs else None,
        )


class Drafter(Protocol):
    """Proposes draft trees around each model call (hashable: part of the compiled program)."""

    def needs_probs(self, sampler: Sampler) -> bool:
        """Whether `Drafts.probs` is carried (verification needs `q`)."""

    def init_state(self, batch: int) -> Any:
        """The drafter's own loop state (a pytree; None for none)."""

    def before_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState,
    ) -> DecodeState:  # fmt: skip
        """Before a model call on `layout`: may set `state.drafts` for it to verify."""

    def after_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState, result: CallResult,
    ) -> DecodeState:  # fmt: skip
        """After the call verified and committed: drafts for the next call, if it can. It may
        replace `state.pending` of rows that accepted every draft with a token distributed as
        the bonus token (PEARL verifies a draft of its own there)."""


@dataclasses.dataclass(frozen=True)
class LookaheadDrafter:
    """Drafts from lookahead outputs: the output at slot `j` is the draft distribution `q_j` of
    depth `j`; candidates of depth `j` are taken from it by `rule` ("sampled": i.i.d. samples;
    "distinct": samples without replacement; "argmax": the top-k of the logits). With
    `min_confidence > 0`, a window stops before the first depth whose draft is unsure
    (`adaptive.confident_depths`)."""

    tree: DraftTree
    rule: str
    min_confidence: float = 0.0

    def needs_probs(self, sampler: Sampler) -> bool:
        """Whether verification needs `q` (sampled drafts under sampling)."""
        return not sampler.greedy and self.rule != "argmax"

    def init_state(self, batch: int) -> None:
        return None

    def before_call(self, layout, keys, sampler, params, state: DecodeState) -> DecodeState:
        return state

    def after_call(
        self, layout: CallLayout, keys: jax.Array, sampler: Sampler, params: SamplingParams,
        state: DecodeState, result: CallResult,
    ) -> DecodeState:  # fmt: skip
        """Drafts from the lookahead block after the last accepted node; a call without
        lookahead blocks consumes the drafts (the next call is draftless until one drafts)."""
        if layout.attach:
            logits, has_drafts = layout.lookahead_logits(result.logits, result.valid, result.last)
            return state.replace(drafts=self.propose(keys, sampler, params, logits, has_drafts))
        if layout.tree.num_nodes:
            valid = state.drafts.valid.at[:, 1:].set(False)
            return state.replace(drafts=state.drafts.replace(valid=valid))
        return state

    def propose(
        self,
        keys: jax.Array,  # [B]
        sampler: Sampler,
        params: SamplingParams,
        logits: jax.Array,  # [B, L, V]: the lookahead outputs, L >= the tree's depth
        has_drafts: jax.Array,  # [B] bool: rows whose lookahead outputs are valid drafts
    ) -> Drafts:
        depth, k = self.tree.depth, self.tree.num_candidates
        logits = logits[:, :depth]  # [B, D, V]
        probs, usable = None, jnp.ones((*logits.shape[:2], k), jnp.bool_)
        if sampler.greedy or self.rule == "argmax":
            if k == 1:
                candidates = sampling.argmax(logits)[..., None]  # [B, D, 1]
            else:
                candidates = jax.lax.top_k(logits, k)[1].astype(jnp.int32)  # [B, D, K]
        else:
            probs = sampler.probabilities(logits, params)  # [B, D, V]
            if self.rule == "sampled" or k == 1:
                repeated = jnp.broadcast_to(
                    probs[:, :, None], (*probs.shape[:2], k, probs.shape[-1])
                )
                candidates = sampling.sample(keys, repeated)  # [B, D, K]
            else:
                candidates, usable = _without_replacement(keys, probs, k)
        arrays = self.tree.arrays
        depth_index = jnp.asarray(jnp.maximum(arrays.depth - 1, 0))
        rank_index = jnp.asarray(arrays.rank)
        tokens = candidates[:, depth_index, rank_index]  # [B, N+1]
        node_ok = usable[:, depth_index, rank_index].at[:, 0].set(True)  # [B, N+1]
        # A node is valid if it and its ancestors are (a removed candidate cuts its subtree).
        broken = jnp.einsum(
            "bj,ij->bi", (~node_ok).astype(jnp.int32), jnp.asarray(arrays.ancestors, jnp.int32)
        )
        valid = (broken == 0) & (has_drafts[:, None] | (jnp.arange(tokens.shape[1]) == 0))
        if self.min_confidence:
            confident = adaptive.confident_depths(logits, self.min_confidence)  # [B, D]
            valid &= jnp.pad(confident, ((0, 0), (1, 0)), constant_values=True)[
                :, jnp.asarray(arrays.depth)
            ]
        return Drafts(tokens=tokens.astype(jnp.int32), valid=valid, probs=probs)


def _without_replacement(keys: jax.Array, probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`k` draws without replacement from each probs [B, D, V]: tokens [B, D, K] and whether
    each draw had mass left [B, D, K] (fewer than `k` tokens of positive probability)."""
    draws, usable = [], []
    for step_keys in sampling.split_keys(keys, k):
        mass = jnp.sum(probs, axis=-1)  # [B, D]
        token = sampling.sample(step_keys, probs)
        draws.append(token)
        usable.append(mass > 1e-12)
        probs = probs.at[
            jnp.arange(probs.shape[0])[:, None], jnp.arange(probs.shape[1]), token
        ].set(0.0)
    return jnp.stack(draws, -1), jnp.stack(usable, -1)
