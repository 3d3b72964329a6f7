"""Runs an experiment: the tokenizer (stage 0), then the configured training stages in order.

The workdir's layout is `pass_jax.io.workdir`'s. With `config.hf_dir`, the tokenizer is the
Hugging Face directory's and the base its weights.

Each stage starts from the latest checkpoint of the stage before it (the first from
`train.init_from`, `hf_dir`, or a fresh initialisation): its base weights and table. Only the
`adapters` stage's model has lookahead adapters (`StageConfig.model_config`): it starts them
fresh, and the stage after it starts without them. Or a stage resumes from its own latest
checkpoint: weights, optimizer state and data position are restored, and the insertion points
are drawn from the data seed and the step, so the resumed run continues exactly as if never
stopped. A
finished and evaluated stage is skipped. SIGINT / SIGTERM during training save a checkpoint and
raise `TrainingInterrupted`; during evaluation they raise it at once, and the rerun evaluates.

Each checkpoint records the tokenizer's fingerprint and what the stage was trained from
(`stage_inputs`: the previous stage's step and identity, and the config that shapes the stage);
a stage whose checkpoints were trained from other inputs is a `StaleStageError`, or with
`train.retrain_stale` trained again from scratch, never reused.

After each stage: held-out LM and lookahead losses (teacher forced), and the acceptance rate
per lookahead position measured by greedy PaSS decoding of held-out prompts with `generate`,
for the trained table (`pass`) and the untrained UNK table (`pass_unk`).

Training runs on the mesh `exp.mesh.train_shape` over every device (one device: a 1x1x1 mesh):
the model is created and restored straight into its shardings, and `data.batch_size` is the
global batch. On several hosts every host runs this same loop: each reads its own shard of the
data (`batch_size / process_count` rows a step, assembled into global arrays), orbax writes the
checkpoints from all of them, and only process 0 trains the tokenizer, writes metrics and prints.
The workdir must then be one filesystem that every host mounts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from pass_jax import distributed, sharding
from pass_jax.config import ADAPTER_FIELDS, SHARING_FIELDS, ModelConfig
from pass_jax.data.batches import (
    BatchIterator,
    concat_rows,
    iterate_tokens,
    make_iterator,
    spread_batches,
)
from pass_jax.data.config import DataConfig
from pass_jax.data.prompts import config_prompts
from pass_jax.data.sources import make_source
from pass_jax.data.tokens import load_token_stream
from pass_jax.experiment import FROZEN_BASE_STAGES, ExperimentConfig
from pass_jax.io.checkpoint import (
    CheckpointError,
    CheckpointStore,
    abstract_tree,
    assign_params,
    load_params,
    split_params,
)
from pass_jax.io.head import save_head
from pass_jax.io.hf import load_hf_llama
from pass_jax.io.workdir import (
    TOKENIZER_FILE,
    check_tokenizer,
    stage_checkpoints,
    stage_generations,
    stage_head,
)
from pass_jax.model import Transformer, unk_lookahead_table
from pass_jax.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from pass_jax.training import generations
from pass_jax.training.evaluation import measure_acceptance
from pass_jax.training.metrics import MetricsWriter, read_records
from pass_jax.training.trainer import Trainer


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; rerun the same command to resume."""

    def __init__(self, signum: int, stage: str, step: int):
        super().__init__(f"{signal.Signals(signum).name} at stage {stage} step {step}")
        self.signum = signum


class StaleStageError(CheckpointError):
    """A stage's checkpoints were trained from other inputs than the current ones."""

    def __init__(self, stage: str, change: str, directory: Path):
        super().__init__(
            f"stage {stage} {change}: delete {directory} to train it again, or rerun with "
            "--config.train.retrain_stale=true"
        )
        self.change = change


# DataConfig fields that say where the data is read from or cached, not what it is.
_DATA_PLACE_FIELDS = ("cache_dir", "tfds_data_dir", "shard_index", "shard_count")


def stage_inputs(
    exp: ExperimentConfig, index: int, model: ModelConfig, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """What stage `index` is trained from, as its checkpoints record it (JSON values): `from`,
    the previous stage's name, step and `stage_identity` (None for the first stage), and the
    config values that shape it, by name (not its step count: a finished stage given more
    steps resumes). `model` is the stage's model; without adapters, or without parameter
    sharing, their fields shape nothing and are left out, as an `early_weight` of 0 (runs from
    before they existed record none)."""
    stage = exp.stages[index]
    values = {
        f"config.{stage.name}.{k}": v
        for k, v in dataclasses.asdict(stage).items()
        if k not in ("name", "steps") and not (k == "early_weight" and v == 0)
    }
    unused = (*(() if model.adapter_rank else ADAPTER_FIELDS),
              *(() if model.n_repeats > 1 else SHARING_FIELDS))  # fmt: skip
    values.update({f"config.model.{k}": v for k, v in model.to_dict().items() if k not in unused})
    data = dataclasses.asdict(exp.data).items()
    values.update({f"config.data.{k}": v for k, v in data if k not in _DATA_PLACE_FIELDS})
    if previous is None:
        values.update(
            {
                "config.seed": exp.seed,
                "config.hf_dir": exp.hf_dir,
                "config.train.init_from": exp.train.init_from,
            }
        )
    return json.loads(json.dumps({"from": previous, **values}))


def stage_identity(inputs: dict[str, Any]) -> str:
    """A hash of a stage's `stage_inputs`: the stage after it records it."""
    return hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _input_change(stored: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """How a stage's recorded `stage_inputs` differ from the current ones, in words (None: they
    do not)."""
    if stored is None:
        return "records no inputs (saved by an older pass-jax)"
    before, now = stored.get("from"), current["from"]
    if before != now:
        if before is None or now is None or before["stage"] != now["stage"]:
            was, runs = (
                f"after {s['stage']}" if s else "as the first stage" for s in (before, now)
            )
            return f"was trained {was}, now runs {runs}"
        if before["step"] != now["step"]:
            return (
                f"was trained on {before['stage']} step {before['step']}, but "
                f"{before['stage']} is now at step {now['step']}"
            )
        return f"was trained on another {before['stage']} (trained again, or from other inputs)"
    for key in sorted((stored.keys() | current.keys()) - {"from"}):
        if stored.get(key) != current.get(key):
            return f"was trained with {key}={stored.get(key)!r}, now {current.get(key)!r}"
    return None


def prepare_tokenizer(exp: ExperimentConfig, workdir: Path) -> Tokenizer:
    """Stage 0: the configured tokenizer, or one trained on the train split into the workdir
    (by process 0; the others wait for it)."""
    if exp.tokenizer.path:
        return load_tokenizer(exp.tokenizer.path)
    path = workdir / TOKENIZER_FILE
    if distributed.is_main() and not path.is_file():
        start = time.perf_counter()
        documents = itertools.islice(make_source(exp.data), exp.data.max_documents)
        tokenizer = train_tokenizer(
            documents,
            vocab_size=exp.tokenizer.vocab_size,
            output_path=path,
            max_train_bytes=exp.tokenizer.max_train_bytes,
        )
        elapsed = time.perf_counter() - start
        print(f"tokenizer: trained {tokenizer.vocab_size} pieces in {elapsed:.1f}s")
    distributed.barrier("tokenizer")
    return load_tokenizer(path)


def host_data(config: DataConfig) -> DataConfig:
    """This process's share of the data: `batch_size` is the global batch, of which each of the
    `jax.process_count()` processes reads an equal part from its own shard."""
    count = jax.process_count()
    if config.batch_size % count:
        raise ValueError(f"data.batch_size={config.batch_size} does not split over {count} hosts")
    return dataclasses.replace(config, batch_size=config.batch_size // count)


@dataclasses.dataclass
class HeldOut:
    """Held-out batches for the losses and prompts for the acceptance measurement."""

    batches: list[np.ndarray]  # each [B, T] int32
    prompts: list[list[int]]
    bytes_per_token: float = 0.0  # UTF-8 bytes of the batches' text per token (0: no batches)

    @classmethod
    def build(cls, exp: ExperimentConfig, tokenizer: Tokenizer) -> HeldOut:
        config = host_data(exp.data)
        config = dataclasses.replace(config, split=exp.eval.split, shuffle=False, num_epochs=1)
        held_out = cls(batches=[], prompts=[])
        if exp.eval.loss_sequences:
            tokens, _ = load_token_stream(config, tokenizer)
            try:
                held_out.batches = spread_batches(
                    tokens,
                    seq_len=config.seq_len,
                    num_sequences=exp.eval.loss_sequences,
                    batch_size=config.batch_size,
                    shard_index=config.shard_index,
                    shard_count=config.shard_count,
                )
            except ValueError as e:
                raise ValueError(
                    f"held-out split {config.split!r} of the {config.source} corpus: {e}; lower "
                    "config.eval.loss_sequences or point config.data at a larger corpus"
                ) from e
            num_bytes = sum(
                len(tokenizer.decode(row.tolist()).encode()) for b in held_out.batches for row in b
            )
            held_out.bytes_per_token = num_bytes / sum(b.size for b in held_out.batches)
        if exp.eval.num_prompts:
            held_out.prompts = config_prompts(
                config, tokenizer, num_prompts=exp.eval.num_prompts, prompt_len=exp.eval.prompt_len
            ).tolist()
        return held_out


@contextlib.contextmanager
def _on_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """While active, SIGINT and SIGTERM call `handler`; the previous handlers come back after."""
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def _signals_caught() -> Iterator[Callable[[], int | None]]:
    """While active, SIGINT and SIGTERM are recorded instead of acted on; yields a poll."""
    received: list[int] = []
    with _on_signals(lambda signum, _: received.append(signum)):
        yield lambda: received[0] if received else None


def load_hf_weights(model: Transformer, hf_dir: str) -> None:
    """Sets the model's base weights (and UNK-initialised table) to the Hugging Face checkpoint
    `hf_dir`'s, into the model's shardings."""
    c = model.config
    loaded = load_hf_llama(
        hf_dir,
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        max_lookahead=c.max_lookahead,
        scan_layers=c.scan_layers,
        max_seq_len=c.max_seq_len,
        unk_id=c.unk_id,
    )
    target = split_params(model)
    placed = {
        name: jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), weights, target[name])
        for name, weights in split_params(loaded).items()
    }
    assign_params(model, placed)


def reset_lookahead_to_unk(model: Transformer) -> None:
    """The paper's initialisation: every lookahead row set to the UNK token's embedding."""
    table = model.lookahead[...]
    rows = unk_lookahead_table(model.embed[...], model.config.unk_id, table.shape[0])
    model.lookahead[...] = jax.device_put(rows.astype(table.dtype), table.sharding)


def evaluate(model: Transformer, trainer: Trainer, exp: ExperimentConfig, held_out: HeldOut):
    """Held-out losses, greedy PaSS acceptance for the trained and the UNK table, and greedy
    SPEED's for a parameter-shared model."""
    results: dict[str, Any] = {}
    if held_out.batches:
        k = exp.eval.num_insertions
        results.update(trainer.evaluate(held_out.batches, num_insertions=k, seed=exp.seed))
        # Per byte: comparable across tokenizers.
        results["lm_loss_per_byte"] = results["lm_loss"] / held_out.bytes_per_token
        results["bytes_per_token"] = held_out.bytes_per_token
    methods = ("pass", "pass_unk") if model.has_lookahead else ()
    methods += ("speed",) if model.config.n_repeats > 1 else ()
    if held_out.prompts:
        for method in methods:
            measured = measure_acceptance(
                model, held_out.prompts, max_new_tokens=exp.eval.max_new_tokens, method=method
            )
            results.update({f"{method}/{k}": v for k, v in measured.items()})
    return results


def _format_eval(stage: str, results: dict[str, Any]) -> str:
    lines = []
    if "lm_loss" in results:
        lines.append(
            f"[{stage}] held-out lm_loss {results['lm_loss']:.4f} nats/token "
            f"({results['lm_loss_per_byte']:.4f} nats/byte)"
        )
    if "la_ce" in results:
        lines[0] += f"  la_ce {results['la_ce']:.4f}  la_kl {results['la_kl']:.4f}"
        match = " ".join(f"{x:.3f}" for x in results["la_match"])
        lines.append(f"[{stage}] teacher-forced draft agreement by position: {match}")
    if "early_loss" in results:
        lines.append(
            f"[{stage}] early prediction: held-out loss {results['early_loss']:.4f}, "
            f"teacher-forced agreement with the model's argmax {results['early_match']:.3f}"
        )
    for method in ("pass", "pass_unk", "speed"):
        if f"{method}/tau" in results:
            accept = " ".join(f"{x:.3f}" for x in results[f"{method}/acceptance_by_position"])
            per_window = results[f"{method}/accepted_per_window"]
            lines.append(
                f"[{stage}] greedy {method}: acceptance by position {accept}  "
                f"accepted/window {per_window:.3f}  tau {results[f'{method}/tau']:.3f}"
            )
    return "\n".join(lines)


class StageRunner:
    """Trains one stage with progress bar, metrics, checkpoints, resume and signal handling;
    `inputs` are the stage's `stage_inputs`."""

    def __init__(
        self,
        exp: ExperimentConfig,
        index: int,
        model: Transformer,
        tokenizer: Tokenizer,
        workdir: Path,
        writer: MetricsWriter,
        mesh: jax.sharding.Mesh,
        inputs: dict[str, Any],
    ):
        self.exp, self.stage, self.model, self.writer = exp, exp.stages[index], model, writer
        self.tokenizer, self.inputs = tokenizer, inputs
        self.trainer = Trainer(
            model,
            self.stage,
            seed=exp.data.seed + index,
            mesh=mesh,
            row_groups=exp.train.row_groups,
        )
        self.store = CheckpointStore(
            stage_checkpoints(workdir, self.stage.name), max_to_keep=exp.train.max_to_keep
        )
        data_config = dataclasses.replace(host_data(exp.data), seed=exp.data.seed + index)
        self._data_source = (data_config, tokenizer, workdir)
        self.iterator: BatchIterator | None = None  # built by `restore`
        self.train_s = 0.0

    def _make_iterator(
        self, config: DataConfig, tokenizer: Tokenizer, workdir: Path
    ) -> BatchIterator:
        """The stage's batches: corpus rows, then (distill; adapters and joint with a generation
        share) the model's continuations of prompts cut from the stage's corpus stream."""
        stage = self.stage
        corpus = make_iterator(config, tokenizer)
        num_generated = stage.generated_rows(config.batch_size)
        if not num_generated:
            return corpus
        if jax.process_count() > 1:
            raise ValueError(f"stage {stage.name} generates on one process (not multi-host)")
        prompts = []
        while len(prompts) < stage.generations:
            prompts.extend(next(corpus)[:, : stage.generation_prompt_len])
        generated, key = generations.load_or_generate(
            stage_generations(workdir, stage.name),
            self.model,
            np.stack(prompts[: stage.generations]),
            seq_len=config.seq_len,
            temperature=stage.generation_temperature,
            top_k=0 if stage.generation_temperature == 0 else 10,
            seed=config.seed,
        )
        rows = iterate_tokens(
            generated.reshape(-1), key, dataclasses.replace(config, batch_size=num_generated)
        )
        if num_generated == config.batch_size:
            return rows
        corpus_config = dataclasses.replace(config, batch_size=config.batch_size - num_generated)
        return concat_rows([make_iterator(corpus_config, tokenizer), rows])

    def _items(self) -> dict[str, Any]:
        """Everything a training checkpoint holds but the metadata, as pure dicts."""
        return {**split_params(self.model), "opt_state": nnx.to_pure_dict(self._optimizer_state())}

    def _optimizer_state(self) -> nnx.State:
        return nnx.state(self.trainer.optimizer)

    def restore(self) -> bool:
        """Resumes from this stage's newest intact checkpoint; False when it has none.

        The data iterator is built first, from the weights the stage starts from (its
        generations depend on them); a finished stage has none, so it never loads or generates
        its data again.
        """
        restored, meta = None, {"step": 0}
        if self.store.latest_step is not None:  # into the shardings
            restored, meta = self.store.restore(abstract_tree(self._items()))
            self._check_inputs(meta)
        if meta["step"] < self.stage.steps:
            self.iterator = self._make_iterator(*self._data_source)
        if restored is None:
            return False
        opt_state = self._optimizer_state()
        nnx.replace_by_pure_dict(opt_state, restored.pop("opt_state"))
        nnx.update(self.trainer.optimizer, opt_state)
        assign_params(self.model, restored)
        # Process 0's position; its fingerprint checks the stream there, the others follow.
        data_state = meta["data"] if distributed.is_main() else {"step": meta["data"]["step"]}
        if self.iterator is not None:
            self.iterator.set_state(data_state)
        self.train_s = meta["train_s"]
        return True

    def _check_inputs(self, meta: dict[str, Any]) -> None:
        """Raises when the restored checkpoint was trained with another tokenizer or from other
        inputs (`StaleStageError`)."""
        check_tokenizer(meta, self.store.directory / str(meta["step"]), self.tokenizer)
        change = _input_change(meta.get("inputs"), self.inputs)
        if change:
            raise StaleStageError(self.stage.name, change, self.store.directory)

    def save(self) -> None:
        self.trainer.sync()
        meta = {
            "stage": self.stage.name,
            "step": self.trainer.step,
            "data": self.iterator.get_state(),
            "model": self.model.config.to_dict(),
            "train_s": self.train_s,
            "tokenizer": self.tokenizer.fingerprint,
            "inputs": self.inputs,
        }
        self.store.save(self.trainer.step, self._items(), meta)

    def train(self) -> None:
        stage, every = self.stage, self.exp.train
        bar = tqdm(
            total=stage.steps,
            initial=self.trainer.step,
            desc=stage.name,
            unit="step",
            disable=not distributed.is_main(),
        )
        tokens_per_step = self.exp.data.batch_size * self.exp.data.seq_len
        window_start, window_steps = None, 0  # tokens/s excludes the first (compiling) step
        queued = None  # the step before this one, while it may still run
        with _signals_caught() as stop_signal, bar:
            while self.trainer.step < stage.steps:
                step_start = time.perf_counter()
                metrics = self.trainer.train_step(next(self.iterator))
                if window_start is None:
                    jax.block_until_ready(metrics)
                    window_start = time.perf_counter()
                else:
                    window_steps += 1
                # At most one step ahead of the device (it stays busy with this one): a signal
                # stops training within a step, not after every step dispatched ahead of it.
                jax.block_until_ready(queued)
                queued = metrics
                step = self.trainer.step
                if step % every.log_every == 0 or step == stage.steps:
                    values = {k: np.asarray(v).tolist() for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    values["tokens_per_s"] = tokens_per_step * window_steps / (now - window_start)
                    window_start, window_steps = now, 0
                    self.writer.write("train", stage.name, step, values)
                    bar.set_postfix(
                        loss=f"{values['loss']:.3f}",
                        tok_s=f"{values['tokens_per_s']:.0f}",
                        lr=f"{values['lr']:.2e}",
                    )
                self.train_s += time.perf_counter() - step_start
                bar.update(1)
                signum = stop_signal()
                if step % every.checkpoint_every == 0 or step == stage.steps or signum:
                    self.save()
                if signum:
                    self.store.wait()
                    raise TrainingInterrupted(signum, stage.name, step)
        self.trainer.sync()
        self.store.wait()

    def close(self) -> None:
        self.store.close()


def _open_stage(exp: ExperimentConfig, index: int, *args: Any) -> tuple[StageRunner, bool]:
    """Stage `index`'s runner (`StageRunner(exp, index, *args)`) and whether it resumed from its
    checkpoints; stale ones are an error, or with `train.retrain_stale` deleted first."""
    runner = StageRunner(exp, index, *args)
    try:
        return runner, runner.restore()
    except StaleStageError as e:
        runner.close()
        if not exp.train.retrain_stale:
            raise
        distributed.main_print(f"[{runner.stage.name}] {e.change}: training it again from scratch")
        if distributed.is_main():
            shutil.rmtree(runner.store.directory)
        distributed.barrier(f"retrain {runner.stage.name}")
    except BaseException:
        runner.close()
        raise
    return _open_stage(exp, index, *args)  # no checkpoints now: starts afresh


def _evaluated(workdir: Path, stage: str, step: int) -> bool:
    """Whether metrics.jsonl holds the evaluation of `stage` at `step`."""
    return any(
        (r.get("event"), r.get("stage"), r.get("step")) == ("eval", stage, step)
        for r in read_records(workdir)
    )


@contextlib.contextmanager
def _signals_raise(stage: str, step: int) -> Iterator[None]:
    """While active, SIGINT and SIGTERM raise `TrainingInterrupted` at once."""

    def interrupt(signum: int, _: Any) -> None:
        raise TrainingInterrupted(signum, stage, step)

    with _on_signals(interrupt):
        yield


def run(
    exp: ExperimentConfig, workdir: str | Path, *, reevaluate: bool = False
) -> dict[str, dict[str, Any]]:
    """Runs (or resumes) every stage of `exp` in `workdir`; returns each evaluated stage's results.

    A finished stage is evaluated if it was not (its record in metrics.jsonl), else skipped,
    or with `reevaluate` evaluated again (e.g. after a change to `exp.eval`) without training.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(exp, workdir)
    if exp.hf_dir:  # the HF config's vocabulary (it may pad the tokenizer's) and unk row
        unk_id = tokenizer.unk_id if tokenizer.unk_id >= 0 else exp.model.unk_id
        config = exp.model.replace(unk_id=unk_id)
    else:
        config = exp.model.replace(vocab_size=tokenizer.vocab_size, unk_id=max(tokenizer.unk_id, 0))
    mesh = sharding.make_mesh(exp.mesh.train_shape, exp.mesh.axes)
    first = exp.stages[0].model_config(config)
    model = sharding.create_sharded(lambda: Transformer(first, rngs=nnx.Rngs(exp.seed)), mesh)
    if exp.hf_dir:
        load_hf_weights(model, exp.hf_dir)
    if exp.train.init_from:
        meta = load_params(model, exp.train.init_from)  # into the model's shardings
        check_tokenizer(meta, exp.train.init_from, tokenizer)
    held_out = HeldOut.build(exp, tokenizer)
    writer = MetricsWriter(workdir, enabled=distributed.is_main())
    results: dict[str, dict[str, Any]] = {}
    table_trained = False
    previous = None  # the previous stage's name, step and identity
    with contextlib.closing(writer):
        for index, stage in enumerate(exp.stages):
            adapters = stage.model_config(config)  # only the adapters stage has them
            rngs = nnx.Rngs(exp.seed)
            model.set_adapters(
                adapters.adapter_rank, adapters.adapter_targets, adapters.adapter_gate, rngs=rngs
            )
            if index:
                load_params(model, stage_checkpoints(workdir, exp.stages[index - 1].name))
            inputs = stage_inputs(exp, index, model.config, previous)
            args = (model, tokenizer, workdir, writer, mesh, inputs)
            runner, resumed = _open_stage(exp, index, *args)
            with contextlib.closing(runner):
                step = runner.trainer.step
                if resumed:
                    distributed.main_print(f"[{stage.name}] resumed at step {step}")
                writer.drop_after(stage.name, step)  # records of a run killed after this step
                start = time.perf_counter()
                finished = step >= stage.steps
                evaluated = finished and _evaluated(workdir, stage.name, step)
                if finished:
                    action = "evaluating again" if reevaluate else "skipped"
                    action = action if evaluated else "not evaluated yet: evaluating"
                    distributed.main_print(
                        f"[{stage.name}] already finished ({stage.steps} steps): {action}"
                    )
                else:
                    if not resumed and stage.name in FROZEN_BASE_STAGES and not table_trained:
                        reset_lookahead_to_unk(model)
                    runner.train()
            step = runner.trainer.step
            previous = {"stage": stage.name, "step": step, "identity": stage_identity(inputs)}
            table_trained = table_trained or stage.trains_table
            head = stage_head(workdir, stage.name)
            if stage.trains_table and not (finished and head.is_dir()):
                save_head(model, head, tokenizer=tokenizer)
            if evaluated and not reevaluate:
                continue
            try:
                with _signals_raise(stage.name, step):
                    result = evaluate(model, runner.trainer, exp, held_out)
            except TrainingInterrupted:
                distributed.main_print(
                    f"interrupted during evaluation of stage {stage.name}; rerun to evaluate it"
                )
                raise
            result.update(train_s=runner.train_s, wall_s=time.perf_counter() - start)
            writer.write("eval", stage.name, step, result)
            distributed.main_print(_format_eval(stage.name, result))
            distributed.main_print(
                f"[{stage.name}] {runner.train_s:.0f}s in training steps; "
                f"{result['wall_s']:.0f}s wall in this run, evaluation included"
            )
            results[stage.name] = result
    return results
