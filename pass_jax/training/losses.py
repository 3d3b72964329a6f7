"""Training losses: next-token cross-entropy on the text, and the lookahead loss on the blocks.

The lookahead loss is either cross-entropy against the data (`"ce"`, the paper's recipe) or
distillation to the model's own distribution (`"kl"`: KL(p || q), with `p` the model's text output
for the same target position, held constant).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from pass_jax.experiment import LOOKAHEAD_LOSSES
from pass_jax.model import Transformer
from pass_jax.training.insertion import LookaheadInputs


def _cross_entropy(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
    """-log p(target) [...] from log-probabilities [..., V] and int targets [...]."""
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def _masked_mean(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def compute_losses(
    model: Transformer,
    inputs: LookaheadInputs,
    lookahead_loss: str = "ce",
    lm_rows: int | None = None,
    row_groups: int = 1,
) -> dict[str, jax.Array]:
    """Losses and metrics of one forward pass over text + lookahead blocks.

    Returns `lm_loss` (mean next-token cross-entropy of the text of the first `lm_rows` rows;
    None: every row) and, when the input has lookahead blocks: `la_loss` (the selected
    lookahead loss), `la_ce`, `la_kl`, and `la_match` [L] (how often the draft argmax equals
    the model's own argmax for the same position: teacher-forced greedy agreement,
    unconditional per row).

    `row_groups > 1` runs the layers on that many groups of rows as independent computations
    and joins their hidden states: the same losses, but XLA:CPU then runs the groups' ops side
    by side on its threads (a step is otherwise a chain of ops too small to fill them).
    """
    if lookahead_loss not in LOOKAHEAD_LOSSES:
        raise ValueError(f"unknown lookahead loss {lookahead_loss!r}: one of {LOOKAHEAD_LOSSES}")
    batch, num_blocks, num_la = inputs.targets.shape
    text_len = inputs.text_targets.shape[1]
    has_blocks = num_blocks * num_la > 0
    if batch % row_groups:
        raise ValueError(f"a batch of {batch} rows does not split into {row_groups} row groups")
    group = batch // row_groups
    hidden = jnp.concatenate(
        [
            model.hidden_states(
                inputs.tokens[rows],
                lookahead_slots=inputs.lookahead_slots[rows] if has_blocks else None,
                positions=inputs.positions[rows],
                block_mask=inputs.block_mask[rows],
            )[0]
            for rows in (slice(start, start + group) for start in range(0, batch, group))
        ]
    )  # [B, N, d]
    text_logits = model.logits(hidden[:, :text_len])  # [B, T-1, V]
    # optax's integer-label cross-entropy: its gradient is softmax - one_hot, without the
    # scatter and transposes that differentiating log_softmax + take_along_axis costs.
    text_ce = optax.softmax_cross_entropy_with_integer_labels(text_logits, inputs.text_targets)
    metrics = {"lm_loss": jnp.mean(text_ce[:lm_rows])}
    if not has_blocks:
        return metrics

    la_logits = model.logits(hidden[:, text_len:]).reshape(batch, num_blocks, num_la, -1)
    la_log_probs = jax.nn.log_softmax(la_logits)  # [B, K, L, V]
    teacher_logits = jnp.take_along_axis(
        jax.lax.stop_gradient(text_logits), inputs.teacher_index.reshape(batch, -1, 1), axis=1
    ).reshape(la_logits.shape)
    teacher = jax.nn.log_softmax(teacher_logits)  # [B, K, L, V]
    ce = _cross_entropy(la_log_probs, inputs.targets)  # [B, K, L]
    kl = jnp.sum(jnp.exp(teacher) * (teacher - la_log_probs), axis=-1)  # [B, K, L]
    match = jnp.argmax(la_log_probs, -1) == jnp.argmax(teacher, -1)  # [B, K, L]
    metrics.update(
        la_ce=_masked_mean(ce, inputs.valid),
        la_kl=_masked_mean(kl, inputs.valid),
        la_match=_masked_mean(match, inputs.valid, axis=(0, 1)),  # [L]
    )
    metrics["la_loss"] = metrics["la_ce"] if lookahead_loss == "ce" else metrics["la_kl"]
    return metrics
