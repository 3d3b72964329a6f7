"""Drafters: what proposes the next call's draft tree.

A drafter turns what a model call produced into `Drafts` for the method's static `DraftTree`:
a token per node, which nodes are valid, and (for sampled drafts) the draft distribution of each
depth that the verifier needs. `LookaheadDrafter` drafts from the model's own lookahead outputs
(PaSS); other drafters (an n-gram copy of the context, a draft model) plug in the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from pass_jax import sampling
from pass_jax.decode.tree import DraftTree
from pass_jax.sampling import Sampler, SamplingParams


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


@dataclasses.dataclass(frozen=True)
class LookaheadDrafter:
    """Drafts from lookahead outputs: the output at slot `j` is the draft distribution `q_j` of
    depth `j`; candidates of depth `j` are taken from it by `rule` ("sampled": i.i.d. samples;
    "distinct": samples without replacement; "argmax": the top-k of the logits)."""

    tree: DraftTree
    rule: str

    def needs_probs(self, sampler: Sampler) -> bool:
        """Whether verification needs `q` (sampled drafts under sampling)."""
        return not sampler.greedy and self.rule != "argmax"

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
