"""The multi-insertion layout for lookahead training: K lookahead blocks appended to a sequence.

A packed sequence `x_0 .. x_{T-1}` becomes the text `x_0 .. x_{T-2}` (causal, trained to predict
`x_1 .. x_{T-1}`) followed by K lookahead blocks, one per insertion point `j`:

- table row `s` (`LA_{s+1}` in the paper's 1-based notation) of the block for `j` sits at position
  `j + 1 + s` (the slot of `x_{j+1+s}`), sees the text `x_0 .. x_j` and the rows `<= s` of its own
  block, and is trained to predict `x_{j+2+s}`;
- the text never sees a lookahead token, and blocks never see each other,

so each block's outputs equal those of the paper's single-insertion input `[x_0 .. x_j, LA_1 ..
LA_L]`. Targets past the sequence end are masked out. The model's own distribution for the same
target, `p(. | x_0 .. x_{j+1+s})`, is the text output at index `j + 1 + s` (`teacher_index`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LookaheadInputs(NamedTuple):
    """Model inputs for text + K lookahead blocks of L rows (N = T - 1 + K * L), and targets."""

    tokens: jax.Array  # [B, N] int32 (0 in lookahead slots)
    lookahead_slots: jax.Array  # [B, N] int32, -1 for text
    positions: jax.Array  # [B, N] int32
    block_mask: jax.Array  # [B, N, N] bool
    text_targets: jax.Array  # [B, T-1] int32: x_1 .. x_{T-1}
    targets: jax.Array  # [B, K, L] int32: x_{j+2+s} (0 where invalid)
    valid: jax.Array  # [B, K, L] bool: the target lies inside the sequence
    teacher_index: jax.Array  # [B, K, L] int32: text index whose output is p for the target


def sample_insertion_points(
    key: jax.Array, batch_size: int, seq_len: int, num_insertions: int
) -> jax.Array:
    """Uniform insertion points j in [0, T-3] [B, K]: every block has at least one target."""
    if seq_len < 3:
        raise ValueError(f"lookahead training needs sequences of >= 3 tokens, got {seq_len}")
    shape = (batch_size, num_insertions)
    return jax.random.randint(key, shape, 0, seq_len - 2, dtype=jnp.int32)


def build_inputs(
    sequences: jax.Array,  # [B, T] int32
    insertion_points: jax.Array,  # [B, K] int32 in [0, T-3]
    num_lookahead: int,
) -> LookaheadInputs:
    """Lays out the text and one lookahead block of `num_lookahead` rows per insertion point."""
    batch, seq_len = sequences.shape
    num_blocks = insertion_points.shape[1]
    text_len = seq_len - 1
    la_len = num_blocks * num_lookahead
    slot = np.tile(np.arange(num_lookahead, dtype=np.int32), num_blocks)  # [K*L]
    block = np.repeat(np.arange(num_blocks, dtype=np.int32), num_lookahead)  # [K*L]

    tokens = jnp.concatenate([sequences[:, :text_len], jnp.zeros((batch, la_len), jnp.int32)], 1)
    slots = np.concatenate([np.full(text_len, -1, np.int32), slot])  # [N]
    lookahead_slots = jnp.broadcast_to(jnp.asarray(slots), tokens.shape)
    block_j = jnp.repeat(insertion_points, num_lookahead, axis=1)  # [B, K*L]
    text_pos = jnp.broadcast_to(jnp.arange(text_len, dtype=jnp.int32), (batch, text_len))
    positions = jnp.concatenate([text_pos, block_j + 1 + slot], axis=1)  # [B, N]

    # A query sees text keys up to its limit (itself for text, j for a lookahead row) and the
    # lookahead keys of its own block at rows <= its own.
    limit = jnp.concatenate([text_pos, block_j], axis=1)  # [B, N]
    index = np.arange(text_len + la_len)
    key_is_text = index < text_len  # [N]
    text_visible = index[None, None, :] <= limit[:, :, None]  # [B, N, N]
    block_id = np.concatenate([np.full(text_len, -1), block])  # [N]
    la_visible = (
        (~key_is_text[:, None] & ~key_is_text[None, :])
        & (block_id[:, None] == block_id[None, :])
        & (slots[None, :] <= slots[:, None])
    )  # [N, N]
    block_mask = jnp.where(key_is_text[None, None, :], text_visible, la_visible[None])

    target_index = insertion_points[:, :, None] + 2 + np.arange(num_lookahead)  # [B, K, L]
    valid = target_index < seq_len
    targets = jnp.take_along_axis(
        sequences, jnp.minimum(target_index, seq_len - 1).reshape(batch, la_len), axis=1
    ).reshape(target_index.shape)
    return LookaheadInputs(
        tokens=tokens,
        lookahead_slots=lookahead_slots,
        positions=positions,
        block_mask=block_mask,
        text_targets=sequences[:, 1:],
        targets=jnp.where(valid, targets, 0),
        valid=valid,
        teacher_index=jnp.minimum(target_index - 1, text_len - 1),
    )
