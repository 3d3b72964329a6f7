"""Lossless verification of drafted tokens (speculative sampling), in float32.

Chains (one draft per position) verify in one vectorised pass; trees (several candidates per
position) walk down from the root, trying each node's children in rank order. Every rule keeps
the output distributed exactly as the target's (docs/algorithms.md, "Verification").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pass_jax import sampling
from pass_jax.decode.tree import TreeArrays

# How drafts were proposed, which decides the acceptance rule (docs/algorithms.md):
# "sampled": drawn from q (candidates of a node with replacement); "distinct": candidates drawn
# from q without replacement; "argmax": deterministic (argmax / top-k of q), one-hot proposals.
DRAFT_RULES = ("sampled", "distinct", "argmax")


def verify_greedy(
    target_logits: jax.Array, drafts: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Greedy verification of a chain by argmax matching.

    target_logits [B, L+1, V]: the target at each draft's slot, then after the last draft.
    drafts [B, L]; valid [B, L] (prefix-closed: the drafts a row proposed). Returns (accepted [B],
    next_token [B]): the number of leading valid drafts equal to the target's argmax, and the
    argmax at the first mismatch (or after the last draft).
    """
    target = sampling.argmax(target_logits)  # [B, L+1]
    accepted = _leading_true(valid & (drafts == target[:, :-1]))
    next_token = jnp.take_along_axis(target, accepted[:, None], axis=1)[:, 0]
    return accepted, next_token


def verify_sampled(
    keys: jax.Array,  # [B]
    p: jax.Array,  # [B, L+1, V] target probabilities
    q: jax.Array | None,  # [B, L, V] draft probabilities; None: one-hot (deterministic drafts)
    drafts: jax.Array,  # [B, L] drafts sampled from q
    valid: jax.Array,  # [B, L] bool, prefix-closed
) -> tuple[jax.Array, jax.Array]:
    """Speculative sampling on a chain: accept `d_i` with probability `min(1, p_i(d_i) / q_i(d_i))`
    (`p_i(d_i)` for a one-hot `q`).

    On the first rejection, the next token comes from `norm(max(0, p_i - q_i))`; after the last
    valid draft, from `p` there (the bonus token). Returns (accepted [B], next_token [B]).
    """
    num_drafts = drafts.shape[1]
    u_keys, r_keys = sampling.split_keys(keys, 2)
    p_draft = jnp.take_along_axis(p[:, :num_drafts], drafts[..., None], axis=-1)[..., 0]  # [B, L]
    if q is None:
        q_draft = jnp.ones_like(p_draft)
    else:
        q_draft = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]  # [B, L]
    u = sampling.uniform(u_keys, (num_drafts,))  # [B, L]
    accepted = _leading_true(valid & (u * q_draft < p_draft))  # u < p/q without dividing
    p_next = jnp.take_along_axis(p, accepted[:, None, None], axis=1)[:, 0]  # [B, V]
    rejected = jnp.take_along_axis(
        jnp.pad(valid, ((0, 0), (0, 1))), accepted[:, None], axis=1
    )  # [B, 1]: the walk stopped at a valid draft, so the residual applies
    rejected_token = jnp.take_along_axis(
        jnp.pad(drafts, ((0, 0), (0, 1))), accepted[:, None], axis=1
    )[:, 0]
    if q is None:
        q_next = jax.nn.one_hot(rejected_token, p.shape[-1], dtype=p.dtype)
    else:
        q_pad = jnp.pad(q, ((0, 0), (0, 1), (0, 0)))
        q_next = jnp.take_along_axis(q_pad, accepted[:, None, None], axis=1)[:, 0]  # [B, V]
    residual = _residual(p_next, jnp.where(rejected, q_next, 0.0))
    return accepted, sampling.sample(r_keys, residual)


def verify_tree_greedy(
    logits: jax.Array,  # [B, N+1, V]: the target at the root and at every node
    tokens: jax.Array,  # [B, N+1] node tokens (column 0: the root, ignored)
    valid: jax.Array,  # [B, N+1] bool, prefix-closed
    tree: TreeArrays,
) -> tuple[jax.Array, jax.Array]:
    """Greedy verification of a tree: the deepest node whose every ancestor (itself included)
    equals its parent's argmax. Returns (last accepted node [B], next_token [B])."""
    target = sampling.argmax(logits)  # [B, N+1]
    parent_target = target[:, jnp.maximum(jnp.asarray(tree.parent), 0)]
    ok = (valid & (tokens == parent_target)).at[:, 0].set(True)
    broken = jnp.einsum(
        "bj,ij->bi", (~ok).astype(jnp.int32), jnp.asarray(tree.ancestors, jnp.int32)
    )  # [B, N+1]: ancestors (or self) that do not match
    size = tree.parent.shape[0]
    score = jnp.asarray(tree.depth) * size + (size - 1 - jnp.arange(size))  # deepest, then first
    last = jnp.argmax(jnp.where(broken == 0, score, -1), axis=1).astype(jnp.int32)
    return last, jnp.take_along_axis(target, last[:, None], axis=1)[:, 0]


def verify_tree_sampled(
    keys: jax.Array,  # [B]
    p: jax.Array,  # [B, N+1, V] target probabilities at the root and every node
    q: jax.Array | None,  # [B, D, V] the draft distribution of each depth (None for "argmax")
    tokens: jax.Array,  # [B, N+1]
    valid: jax.Array,  # [B, N+1] bool, prefix-closed
    tree: TreeArrays,
    rule: str,
) -> tuple[jax.Array, jax.Array]:
    """Multi-candidate speculative sampling down a tree (SpecInfer / Sequoia).

    At the current node, with residual `r = p(node)`, try the children in rank order:
    - "sampled" (candidates drawn from `q` with replacement): accept `c` with probability
      `min(1, r(c) / q(c))`; on rejection `r = norm(max(0, r - q))`;
    - "distinct" (drawn without replacement): the same with `q` replaced by the draw's current
      `q'`, from which each rejected candidate is then removed (`q'(c) = 0`, renormalised);
    - "argmax" (deterministic candidates, one-hot proposals): accept with probability `r(c)`; on
      rejection remove `c` from `r`.
    An accepted child becomes the current node; when no child is accepted the next token is
    drawn from `r` (the bonus token from `p` at a leaf). Returns (last node [B], next_token [B]).
    """
    batch, vocab = p.shape[0], p.shape[-1]
    max_depth, num_ranks = tree.path_nodes.shape[1] - 1, tree.children.shape[1]
    u_keys, r_keys = sampling.split_keys(keys, 2)
    u = sampling.uniform(u_keys, (max_depth, num_ranks))  # [B, D, K]
    rows = jnp.arange(batch)
    children = jnp.asarray(tree.children)  # [N+1, K]
    node = jnp.zeros((batch,), jnp.int32)
    residual = p[:, 0]  # [B, V]
    moving = jnp.ones((batch,), jnp.bool_)
    for depth in range(max_depth):
        q_depth = None if q is None else q[:, depth]  # [B, V]
        q_left = q_depth
        chosen = jnp.full((batch,), -1, jnp.int32)
        for rank in range(num_ranks):
            child = children[node, rank]  # [B]
            exists = moving & (chosen < 0) & (child >= 0)
            exists &= valid[rows, jnp.maximum(child, 0)]
            token = tokens[rows, jnp.maximum(child, 0)]
            p_token = residual[rows, token]
            one_hot = rule == "argmax"
            proposal = jax.nn.one_hot(token, vocab, dtype=p.dtype) if one_hot else q_left
            q_token = proposal[rows, token]
            accept = exists & (u[:, depth, rank] * q_token < p_token)
            reject = exists & ~accept
            residual = jnp.where(reject[:, None], _residual(residual, proposal), residual)
            if rule == "distinct":
                removed = q_left.at[rows, token].set(0.0)
                removed = removed / jnp.maximum(jnp.sum(removed, -1, keepdims=True), 1e-30)
                q_left = jnp.where(reject[:, None], removed, q_left)
            chosen = jnp.where(accept, child, chosen)
        moved = chosen >= 0
        node = jnp.where(moved, chosen, node)
        residual = jnp.where(moved[:, None], p[rows, node], residual)
        moving &= moved
    return node, sampling.sample(r_keys, residual)


def _residual(p: jax.Array, q: jax.Array) -> jax.Array:
    """`norm(max(0, p - q))` [B, V]; `p` itself where nothing is left (only by rounding)."""
    residual = jnp.maximum(p - q, 0.0)
    mass = jnp.sum(residual, axis=-1, keepdims=True)
    return jnp.where(mass > 0, residual / jnp.maximum(mass, 1e-30), p)


def _leading_true(flags: jax.Array) -> jax.Array:
    """Length of the leading run of True along the last axis: [B, L] -> [B] int32."""
    return jnp.sum(jnp.cumprod(flags.astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)
