"""Training losses: next-token cross-entropy on the text, the lookahead loss on the blocks, and
a parameter-shared model's early-prediction loss.

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
    early: bool = False,
) -> dict[str, jax.Array]:
    """Losses and metrics of one forward pass over text + lookahead blocks.

    Returns `lm_loss` (mean next-token cross-entropy of the text of the first `lm_rows` rows;
    None: every row) and, when the input has lookahead blocks: `la_loss` (the selected
    lookahead loss), `la_ce`, `la_kl`, and `la_match` [L] (how often the draft argmax equals
    the model's own argmax for the same position: teacher-forced greedy agreement,
    unconditional per row). With `early` (a model with `n_repeats > 1`): `early_loss`, the
    next-token cross-entropy of the early prediction (`Transformer.early_logits`) on the same
    text, and `early_match`, how often its argmax equals the model's (SPEED's greedy acceptance,
    teacher forced).

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
    if early and model.config.n_repeats == 1:
        raise ValueError("the early-prediction loss needs a parameter-shared model (n_repeats > 1)")
    group = batch // row_groups
    outputs = [
        model.hidden_states(
            inputs.tokens[rows],
            lookahead_slots=inputs.lookahead_slots[rows] if has_blocks else None,
            positions=inputs.positions[rows],
            block_mask=inputs.block_mask[rows],
            early=early,
        )
        for rows in (slice(start, start + group) for start in range(0, batch, group))
    ]
    hidden = jnp.concatenate([out[0] for out in outputs])  # [B, N, d]
    text_logits = model.logits(hidden[:, :text_len])  # [B, T-1, V]
    # optax's integer-label cross-entropy: its gradient is softmax - one_hot, without the
    # scatter and transposes that differentiating log_softmax + take_along_axis costs.
    text_ce = optax.softmax_cross_entropy_with_integer_labels(text_logits, inputs.text_targets)
    metrics = {"lm_loss": jnp.mean(text_ce[:lm_rows])}
    if early:
        residual = jnp.concatenate([out[2] for out in outputs])[:lm_rows, :text_len]
        early_logits = model.early_logits(residual)  # [B', T-1, V]
        early_ce = optax.softmax_cross_entropy_with_integer_labels(
            early_logits, inputs.text_targets[:lm_rows]
        )
        agree = jnp.argmax(early_logits, -1) == jnp.argmax(text_logits[:lm_rows], -1)
        metrics.update(early_loss=jnp.mean(early_ce), early_match=jnp.mean(agree))
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
