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
- `"prompt_lookup"`: one call per iteration verifying n-gram copies from the row's own context
  (`prompt_lookup`); any model, no lookahead table.
- `"sps"` (the paper's Algorithm 2): a draft model drafts a chain of `gamma` tokens before each
  call, which verifies them (`draft_model`).
- `"pearl"` (PEARL): the draft model drafts the next window while the call verifies this one;
  each call is a chain of `gamma - 1` drafts, its last output verifying the next window's first
  draft (`pearl`).
- `"speed"` (SPEED): on a parameter-shared model, each call applies the shared blocks once to
  the `pipeline_depth` tokens in flight, each at its own repeat; the token after the oldest is
  started early from an early prediction and verified when the oldest leaves the last repeat
  (`speed`). Its tree is the one draft each verification sees.

Options of the lookahead methods: `backing="prompt_lookup"` fills the main chain's slots left
without a lookahead draft with n-gram copies; `adaptive` (`adaptive.ADAPTIVE_RULES`) cuts each
row's window. Both are lossless.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from pass_jax.decode.adaptive import AcceptanceWindow
from pass_jax.decode.draft_model import DraftModelDrafter
from pass_jax.decode.drafting import Drafter, LookaheadDrafter
from pass_jax.decode.pearl import PearlDrafter
from pass_jax.decode.prompt_lookup import DEFAULT_NGRAM, PromptLookupDrafter, main_chain
from pass_jax.decode.tree import CallLayout, DraftTree

LOOKAHEAD_METHODS = ("pass", "pass_unk", "pass_fused", "pass_tree")
TRAINED_TABLE_METHODS = ("pass", "pass_fused", "pass_tree")  # they draft with a trained table
DRAFT_MODEL_METHODS = ("sps", "pearl")
METHODS = ("ar", *LOOKAHEAD_METHODS, "prompt_lookup", *DRAFT_MODEL_METHODS, "speed")
BACKINGS = ("prompt_lookup",)


@dataclasses.dataclass(frozen=True)
class DecodeMethod:
    """A method with its static shape: hashable, a static argument of the decoding program."""

    name: str
    tree: DraftTree  # the drafts each verification sees (empty: autoregressive)
    draft_rule: str = "sampled"  # verify.DRAFT_RULES
    ngram: tuple[int, int] = DEFAULT_NGRAM  # (longest, shortest) n-gram prompt lookup matches
    backing: str | None = None  # BACKINGS: what fills the slots left without a draft
    adaptive: str | None = None  # adaptive.ADAPTIVE_RULES; None: every row verifies its window
    adaptive_threshold: float = 0.5
    draft_model: nnx.GraphDef | None = None  # the draft model's graph (DRAFT_MODEL_METHODS)
    pipeline_depth: int = 1  # speed: tokens in flight, the call's block

    @property
    def num_lookahead(self) -> int:
        """Drafts per window (the tree's depth); 0 decodes autoregressively."""
        return self.tree.depth

    @property
    def drafter(self) -> Drafter:
        """The method's drafter, with its backing and adaptive window."""
        if self.name == "prompt_lookup":
            drafter = PromptLookupDrafter(*self.ngram)
        elif self.name == "sps":
            drafter = DraftModelDrafter(self.draft_model, self.tree.depth)
        elif self.name == "pearl":
            drafter = PearlDrafter(self.draft_model, self.tree.depth)
        else:
            confidence = self.adaptive_threshold if self.adaptive == "confidence" else 0.0
            drafter = LookaheadDrafter(self.tree, self.draft_rule, confidence)
            if self.backing == "prompt_lookup":
                drafter = PromptLookupDrafter(*self.ngram, inner=drafter)
        if self.adaptive == "acceptance":
            drafter = AcceptanceWindow(drafter, self.adaptive_threshold)
        return drafter

    @property
    def layouts(self) -> tuple[CallLayout, ...]:
        """The calls of one iteration, in order."""
        tree, la = self.tree, self.num_lookahead
        if self.name == "speed":
            return (CallLayout(DraftTree.chain(self.pipeline_depth - 1), 0),)
        if not la:
            return (CallLayout(DraftTree(), 0),)
        if self.name in ("pass", "pass_unk"):
            return (CallLayout(DraftTree(), la, (0,)), CallLayout(tree, 0))
        if self.name == "pass_fused":
            chain = main_chain(tree)
            return (CallLayout(tree, la, (int(chain[-1]),)),)
        if self.name in ("prompt_lookup", "sps"):
            return (CallLayout(tree, 0),)
        if self.name == "pearl":
            return (CallLayout(DraftTree.chain(la - 1), 0),)
        return (CallLayout(tree, la, tuple(range(tree.num_nodes + 1))),)

    @property
    def block_len(self) -> int:
        """Tokens of the largest call (the cache keeps this much room past a row's tokens)."""
        return max(layout.block_len for layout in self.layouts)

    @property
    def draft_calls(self) -> int:
        """Draft-model calls per iteration: one per drafted token (0 without a draft model)."""
        return self.tree.depth if self.name in DRAFT_MODEL_METHODS else 0

    @property
    def draft_block_len(self) -> int:
        """Positions the draft model writes past a row's committed tokens, as `block_len` for
        the target: sps feeds at most the token before the pending one and drafts up to the
        window's last draft; pearl drafts a window past the window the call verifies."""
        gamma = self.tree.depth
        return {"sps": max(gamma, 2), "pearl": 2 * gamma - 1}.get(self.name, 0)
