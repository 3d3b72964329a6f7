"""One stage's jitted train and eval steps over a model and its optimizer.

The lookahead insertion points of a step come from `fold_in(key(seed), step)`, with `step` the
optimizer's step counter: the random stream is a function of the seed and the (checkpointed)
step, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pass_jax.experiment import StageConfig
from pass_jax.insertion import build_inputs, sample_insertion_points
from pass_jax.losses import compute_losses
from pass_jax.model import Transformer
from pass_jax.optim import make_optimizer, schedule, trainable


def _layout(batch: jax.Array, key: jax.Array, num_insertions: int, num_lookahead: int):
    batch_size, seq_len = batch.shape
    points = sample_insertion_points(key, batch_size, seq_len, num_insertions)  # [B, K]
    return build_inputs(batch, points, num_lookahead)


def _train_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: jax.Array,  # [B, T] int32
    key: jax.Array,
    *,
    stage: StageConfig,
    num_lookahead: int,
) -> tuple[nnx.State, dict[str, jax.Array]]:
    model, optimizer = nnx.merge(graphdef, state)
    step = optimizer.step[...]
    num_insertions = stage.num_insertions if stage.trains_table else 0
    inputs = _layout(batch, jax.random.fold_in(key, step), num_insertions, num_lookahead)

    def loss_fn(model: Transformer) -> tuple[jax.Array, dict[str, jax.Array]]:
        metrics = compute_losses(model, inputs, stage.lookahead_loss)
        loss = stage.lm_weight * metrics["lm_loss"]
        if stage.trains_table:
            loss = loss + stage.lookahead_weight * metrics["la_loss"]
        return loss, metrics

    diff = nnx.DiffState(0, trainable(stage))
    (loss, metrics), grads = nnx.value_and_grad(loss_fn, argnums=diff, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(stage)(step))
    return nnx.state((model, optimizer)), metrics


def _eval_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: jax.Array,  # [B, T] int32
    key: jax.Array,
    *,
    num_insertions: int,
    num_lookahead: int,
) -> dict[str, jax.Array]:
    model = nnx.merge(graphdef, state)
    return compute_losses(model, _layout(batch, key, num_insertions, num_lookahead))


def _committed(state: nnx.State) -> nnx.State:
    """The state with every array committed to its device (host arrays to the default device).

    Step outputs are committed; inputs that are not (fresh arrays) or only partly (restored
    weights, fresh optimizer state) would make the second step compile again.
    """
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda x: x.sharding if isinstance(x, jax.Array) else default, state)
    return jax.device_put(state, shardings)


class Trainer:
    """Trains `model` for one stage (`train_step`) and evaluates it (`evaluate`).

    While training, the model's and optimizer's arrays live in a pure state (no graph traversal
    per step); `sync()` writes them back into the objects. `evaluate` syncs first; callers that
    read or write the model or optimizer between steps call `sync()` before doing so.
    """

    def __init__(self, model: Transformer, stage: StageConfig, *, seed: int):
        self.model = model
        self.stage = stage
        self.optimizer = make_optimizer(model, stage)
        self._key = jax.random.key(seed)
        self._state: nnx.State | None = None  # set while training; the objects are stale then
        num_lookahead = model.config.max_lookahead
        graphdef = nnx.graphdef((model, self.optimizer))
        train = functools.partial(_train_step, graphdef, stage=stage, num_lookahead=num_lookahead)
        self._train = jax.jit(train)
        evaluate = functools.partial(_eval_step, nnx.graphdef(model), num_lookahead=num_lookahead)
        self._eval = jax.jit(evaluate, static_argnames="num_insertions")

    @property
    def step(self) -> int:
        """Optimizer steps taken in this stage."""
        step = self.optimizer.step if self._state is None else self._state[1]["step"]
        return int(step[...])

    def train_step(self, batch: np.ndarray) -> dict[str, jax.Array]:
        """One update on batch [B, T]; returns the step's metrics (device arrays)."""
        if self._state is None:
            self._state = _committed(nnx.state((self.model, self.optimizer)))
        self._state, metrics = self._train(self._state, jnp.asarray(batch), self._key)
        return metrics

    def sync(self) -> None:
        """Writes the training state back into the model and optimizer objects."""
        if self._state is not None:
            nnx.update((self.model, self.optimizer), self._state)
            self._state = None

    def evaluate(
        self, batches: Iterable[np.ndarray], *, num_insertions: int, seed: int = 0
    ) -> dict[str, float | list[float]]:
        """Mean losses and per-position draft agreement over batches (fixed insertion points)."""
        self.sync()
        key = jax.random.key(seed)
        state = nnx.state(self.model)
        results = [
            self._eval(
                state, jnp.asarray(batch), jax.random.fold_in(key, i), num_insertions=num_insertions
            )
            for i, batch in enumerate(batches)
        ]
        if not results:
            raise ValueError("evaluate needs at least one batch")
        means = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *results)
        return {k: v.tolist() if np.ndim(v) else float(v) for k, v in means.items()}
