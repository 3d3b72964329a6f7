"""The training experiment's configuration: an `ml_collections.ConfigDict` checked into dataclasses.

Layout (see `configs/tiny.py`):

    seed                     model initialisation
    hf_dir                   optional: a Hugging Face LLaMA directory to start from: the model's
                             shapes come from its config.json (the model section then sets only
                             dtypes, layout and max_lookahead/max_seq_len), the tokenizer and the
                             base weights are its own (see configs/hf_head.py)
    model                    ModelConfig fields (vocab_size and unk_id come from the tokenizer)
    tokenizer                path (an existing tokenizer) or vocab_size + max_train_bytes
                             to train one on the data's train split (stage 0)
    data                     pass_jax.data DataConfig fields (source, seq_len, batch_size, seed, ..)
    stages                   comma-separated stages to run, in order (`STAGES`)
    base, lookahead, ..      StageConfig fields of each stage
    train                    TrainConfig: logging, checkpointing, initial weights
    eval                     EvalConfig: held-out loss and acceptance measurement
    mesh                     MeshConfig: device meshes for training and decoding (optional)
    decode                   DecodeConfig: the decoding shape `--dry_run` compiles (optional)

Every section is checked against its dataclass: an unknown or misspelt key is a `ValueError`
naming it, raised before anything is built or compiled.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from pass_jax.config import ModelConfig
from pass_jax.data.config import DataConfig

# This module is what config files import: it imports nothing heavy (no model, optax, losses or
# grain), so it owns the names those modules check against.
STAGES = ("base", "lookahead", "distill", "adapters", "joint")
FROZEN_BASE_STAGES = ("lookahead", "distill", "adapters")  # they train the PaSS head alone
LOOKAHEAD_LOSSES = ("ce", "kl")  # cross-entropy to the data, KL to the model's own outputs
MESH_AXES = ("data", "fsdp", "tensor")  # the device mesh's axis names (`pass_jax.sharding`)


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One training stage.

    - `base`: pretraining; all base weights trained on next-token cross-entropy. With
      `lookahead_weight > 0` it is *lookahead-aware* base training: LM loss + weight * lookahead
      loss, table and base trained together.
    - `lookahead`: the paper's recipe: base frozen, only the lookahead table trained, on the
      lookahead loss alone.
    - `distill`: like `lookahead`, but on the model's own continuations of `generations`
      corpus prompts of `generation_prompt_len` tokens (greedy at `generation_temperature` 0,
      else sampled with top-k 10), generated at the start of the stage
      (`pass_jax.training.generations`): the table learns to draft what the model writes.
    - `adapters`: base frozen, the table and the lookahead adapters (`config.model.adapter_*`,
      acting at lookahead slots only) trained on the lookahead loss, on `generation_share` of
      each batch's rows the model's own continuations (generated as for `distill`; the other
      rows from the corpus). The model's outputs at token positions stay exactly the base's.
      Only this stage's model has the adapters; the stages after it start from its base and
      table.
    - `joint`: a fine-tune of an existing base with LM loss + weight * lookahead loss, all
      weights trained (changes the base model; decoding stays lossless). With
      `generation_share > 0`, that share of each batch's rows are the model's own
      continuations (generated as for `distill`, from the base the stage starts from): the
      lookahead loss runs on every row, the LM loss on the corpus rows only, so the base keeps
      learning the corpus while its lookahead outputs learn to draft what it writes. Measured
      at share 0.5 (greedy continuations): on `configs/small.py` (80 prompts) greedy draft-1
      acceptance 0.50 against 0.27 without, held-out loss 4.175 against 4.106; on
      `configs/tiny.py` (32 prompts) 0.11 against 0.13 and 5.30 against 5.19, so it is off
      by default. In a 125-step fine-tune of `small`, share 0.75 gave 0.26-0.34 (two data
      seeds) against 0.21 at 0.5.

    `early_weight > 0` (a parameter-shared model, `model.n_repeats > 1`; stages that train the
    base) adds weight * the early prediction's next-token cross-entropy (`losses.compute_losses`):
    the draft of SPEED (`pass_jax.decode.speed`).
    `lookahead_loss` is `"ce"` (cross-entropy against the data: the paper's recipe) or `"kl"`
    (distillation to the model's own text outputs); `default_config` gives `joint` the KL,
    which on `configs/small.py` beat the cross-entropy in greedy acceptance (0.19 against 0.13)
    at an equal held-out loss.
    The learning rate warms up linearly for `warmup_steps`, then follows a cosine to
    `end_lr_ratio * learning_rate`. `num_insertions` lookahead blocks are appended per sequence.
    """

    name: str
    steps: int
    learning_rate: float
    warmup_steps: int = 0
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lookahead_weight: float = 0.0
    num_insertions: int = 1
    lookahead_loss: str = "ce"
    generations: int = 256
    generation_temperature: float = 0.0
    generation_prompt_len: int = 32
    generation_share: float = 0.0
    early_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in STAGES:
            raise ValueError(f"unknown stage {self.name!r}; stages are {STAGES}")
        if self.steps < 1 or self.learning_rate <= 0:
            raise ValueError(f"stage {self.name}: steps and learning_rate must be positive")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"stage {self.name}: warmup_steps must be in [0, steps)")
        if self.lookahead_weight < 0 or self.num_insertions < 1:
            raise ValueError(f"stage {self.name}: need lookahead_weight >= 0, num_insertions >= 1")
        if self.name in FROZEN_BASE_STAGES and self.lookahead_weight <= 0:
            raise ValueError(
                f"stage {self.name} trains on the lookahead loss: lookahead_weight > 0"
            )
        if (
            self.generations < 1
            or self.generation_prompt_len < 1
            or self.generation_temperature < 0
        ):
            raise ValueError(
                f"stage {self.name}: need generations >= 1, generation_prompt_len >= 1 and "
                "generation_temperature >= 0"
            )
        share, whole = self.generation_share, self.name == "adapters"  # joint needs corpus rows
        if not (0 <= share <= 1 if whole else 0 <= share < 1):
            interval = "[0, 1]" if whole else "[0, 1)"
            raise ValueError(
                f"stage {self.name}: generation_share must be in {interval}, got "
                f"{self.generation_share}"
            )
        if self.generation_share and self.name not in ("joint", "adapters"):
            raise ValueError(
                f"stage {self.name}: generation_share is a `joint` and `adapters` option "
                "(`distill` trains on generations alone; `base` and `lookahead` on the corpus)"
            )
        if self.early_weight < 0 or (self.early_weight and not self.trains_base):
            raise ValueError(
                f"stage {self.name}: early_weight={self.early_weight} must be >= 0, and 0 in the "
                f"frozen-base stages {FROZEN_BASE_STAGES} (the early prediction is the base's)"
            )
        if self.lookahead_loss not in LOOKAHEAD_LOSSES:
            raise ValueError(
                f"stage {self.name}: lookahead_loss {self.lookahead_loss!r} is not one of "
                f"{LOOKAHEAD_LOSSES}"
            )

    def generated_rows(self, batch_size: int) -> int:
        """How many of a batch's rows (the last ones) are the model's own continuations:
        every row for `distill`, `generation_share` of them otherwise."""
        if self.name == "distill":
            return batch_size
        return round(batch_size * self.generation_share)

    @property
    def trains_base(self) -> bool:
        return self.name not in FROZEN_BASE_STAGES

    @property
    def trains_table(self) -> bool:
        return self.lookahead_weight > 0

    @property
    def trains_adapters(self) -> bool:
        return self.name == "adapters"

    @property
    def lm_weight(self) -> float:
        return 0.0 if self.name in FROZEN_BASE_STAGES else 1.0

    def model_config(self, model: ModelConfig) -> ModelConfig:
        """The model this stage trains: `model` with its lookahead adapters in the `adapters`
        stage, without them (rank 0) in the others."""
        return model if self.trains_adapters else model.replace(adapter_rank=0)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """An existing tokenizer (`path`: a tokenizer.json or SentencePiece file, or a directory
    holding one; `pass_jax.tokenizer.load_tokenizer`), or a SentencePiece model trained on the
    corpus into the workdir."""

    path: str | None = None
    vocab_size: int = 8192
    max_train_bytes: int = 20_000_000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Logging, checkpointing and the train step's layout.

    `init_from`: a checkpoint whose weights start the first stage. `row_groups`: the step runs
    the layers on that many independent groups of a batch's rows (`losses.compute_losses`; the
    same losses): 1 on accelerators; on CPU a few groups keep XLA's threads busy.
    `retrain_stale`: a stage whose checkpoints were trained from other inputs (an earlier stage
    trained further or again, or a changed config section) has them deleted and is trained
    again from scratch; without it such a stage is an error.
    """

    log_every: int = 10
    checkpoint_every: int = 200
    max_to_keep: int = 2
    init_from: str | None = None
    row_groups: int = 1
    retrain_stale: bool = False

    def __post_init__(self) -> None:
        if self.max_to_keep < 1:
            raise ValueError(
                f"config.train.max_to_keep={self.max_to_keep} must be at least 1 (the newest "
                "checkpoints kept per stage; 0 would delete every one)"
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation after each stage.

    `loss_sequences` packed sequences spread evenly over the `split` (a multiple of
    `data.batch_size`, the same set for any batch size) give the held-out LM and lookahead
    losses; greedy PaSS decoding of `num_prompts` prompts (the first `prompt_len` tokens of
    held-out documents) for `max_new_tokens` tokens gives the acceptance rate per lookahead
    position. The held-out lookahead losses use `num_insertions` blocks per sequence at fixed
    insertion points. `loss_sequences=0` / `num_prompts=0` skip the losses / the acceptance
    measurement.
    """

    split: str = "validation"
    loss_sequences: int = 256
    num_insertions: int = 8
    num_prompts: int = 16
    prompt_len: int = 32
    max_new_tokens: int = 128


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device meshes over `axes` (`sharding.make_mesh`); one size of a shape may be -1 (every
    remaining device). By default training is FSDP over all devices (batch and weights split on
    `fsdp`: on one device, a 1x1x1 mesh) and decoding tensor parallel."""

    axes: tuple[str, ...] = MESH_AXES
    train_shape: tuple[int, ...] = (1, -1, 1)
    decode_shape: tuple[int, ...] = (1, 1, -1)

    def __post_init__(self) -> None:
        for name in ("train_shape", "decode_shape"):
            if len(getattr(self, name)) != len(self.axes):
                raise ValueError(
                    f"config.mesh.{name} {getattr(self, name)} does not match axes {self.axes}"
                )


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """A decoding shape: `batch_size` prompts of `prompt_len` tokens, `max_new_tokens` new ones,
    `num_lookahead` drafts per window (None: the table size L_max)."""

    batch_size: int = 1
    prompt_len: int = 128
    max_new_tokens: int = 128
    num_lookahead: int | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    seed: int
    model: ModelConfig
    tokenizer: TokenizerConfig
    data: DataConfig
    stages: tuple[StageConfig, ...]
    train: TrainConfig
    eval: EvalConfig
    mesh: MeshConfig = MeshConfig()
    decode: DecodeConfig = DecodeConfig()
    hf_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"config.stages names no stage; stages: {STAGES}")
        for key in ("log_every", "checkpoint_every"):
            if getattr(self.train, key) < 1:
                raise ValueError(f"config.train.{key}={getattr(self.train, key)} must be >= 1")
        model = self.model
        if self.data.seq_len > model.max_seq_len:
            raise ValueError(
                f"config.data.seq_len={self.data.seq_len} exceeds config.model.max_seq_len="
                f"{model.max_seq_len}"
            )
        table = [stage.name for stage in self.stages if stage.trains_table]
        if table and model.max_lookahead < 1:
            raise ValueError(
                f"stage(s) {table} train the lookahead table: config.model.max_lookahead must "
                f"be >= 1, got {model.max_lookahead}"
            )
        early = [stage.name for stage in self.stages if stage.early_weight]
        if early and model.n_repeats == 1:
            raise ValueError(
                f"stage(s) {early} train an early prediction (early_weight > 0): it needs a "
                "parameter-shared model, config.model.n_repeats > 1"
            )
        if any(stage.trains_adapters for stage in self.stages) and model.adapter_rank < 1:
            raise ValueError(
                "stage adapters trains lookahead adapters: set config.model.adapter_rank >= 1 "
                "(and adapter_targets, adapter_gate)"
            )
        positions = self.eval.prompt_len + int(self.data.add_bos) + self.eval.max_new_tokens
        room = max(model.max_lookahead, model.n_repeats - 1)  # drafts, or SPEED's tokens in flight
        if self.eval.num_prompts and positions + room > model.max_seq_len:
            raise ValueError(
                f"config.eval.prompt_len + max_new_tokens (+ BOS) + config.model.max_lookahead "
                f"(or n_repeats - 1) = {positions + room} positions exceed "
                f"config.model.max_seq_len={model.max_seq_len} (or set config.eval.num_prompts=0)"
            )
        sequences, batch = self.eval.loss_sequences, self.data.batch_size
        if sequences < 0 or sequences % batch:
            raise ValueError(
                f"config.eval.loss_sequences={sequences} must be a multiple of "
                f"config.data.batch_size={batch} (or 0: no held-out losses)"
            )
        if self.train.row_groups < 1 or batch % self.train.row_groups:
            raise ValueError(
                f"config.train.row_groups={self.train.row_groups} must divide "
                f"config.data.batch_size={batch}"
            )
        for stage in self.stages:
            rows = batch * stage.generation_share
            if stage.generation_share and not (rows >= 1 and math.isclose(rows, round(rows))):
                raise ValueError(
                    f"config.{stage.name}.generation_share={stage.generation_share} of "
                    f"config.data.batch_size={batch} rows is not a positive whole number"
                )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> ExperimentConfig:
        """Checks every section and key; raises `ValueError` naming the first problem."""
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        required = {"model", "tokenizer", "data", "stages"}
        optional = {"seed", "hf_dir", "train", "eval", "mesh", "decode", *STAGES}
        _reject_unknown("config", values, required | optional)
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"config is missing section(s) {missing}")
        names = [s.strip() for s in str(values["stages"]).split(",") if s.strip()]
        for name in names:
            if name not in STAGES:
                raise ValueError(f"config.stages names unknown stage {name!r}; stages: {STAGES}")
            if name not in values:
                raise ValueError(f"config.stages runs {name!r} but config.{name} is missing")
        if len(set(names)) != len(names):
            raise ValueError(f"config.stages repeats a stage: {names}")
        tokenizer = _section(TokenizerConfig, "tokenizer", values["tokenizer"])
        model = dict(values["model"])
        for key in ("vocab_size", "unk_id"):
            if key in model:
                raise ValueError(f"config.model.{key} is set from the tokenizer; remove it")
        hf_dir = values.get("hf_dir")
        if hf_dir:
            model_config = _hf_model_config(hf_dir, model)
            tokenizer = dataclasses.replace(tokenizer, path=tokenizer.path or hf_dir)
        else:
            model_config = ModelConfig.from_dict({**model, "vocab_size": tokenizer.vocab_size})
        return cls(
            seed=int(values.get("seed", 0)),
            hf_dir=hf_dir or None,
            model=model_config,
            tokenizer=tokenizer,
            data=_section(DataConfig, "data", values["data"]),
            stages=tuple(_section(StageConfig, n, {**values[n], "name": n}) for n in names),
            train=_section(TrainConfig, "train", values.get("train", {})),
            eval=_section(EvalConfig, "eval", values.get("eval", {})),
            mesh=_section(MeshConfig, "mesh", values.get("mesh", {})),
            decode=_section(DecodeConfig, "decode", values.get("decode", {})),
        )


# ModelConfig fields an HF config.json sets (`pass_jax.io.hf.config_from_hf`); the model section
# sets the others.
HF_MODEL_FIELDS = (
    "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
    "rope_theta", "rope_scaling", "norm_eps", "tie_embeddings", "unk_id",
)  # fmt: skip


def _hf_model_config(hf_dir: str, model: Mapping[str, Any]) -> ModelConfig:
    """The HF directory's shapes with the model section's other fields (dtypes, layout, table
    size, sequence length). Imports the HF reader (and so JAX and the model) only here."""
    from pass_jax.io.hf import load_hf_config

    own = {k: v for k, v in model.items() if k not in HF_MODEL_FIELDS}
    if own.get("n_repeats", 1) != 1:
        raise ValueError(
            f"config.model.n_repeats={own['n_repeats']} with hf_dir: an HF LLaMA's layers are "
            "distinct (n_repeats=1); a parameter-shared model trains from scratch (no hf_dir)"
        )
    return load_hf_config(hf_dir).replace(**own)


def _reject_unknown(where: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {unknown}; known keys: {sorted(known)}")


def _section(cls: type, where: str, values: Mapping[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    _reject_unknown(f"config.{where}", values, known)
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


# The paper's recipe for a table on a frozen base: AdamW lr 1e-2, warmup then cosine to 0.
_TABLE_RECIPE = dict(
    steps=100, learning_rate=1e-2, warmup_steps=10, end_lr_ratio=0.0, weight_decay=0.0,
    lookahead_weight=1.0, num_insertions=8,
)  # fmt: skip

# Stage defaults of `default_config`: language-model pretraining for `base`, the paper's recipe
# for the frozen-base tables, table and adapters distilled (KL) from the model's own greedy
# continuations for `adapters` (a LoRA-like rate: adapters start at zero, the table from the
# stage before), a lookahead-aware fine-tune (distilling the model into its lookahead outputs)
# for `joint`.
_STAGE_DEFAULTS = {
    "base": dict(
        steps=1000, learning_rate=3e-3, warmup_steps=50, end_lr_ratio=0.1, weight_decay=0.1,
        lookahead_weight=0.0, num_insertions=4,
    ),
    "lookahead": _TABLE_RECIPE,
    "distill": _TABLE_RECIPE,
    "adapters": dict(
        steps=300, learning_rate=1e-3, warmup_steps=20, end_lr_ratio=0.0, weight_decay=0.0,
        lookahead_weight=1.0, num_insertions=8, lookahead_loss="kl", generations=256,
        generation_share=1.0,
    ),
    "joint": dict(
        steps=150, learning_rate=1e-3, warmup_steps=10, end_lr_ratio=0.1, weight_decay=0.1,
        lookahead_weight=1.0, num_insertions=8, lookahead_loss="kl",
    ),
}  # fmt: skip


def _field_defaults(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's defaulted fields as config values; None becomes a typed placeholder, so
    that `--config.section.key=value` overrides are type-checked."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in skip or field.default is dataclasses.MISSING:
            continue
        value = field.default
        if value is None:
            (kind,) = [t for t in typing.get_args(hints[field.name]) if t is not types.NoneType]
            value = placeholder(kind)
        values[field.name] = value
    return values


def default_config() -> ml_collections.ConfigDict:
    """Every section and key `ExperimentConfig.from_config` knows, at its default (the model's
    are LLaMA-2-7B shapes): a config file starts from this and sets what differs."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.hf_dir = placeholder(str)
    # vocab_size and unk_id come from the tokenizer; add rope_scaling=dict(...) when needed.
    config.model = _field_defaults(ModelConfig, skip=("vocab_size", "unk_id", "rope_scaling"))
    config.tokenizer = _field_defaults(TokenizerConfig)
    config.data = _field_defaults(DataConfig, skip=("shard_index", "shard_count"))
    config.stages = "base,lookahead"
    for name, values in _STAGE_DEFAULTS.items():
        config[name] = {**_field_defaults(StageConfig, skip=("name",)), **values}
    config.train = _field_defaults(TrainConfig)
    config.eval = _field_defaults(EvalConfig)
    config.mesh = _field_defaults(MeshConfig)
    config.decode = _field_defaults(DecodeConfig)
    return config
