"""Static draft trees and the layout of one model call on a tree.

A `DraftTree` is a token tree of drafts hanging below the pending token (the root). Node `i`
(1..N) is named by its *path*: the candidate rank chosen at each depth, e.g. `(0, 1)` is the
second candidate at depth 2 below the first candidate at depth 1 (Medusa's notation). A chain of
L drafts is the tree `(0,), (0, 0), ..., (0,)*L`. Nodes are numbered by depth, then path, so a
chain's nodes sit in order and a node's parent always comes before it.

A `CallLayout` places a tree and `L`-slot lookahead blocks into one block of tokens:

    [root | node 1 .. node N | LA block 0 (L slots) | LA block 1 | ...]

Tree nodes see their ancestors (tree attention); each lookahead block is attached to a node and
sees that node's ancestors and itself, then its own slots causally, at the positions that follow
the node. Rows whose drafts are invalid (none proposed) see only the root: every block then
collapses onto the root. Topology is static per compiled program; tokens, validity and positions
are traced.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DraftTree:
    """A static tree of drafts below the pending token; `paths` in node order (see module)."""

    paths: tuple[Path, ...] = ()

    @classmethod
    def create(cls, paths) -> DraftTree:
        """A tree from paths in any order; a `ValueError` unless every path's parent and every
        lower-ranked sibling is in the tree (so children are ranks 0..k-1, tried in order)."""
        try:
            paths = {tuple(int(r) for r in path) for path in paths}
        except TypeError as error:
            raise ValueError(f"a tree is a sequence of paths (tuples of ranks): {error}") from None
        for path in paths:
            if not path:
                raise ValueError("a tree path must name at least one rank")
            if min(path) < 0:
                raise ValueError(f"tree path {path} has a negative rank")
            if len(path) > 1 and path[:-1] not in paths:
                raise ValueError(f"tree path {path} has no parent {path[:-1]} in the tree")
            if path[-1] > 0 and (*path[:-1], path[-1] - 1) not in paths:
                raise ValueError(
                    f"tree path {path} has no lower-ranked sibling {(*path[:-1], path[-1] - 1)}: "
                    "candidates of a node are ranks 0..k-1"
                )
        return cls(tuple(sorted(paths, key=lambda p: (len(p), p))))

    @classmethod
    def chain(cls, length: int) -> DraftTree:
        """`length` drafts in a row: one candidate per depth."""
        return cls(tuple((0,) * d for d in range(1, length + 1)))

    @classmethod
    def top_k(cls, depth: int, k: int) -> DraftTree:
        """`k` candidates at every depth; the first continues the chain, the others are leaves."""
        chain = [(0,) * d for d in range(depth)]
        return cls.create([(*prefix, r) for prefix in chain for r in range(k)])

    @property
    def num_nodes(self) -> int:
        """N: draft nodes, the root not counted."""
        return len(self.paths)

    @property
    def depth(self) -> int:
        """D: the longest path; drafts for D positions are needed."""
        return max((len(p) for p in self.paths), default=0)

    @property
    def is_chain(self) -> bool:
        return self == DraftTree.chain(self.depth)

    @property
    def num_candidates(self) -> int:
        """The most candidates any depth needs (highest rank + 1)."""
        return max((max(p) + 1 for p in self.paths), default=0)

    @functools.cached_property
    def arrays(self) -> TreeArrays:
        return TreeArrays.build(self)


@dataclasses.dataclass(frozen=True, eq=False)
class TreeArrays:
    """Index tables of a tree over nodes 0..N (0: the root), as numpy constants."""

    parent: np.ndarray  # [N+1] int32, -1 for the root
    depth: np.ndarray  # [N+1] int32
    rank: np.ndarray  # [N+1] int32: candidate rank (0 for the root)
    ancestors: np.ndarray  # [N+1, N+1] bool: j is an ancestor of i or i itself
    path_nodes: np.ndarray  # [N+1, D+1] int32: the ancestor of i at each depth (i past its depth)
    children: np.ndarray  # [N+1, K] int32: children by rank, -1 padded

    @classmethod
    def build(cls, tree: DraftTree) -> TreeArrays:
        index = {(): 0} | {path: i + 1 for i, path in enumerate(tree.paths)}
        paths = [(), *tree.paths]
        size = len(paths)
        parent = np.array([index[p[:-1]] if p else -1 for p in paths], np.int32)
        depth = np.array([len(p) for p in paths], np.int32)
        rank = np.array([p[-1] if p else 0 for p in paths], np.int32)
        ancestors = np.zeros((size, size), bool)
        path_nodes = np.zeros((size, tree.depth + 1), np.int32)
        for i, path in enumerate(paths):
            for d in range(tree.depth + 1):
                path_nodes[i, d] = index[path[:d]] if d <= len(path) else i
            for d in range(len(path) + 1):
                ancestors[i, index[path[:d]]] = True
        children = np.full((size, max(tree.num_candidates, 1)), -1, np.int32)
        for i, path in enumerate(paths[1:], start=1):
            children[parent[i], path[-1]] = i
        return cls(parent, depth, rank, ancestors, path_nodes, children)


@dataclasses.dataclass(frozen=True)
class CallLayout:
    """One model call: the root, the tree's nodes, and `L`-slot lookahead blocks attached to the
    nodes `attach` (none: a pure verification call)."""

    tree: DraftTree
    num_lookahead: int  # L: slots per lookahead block
    attach: tuple[int, ...] = ()  # the node each lookahead block follows (0: the root)

    @property
    def block_len(self) -> int:
        return 1 + self.tree.num_nodes + len(self.attach) * self.num_lookahead

    @property
    def first_slot(self) -> int:
        """Block index of the first lookahead slot."""
        return 1 + self.tree.num_nodes

    def effective_attach(self, valid: jax.Array) -> jax.Array:
        """Per row, the node each block hangs from: its attachment node if valid, else that
        node's deepest valid ancestor. valid [B, N+1] (prefix-closed) -> [B, A] int32."""
        arrays = self.tree.arrays
        ancestors = jnp.asarray(arrays.ancestors[list(self.attach)])  # [A, N+1]
        score = jnp.where(
            ancestors[None] & valid[:, None, :], jnp.asarray(arrays.depth) + 1, 0
        )  # [B, A, N+1]
        return jnp.argmax(score, axis=-1).astype(jnp.int32)

    def inputs(
        self,
        pending: jax.Array,  # [B] int32
        node_tokens: jax.Array,  # [B, N+1] int32 (column 0 ignored)
        valid: jax.Array,  # [B, N+1] bool, prefix-closed, column 0 True
        start: jax.Array,  # [B] int32: the root's position
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """tokens, lookahead_slots, positions [B, T] and block_mask [B, T, T] for the call."""
        arrays, la = self.tree.arrays, self.num_lookahead
        batch, num_blocks = pending.shape[0], len(self.attach)
        tokens = node_tokens.at[:, 0].set(pending)
        tokens = jnp.pad(tokens, ((0, 0), (0, num_blocks * la)))  # [B, T]
        depth = jnp.asarray(arrays.depth)
        node_mask = jnp.broadcast_to(
            jnp.asarray(arrays.ancestors), (batch, *arrays.ancestors.shape)
        )
        positions = start[:, None] + jnp.broadcast_to(depth, (batch, depth.shape[0]))
        if not num_blocks:
            slots = jnp.full(tokens.shape, -1, jnp.int32)
            return tokens, slots, positions, node_mask
        attach = self.effective_attach(valid)  # [B, A]
        offsets = np.arange(la, dtype=np.int32)
        slot_row = np.concatenate(
            [np.full(1 + self.tree.num_nodes, -1), np.tile(offsets, num_blocks)]
        )
        slots = jnp.broadcast_to(jnp.asarray(slot_row, jnp.int32), tokens.shape)
        la_positions = start[:, None, None] + depth[attach][..., None] + 1 + offsets  # [B, A, L]
        positions = jnp.concatenate([positions, la_positions.reshape(batch, -1)], axis=1)
        # Lookahead slot (b, j) sees its node's ancestors and slots (b, <= j).
        sees_nodes = jnp.asarray(arrays.ancestors)[attach]  # [B, A, N+1]
        sees_nodes = jnp.repeat(sees_nodes, la, axis=1)  # [B, A*L, N+1]
        block_id, slot = np.repeat(np.arange(num_blocks), la), np.tile(offsets, num_blocks)
        own = (block_id[:, None] == block_id[None, :]) & (slot[:, None] >= slot[None, :])
        la_rows = jnp.concatenate(
            [sees_nodes, jnp.broadcast_to(jnp.asarray(own), (batch, *own.shape))], axis=2
        )
        node_rows = jnp.pad(node_mask, ((0, 0), (0, 0), (0, num_blocks * la)))
        return tokens, slots, positions, jnp.concatenate([node_rows, la_rows], axis=1)

    def lookahead_logits(
        self, logits: jax.Array, valid: jax.Array, last: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """The lookahead block hanging from each row's last accepted node `last` [B]: its logits
        [B, L, V] and whether there is one [B]. Its outputs draft the positions after the token
        sampled at that node."""
        attach = self.effective_attach(valid)  # [B, A]
        match = attach == last[:, None]  # [B, A]
        block = jnp.argmax(match, axis=1)  # [B]: the first such block
        index = (
            self.first_slot + block[:, None] * self.num_lookahead + jnp.arange(self.num_lookahead)
        )
        return jnp.take_along_axis(logits, index[..., None], axis=1), jnp.any(match, axis=1)
