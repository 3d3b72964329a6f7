"""Decoding methods: which calls an iteration makes, on which tree, drafted how.

- `"ar"`: one call on the pending token, one new token.
- `"pass"` (the paper's Algorithm 1): a draftless call `[t, LA_1..LA_L]` (exact next token and
  the drafts), then a verification call on the draft tree.
- `"pass_unk"`: `"pass"` with an untrained table (every row the UNK embedding), the baseline.
- `"pass_fused"`: one call per iteration on `[t, tree, LA_1..LA_L]`, the lookahead block after
  the tree's main chain (rank-0 path): when that whole chain is accepted, its lookahead outputs
  draft the next window; after a rejection the next call is draftless.
- `"pass_tree"`: one call per iteration with a lookahead block after every node: whichever path
  is accepted, the next window is already drafted. At most `depth + 1` tokens per call.
"""

from __future__ import annotations

import dataclasses

from pass_jax.decode.drafting import LookaheadDrafter
from pass_jax.decode.tree import CallLayout, DraftTree

METHODS = ("ar", "pass", "pass_unk", "pass_fused", "pass_tree")
LOOKAHEAD_METHODS = METHODS[1:]


@dataclasses.dataclass(frozen=True)
class DecodeMethod:
    """A method with its static shape: hashable, a static argument of the decoding program."""

    name: str
    tree: DraftTree  # the drafts each verification sees (empty: autoregressive)
    draft_rule: str = "sampled"  # verify.DRAFT_RULES

    @property
    def num_lookahead(self) -> int:
        """Drafts per window (the tree's depth); 0 decodes autoregressively."""
        return self.tree.depth

    @property
    def drafter(self) -> LookaheadDrafter:
        return LookaheadDrafter(self.tree, self.draft_rule)

    @property
    def layouts(self) -> tuple[CallLayout, ...]:
        """The calls of one iteration, in order."""
        tree, la = self.tree, self.num_lookahead
        if not la:
            return (CallLayout(DraftTree(), 0),)
        if self.name in ("pass", "pass_unk"):
            return (CallLayout(DraftTree(), la, (0,)), CallLayout(tree, 0))
        if self.name == "pass_fused":
            chain = max(d for d in range(la + 1) if d == 0 or (0,) * d in tree.paths)
            main_chain_end = tree.paths.index((0,) * chain) + 1 if chain else 0
            return (CallLayout(tree, la, (main_chain_end,)),)
        return (CallLayout(tree, la, tuple(range(tree.num_nodes + 1))),)

    @property
    def block_len(self) -> int:
        """Tokens of the largest call (the cache keeps this much room past a row's tokens)."""
        return max(layout.block_len for layout in self.layouts)
