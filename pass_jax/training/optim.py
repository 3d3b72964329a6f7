"""Optimizers per stage: which weights train, and AdamW with warmup + cosine decay."""

from __future__ import annotations

import optax
from flax import nnx

from pass_jax.experiment import StageConfig
from pass_jax.model import HEAD_PARAMS, LookaheadParam, Transformer


def trainable(stage: StageConfig) -> nnx.filterlib.Filter:
    """The weights a stage updates: the base, the lookahead table, both, or the PaSS head
    (table and adapters)."""
    if stage.trains_adapters:
        return HEAD_PARAMS
    if stage.trains_base and stage.trains_table:
        return nnx.Param
    if stage.trains_base:
        return nnx.All(nnx.Param, nnx.Not(LookaheadParam))
    return LookaheadParam


def schedule(stage: StageConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak rate, then cosine to `end_lr_ratio` of it."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=stage.learning_rate,
        warmup_steps=stage.warmup_steps,
        decay_steps=stage.steps,
        end_value=stage.learning_rate * stage.end_lr_ratio,
    )


def make_optimizer(model: Transformer, stage: StageConfig) -> nnx.Optimizer:
    """AdamW (global-norm clipping first) over the stage's trainable weights."""
    if stage.trains_table and not model.has_lookahead:
        raise ValueError(
            f"stage {stage.name} trains the lookahead table, but the model has none "
            "(model.max_lookahead == 0)"
        )
    if stage.trains_adapters and not model.has_adapters:
        raise ValueError(
            f"stage {stage.name} trains lookahead adapters, but the model has none "
            "(model.adapter_rank == 0)"
        )
    tx = optax.chain(
        optax.clip_by_global_norm(stage.grad_clip),
        optax.adamw(schedule(stage), weight_decay=stage.weight_decay),
    )
    return nnx.Optimizer(model, tx, wrt=trainable(stage))
