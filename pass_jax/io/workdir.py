"""Where a training workdir keeps things, and loading them back.

tokenizer.model              trained here unless `config.tokenizer.path` names one
checkpoints/<stage>/<step>/  params, lookahead, adapters, opt_state, meta (`io.checkpoint`)
heads/<stage>/               the stage's PaSS head (table, and adapters), when it trains the table
                             (`io.head`)
generations/<stage>/         the model's own continuations (stages distill, adapters, joint)
metrics.jsonl                train / eval / stage records
tensorboard/                 the same scalars for TensorBoard
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from flax import nnx

from pass_jax.config import ModelConfig
from pass_jax.experiment import ExperimentConfig
from pass_jax.io.checkpoint import (
    CheckpointError,
    finished_steps,
    load_params,
    read_meta,
    step_dir,
)
from pass_jax.model import Transformer, loop_layers
from pass_jax.tokenizer import MODEL_FILENAME, Tokenizer, load_tokenizer

TOKENIZER_FILE = MODEL_FILENAME
CHECKPOINTS_DIR = "checkpoints"
HEADS_DIR = "heads"
GENERATIONS_DIR = "generations"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def stage_checkpoints(workdir: str | Path, stage: str) -> Path:
    """The checkpoint directory of a stage (one step directory per saved step)."""
    return Path(workdir) / CHECKPOINTS_DIR / stage


def stage_head(workdir: str | Path, stage: str) -> Path:
    """The PaSS head directory a table-training stage exports (with the adapters, if any)."""
    return Path(workdir) / HEADS_DIR / stage


def stage_generations(workdir: str | Path, stage: str) -> Path:
    """The model's own continuations a stage trains on."""
    return Path(workdir) / GENERATIONS_DIR / stage


def experiment_tokenizer(exp: ExperimentConfig, workdir: str | Path | None) -> Tokenizer:
    """The experiment's tokenizer: `config.tokenizer.path`, else the one trained in `workdir`."""
    if exp.tokenizer.path:
        return load_tokenizer(exp.tokenizer.path)
    if workdir is None:
        raise ValueError("no tokenizer: set config.tokenizer.path or give --workdir")
    return load_tokenizer(Path(workdir) / TOKENIZER_FILE)


def find_checkpoint(exp: ExperimentConfig, workdir: str | Path | None, stage: str | None) -> Path:
    """The newest intact step of `stage`, or of the last configured stage that has one (a stage
    whose steps are all damaged is skipped with a warning)."""
    if workdir is None:
        raise ValueError("give --workdir or --checkpoint")
    names = [stage] if stage else [s.name for s in reversed(exp.stages)]
    damaged = []
    for name in names:
        directory = stage_checkpoints(workdir, name)
        if not finished_steps(directory):
            continue
        try:
            found = step_dir(directory)
        except CheckpointError as e:
            damaged.append(str(e))
            continue
        for problem in damaged:
            warnings.warn(f"{problem}; using stage {name}", stacklevel=2)
        return found
    raise CheckpointError(
        f"no intact checkpoint of stage(s) {names} under {workdir}/{CHECKPOINTS_DIR}"
        + "".join(f"; {problem}" for problem in damaged)
    )


def check_tokenizer(meta: dict[str, Any], checkpoint: str | Path, tokenizer: Tokenizer) -> None:
    """Raises `CheckpointError` when the checkpoint's metadata `meta` records another tokenizer
    than `tokenizer` (checkpoints that record none pass)."""
    stored = meta.get("tokenizer")
    if stored is not None and stored != tokenizer.fingerprint:
        raise CheckpointError(
            f"checkpoint {checkpoint} was trained with tokenizer {stored[:12]}, but "
            f"{tokenizer.path} is tokenizer {tokenizer.fingerprint[:12]}: use the tokenizer it "
            "was trained with (config.tokenizer.path, or the workdir's tokenizer.model)"
        )


def load_model(
    checkpoint: str | Path, *, tokenizer: Tokenizer | None = None, dtype: str | None = None
) -> Transformer:
    """A model built from a checkpoint's stored config, with its weights, laid out for decoding
    (scanned layers looped: `model.loop_layers`); `dtype` overrides the stored compute dtype,
    and the matmuls then take their operands in it too. With `tokenizer`, a checkpoint trained
    with another one is a `CheckpointError` (`check_tokenizer`)."""
    directory = step_dir(checkpoint)
    meta = read_meta(directory)
    if tokenizer is not None:
        check_tokenizer(meta, directory, tokenizer)
    override = {"dtype": dtype, "matmul_dtype": None} if dtype else {}
    model = Transformer(ModelConfig.from_dict({**meta["model"], **override}), rngs=nnx.Rngs(0))
    load_params(model, directory)
    return loop_layers(model)
