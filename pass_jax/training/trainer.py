"""One stage's jitted train and eval steps over a model and its optimizer.

The lookahead insertion points of a step come from `fold_in(key(seed), step)`, with `step` the
optimizer's step counter: the random stream is a function of the seed and the (checkpointed)
step, so a resumed run draws exactly what an uninterrupted one would.

On a mesh, the model and optimizer state are placed by `sharding.param_shardings` (weights
FSDP / tensor split by their logical axes, the lookahead table replicated, AdamW moments like
their params, step counters replicated), the batch is split over the batch axes (`data`,
`fsdp`), and the train step is jitted with those shardings pinned and the state donated.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pass_jax import sharding
from pass_jax.experiment import StageConfig
from pass_jax.model import Transformer
from pass_jax.training.insertion import build_inputs, sample_insertion_points
from pass_jax.training.losses import compute_losses
from pass_jax.training.optim import make_optimizer, schedule, trainable


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
    row_groups: int,
) -> tuple[nnx.State, dict[str, jax.Array]]:
    model, optimizer = nnx.merge(graphdef, state)
    step = optimizer.step[...]
    num_insertions = stage.num_insertions if stage.trains_table else 0
    inputs = _layout(batch, jax.random.fold_in(key, step), num_insertions, num_lookahead)

    # The LM loss skips generated rows; on distill's all-generated batch it is only a metric
    # (weight 0), taken over every row.
    lm_rows = batch.shape[0] - stage.generated_rows(batch.shape[0]) or None

    def loss_fn(model: Transformer) -> tuple[jax.Array, dict[str, jax.Array]]:
        metrics = compute_losses(
            model, inputs, stage.lookahead_loss, lm_rows, row_groups, early=stage.early_weight > 0
        )
        loss = stage.lm_weight * metrics["lm_loss"]
        if stage.trains_table:
            loss = loss + stage.lookahead_weight * metrics["la_loss"]
        if stage.early_weight:
            loss = loss + stage.early_weight * metrics["early_loss"]
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
    inputs = _layout(batch, key, num_insertions, num_lookahead)
    return compute_losses(model, inputs, early=model.config.n_repeats > 1)


def train_step_program(
    graphdef: nnx.GraphDef,
    stage: StageConfig,
    num_lookahead: int,
    state_shardings: nnx.State | None = None,
    batch_sharding: NamedSharding | None = None,
    row_groups: int = 1,
) -> jax.stages.Wrapped:
    """The jitted step `(state, batch [B, T], key) -> (state, metrics)`, its layers run on
    `row_groups` independent groups of rows (`compute_losses`).

    With shardings (the state's and the batch's, on one mesh) they are pinned in and out, the
    key and metrics replicated, and the state donated (updated in place); call and lower it
    under `jax.set_mesh(mesh)`.
    """
    train = functools.partial(
        _train_step, graphdef, stage=stage, num_lookahead=num_lookahead, row_groups=row_groups
    )
    if state_shardings is None:
        return jax.jit(train)
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        train,
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )


def _committed(state: nnx.State, shardings: nnx.State | None) -> nnx.State:
    """The state with every array committed to its device: to `shardings` on a mesh; else
    host arrays to the default device and device arrays where they are.

    Step outputs are committed; inputs that are not (fresh arrays) or only partly (restored
    weights, fresh optimizer state) would make the second step compile again.
    """
    if shardings is None:
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(
            lambda x: x.sharding if isinstance(x, jax.Array) else default, state
        )
    return jax.device_put(state, shardings)


class Trainer:
    """Trains `model` for one stage (`train_step`) and evaluates it (`evaluate`).

    While training, the model's and optimizer's arrays live in a pure state (no graph traversal
    per step); `sync()` writes them back into the objects. `evaluate` syncs first; callers that
    read or write the model or optimizer between steps call `sync()` before doing so.

    With a `mesh`, the model and optimizer state are moved onto it (`sharding.param_shardings`),
    each batch is assembled from the processes' rows into one global array split over the batch
    axes, and steps run under `jax.set_mesh(mesh)` and donate the state: arrays the model held
    before a step are consumed by it (never keep references to them; `sync()` gives the new).
    `row_groups`: see `train_step_program`.
    """

    def __init__(
        self,
        model: Transformer,
        stage: StageConfig,
        *,
        seed: int,
        mesh: Mesh | None = None,
        row_groups: int = 1,
    ):
        self.model = model
        self.stage = stage
        self.mesh = mesh
        self.row_groups = row_groups
        self.optimizer = make_optimizer(model, stage)
        self._key = jax.random.key(seed)
        self._state: nnx.State | None = None  # set while training; the objects are stale then
        self._steps_taken = 0  # the step counter on the host while training (no device sync)
        self._shardings: nnx.State | None = None
        replicated = None
        if mesh is not None:
            sharding.shard_model((model, self.optimizer), mesh)
            self._shardings = sharding.param_shardings(nnx.state((model, self.optimizer)), mesh)
            replicated = NamedSharding(mesh, PartitionSpec())
            self._key = jax.jit(lambda: jax.random.key(seed), out_shardings=replicated)()
        self._num_lookahead = model.config.max_lookahead
        self._train: jax.stages.Wrapped | None = None  # built for the first batch's sharding
        evaluate = functools.partial(
            _eval_step, nnx.graphdef(model), num_lookahead=self._num_lookahead
        )
        self._eval = jax.jit(evaluate, static_argnames="num_insertions", out_shardings=replicated)

    @property
    def step(self) -> int:
        """Optimizer steps taken in this stage."""
        return int(self.optimizer.step[...]) if self._state is None else self._steps_taken

    def _global(self, batch: np.ndarray) -> jax.Array:
        """This process's rows [B_local, T] as the global batch (on the mesh, if any)."""
        return jnp.asarray(batch) if self.mesh is None else sharding.global_batch(batch, self.mesh)

    def train_step(self, batch: np.ndarray) -> dict[str, jax.Array]:
        """One update on batch [B, T] (on several processes: this process's rows of it); returns
        the step's metrics (device arrays, replicated)."""
        if self._state is None:
            self._steps_taken = self.step
            self._state = _committed(nnx.state((self.model, self.optimizer)), self._shardings)
        batch = self._global(batch)
        if self._train is None:
            graphdef = nnx.graphdef((self.model, self.optimizer))
            shardings = () if self.mesh is None else (self._shardings, batch.sharding)
            self._train = train_step_program(
                graphdef, self.stage, self._num_lookahead, *shardings, row_groups=self.row_groups
            )
        with jax.set_mesh(self.mesh):
            self._state, metrics = self._train(self._state, batch, self._key)
        self._steps_taken += 1
        return metrics

    def sync(self) -> None:
        """Writes the training state back into the model and optimizer objects."""
        if self._state is not None:
            nnx.update((self.model, self.optimizer), self._state)
            self._state = None

    def evaluate(
        self, batches: Iterable[np.ndarray], *, num_insertions: int, seed: int = 0
    ) -> dict[str, float | list[float]]:
        """Mean losses and per-position draft agreement over batches (fixed insertion points;
        on several processes, each gives its own rows of every batch)."""
        self.sync()
        key = jax.random.key(seed)
        state = nnx.state(self.model)
        with jax.set_mesh(self.mesh):
            results = [
                self._eval(
                    state,
                    self._global(batch),
                    jax.random.fold_in(key, i),
                    num_insertions=num_insertions,
                )
                for i, batch in enumerate(batches)
            ]
        if not results:
            raise ValueError("evaluate needs at least one batch")
        means = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *results)
        return {k: v.tolist() if np.ndim(v) else float(v) for k, v in means.items()}
