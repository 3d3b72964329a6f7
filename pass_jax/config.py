"""Model configuration: the shapes and numerics of a LLaMA-family decoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from pass_jax.matmul import resolve_matmul_dtype

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPE_NAMES = tuple(_DTYPES)  # the dtypes a ModelConfig (and every --dtype flag) accepts
_ROPE_TYPES = ("default", "linear", "llama3")
# The projections a lookahead adapter can adapt (attention, then MLP), and its gates.
ADAPTER_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
ADAPTER_GATES = ("lookahead", "per_slot")
ADAPTER_FIELDS = ("adapter_rank", "adapter_targets", "adapter_gate")
# The early prediction of a parameter-shared decoder (`n_repeats > 1`), and the sharing fields.
EARLY_HEADS = ("shared", "trained")
SHARING_FIELDS = ("n_repeats", "early_head")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding frequency scaling, in the HF `rope_scaling` convention.

    `linear` divides every frequency by `factor`; `llama3` is Llama-3.1's piecewise scaling.
    """

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in _ROPE_TYPES[1:]:
            raise ValueError(
                f"unsupported rope_scaling type {self.rope_type!r}; supported: {_ROPE_TYPES[1:]}"
            )
        if self.factor <= 0:
            raise ValueError(f"rope_scaling factor must be positive, got {self.factor}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a LLaMA-family decoder with a PaSS lookahead table.

    `max_lookahead` is L_max, the number of rows of the lookahead table (0: no table).
    `dtype` is the compute dtype, `param_dtype` the storage dtype of the weights, and
    `matmul_dtype` (None: the compute dtype) a narrower dtype the matrix multiplies round their
    operands to, accumulating in the compute dtype (`pass_jax.matmul`): "bfloat16" on a float32
    model is a TPU's default matmul precision, and 1.7-1.95x the float32 train step on a CPU
    with AVX512-BF16 (README). "auto" is "bfloat16" on a float32 model where the hardware
    multiplies bfloat16 natively, else None; the config keeps "auto" (a checkpoint resolves it
    on the machine that loads it) and `operand_dtype` resolves it, once per process.

    Lookahead adapters (`adapter_rank > 0`): each projection named in `adapter_targets` (of
    `ADAPTER_TARGETS`) computes `x W + g * (x A) B` with `A [d_in, r]`, `B [r, d_out]` (zero
    at first) and `g = 0` at token positions, so token positions compute exactly the base
    model's function. `adapter_gate` sets `g` at lookahead slots: `"lookahead"` 1 at every slot,
    `"per_slot"` a trained scale per layer, projection and table row (1 at first).

    Parameter sharing (`n_repeats > 1`): the `n_layers` unique blocks are applied `n_repeats`
    times in order, each application with its own KV-cache layers (the cache holds `depth` =
    `n_layers * n_repeats` layers). The residual stream after the first repeat gives an early
    prediction of the next token (SPEED's draft, `pass_jax.decode.speed`): `early_head="shared"`
    reads it through the final norm and the output head; `"trained"` through its own norm and a
    residual `d x d` projection (zero at first), then the output head.
    """

    vocab_size: int = 32000
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 128
    d_ff: int = 11008
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    matmul_dtype: str | None = None
    scan_layers: bool = False
    remat: bool = False
    max_lookahead: int = 8
    unk_id: int = 0
    adapter_rank: int = 0
    adapter_targets: tuple[str, ...] = ADAPTER_TARGETS
    adapter_gate: str = "lookahead"
    n_repeats: int = 1
    early_head: str = "shared"

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim")
        for name in (*positive, "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(
                    f"ModelConfig.{name}={getattr(self, name)!r}; choose one of {list(_DTYPES)}"
                )
        if self.matmul_dtype not in (None, "auto", *_DTYPES):
            raise ValueError(
                f"ModelConfig.matmul_dtype={self.matmul_dtype!r}; choose None, 'auto' or one of "
                f"{list(_DTYPES)}"
            )
        if self.matmul_dtype not in (None, "auto", self.dtype) and (
            jnp.dtype(_DTYPES[self.matmul_dtype]).itemsize >= self.compute_dtype.itemsize
        ):
            raise ValueError(
                f"ModelConfig.matmul_dtype={self.matmul_dtype!r} must be narrower than "
                f"dtype={self.dtype!r} (or equal to it)"
            )
        if self.max_lookahead < 0:
            raise ValueError(f"max_lookahead must be >= 0, got {self.max_lookahead}")
        if not 0 <= self.unk_id < self.vocab_size:
            raise ValueError(f"unk_id {self.unk_id} outside the vocabulary [0, {self.vocab_size})")
        self._check_adapters()
        if self.n_repeats < 1:
            raise ValueError(
                f"n_repeats must be >= 1 (1: no parameter sharing), got {self.n_repeats}"
            )
        if self.early_head not in EARLY_HEADS:
            raise ValueError(
                f"ModelConfig.early_head={self.early_head!r}; choose one of {EARLY_HEADS}"
            )
        if self.early_head == "trained" and self.n_repeats == 1:
            raise ValueError(
                "early_head='trained' reads the residual stream after the first of several "
                "repeats: it needs n_repeats > 1"
            )

    def _check_adapters(self) -> None:
        targets = self.adapter_targets
        if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
            raise ValueError(
                f"ModelConfig.adapter_targets={targets!r} must be a sequence of names from "
                f"{ADAPTER_TARGETS}"
            )
        object.__setattr__(self, "adapter_targets", tuple(targets))  # a list from JSON
        unknown = [t for t in targets if t not in ADAPTER_TARGETS]
        if unknown or len(set(targets)) != len(targets):
            raise ValueError(
                f"ModelConfig.adapter_targets={tuple(targets)}: "
                + (f"unknown {unknown}" if unknown else "a name repeats")
                + f"; choose among {ADAPTER_TARGETS}"
            )
        if self.adapter_gate not in ADAPTER_GATES:
            raise ValueError(
                f"ModelConfig.adapter_gate={self.adapter_gate!r}; choose one of {ADAPTER_GATES}"
            )
        if self.adapter_rank < 0:
            raise ValueError(f"adapter_rank must be >= 0 (0: no adapters), got {self.adapter_rank}")
        if self.adapter_rank and not targets:
            raise ValueError("adapter_rank > 0 needs at least one name in adapter_targets")
        if self.adapter_rank and not self.max_lookahead:
            raise ValueError(
                "lookahead adapters act at lookahead slots only: adapter_rank > 0 needs "
                "max_lookahead >= 1"
            )

    @property
    def depth(self) -> int:
        """Layers a token passes through (`n_layers * n_repeats`), each with its KV-cache layer."""
        return self.n_layers * self.n_repeats

    @property
    def has_early_head(self) -> bool:
        """Whether the early prediction has weights of its own (`early_head="trained"`)."""
        return self.early_head == "trained"

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(_DTYPES[self.dtype])

    @property
    def operand_dtype(self) -> jnp.dtype:
        """The dtype the matrix multiplies round their operands to ("auto" resolved)."""
        return jnp.dtype(_DTYPES[resolve_matmul_dtype(self.matmul_dtype, self.dtype) or self.dtype])

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(_DTYPES[self.param_dtype])

    @property
    def adapter_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each adapted projection, by name (empty without adapters)."""
        if not self.adapter_rank:
            return {}
        d, f = self.d_model, self.d_ff
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        shapes = dict(wq=(d, q), wk=(d, kv), wv=(d, kv), wo=(q, d), w_gate=(d, f), w_up=(d, f))
        shapes["w_down"] = (f, d)
        return {name: shapes[name] for name in self.adapter_targets}

    @property
    def num_head_params(self) -> int:
        """Parameters of the PaSS head: the lookahead table and the adapters."""
        per_layer = sum(
            self.adapter_rank * (d_in + d_out)
            + (self.max_lookahead if self.adapter_gate == "per_slot" else 0)
            for d_in, d_out in self.adapter_shapes.values()
        )
        return self.d_model * self.max_lookahead + self.n_layers * per_layer

    @property
    def num_params(self) -> int:
        """Parameter count, the PaSS head (lookahead table and adapters) and a trained early head
        included; shared layers count once."""
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.d_model * self.d_ff
        block = attn + mlp + 2 * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        embed = self.vocab_size * self.d_model
        early = (self.d_model + self.d_model**2) if self.has_early_head else 0
        return embed + head + self.n_layers * block + self.d_model + early + self.num_head_params

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a mapping; an unknown key is an error that names it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        scaling = values.get("rope_scaling")
        if isinstance(scaling, Mapping):
            values["rope_scaling"] = RopeScaling(**scaling)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists), as a checkpoint's metadata stores them."""
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
