"""A LLaMA-family decoder in Flax NNX with a PaSS lookahead table.

Each input position holds either a token id or a lookahead slot (`lookahead_slots[b, t] >= 0`),
so PaSS can feed `[t, LA_1 .. LA_L]` in one call. Rotary embeddings follow the HF convention
(rotate-half), so HF LLaMA weights load without permutation.

With `ModelConfig.adapter_rank > 0` the chosen projections carry lookahead adapters: a low-rank
term added only at lookahead slots (`Adapter`), so token positions compute exactly the base
model's function. The table and the adapters are the PaSS head (`HEAD_PARAMS`).

With `ModelConfig.n_repeats > 1` the decoder shares its parameters: the `n_layers` unique blocks
run `n_repeats` times, each application writing its own cache layers, and the residual stream
after the first repeat gives an early prediction of the next token (`early_logits`), SPEED's
draft (`pass_jax.decode.speed`).

Every parameter carries `logical_axes` metadata, the names that `pass_jax.sharding` maps onto a
device mesh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pass_jax.config import ADAPTER_TARGETS, ModelConfig, RopeScaling
from pass_jax.kv_cache import KVCache
from pass_jax.matmul import contract
from pass_jax.sharding import HIDDEN, LOGITS, constrain, mesh_of, param_shardings

_MASKED = -1e30


class LookaheadParam(nnx.Param):
    """The PaSS lookahead table `[L_max, d_model]`: the only weights the paper's recipe trains."""


class AdapterParam(nnx.Param):
    """A lookahead adapter weight (`Adapter`): trained with the table, the base frozen."""


# The PaSS head's weights, the base's complement: the lookahead table and the adapters.
HEAD_PARAMS = nnx.Any(LookaheadParam, AdapterParam)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype: jnp.dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def _stacked(stack: int | None, shape: tuple[int, ...], axes: tuple[str | None, ...]):
    """Prepends the layer axis when the layers are stacked for `lax.scan`."""
    if stack is None:
        return shape, axes
    return (stack, *shape), ("layers", *axes)


def _weight(
    rngs: nnx.Rngs,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    config: ModelConfig,
    stack: int | None,
    std: float = 0.02,
) -> nnx.Param:
    shape, axes = _stacked(stack, shape, axes)
    return nnx.Param(_normal(rngs, shape, std, config.weight_dtype), logical_axes=axes)


def _ones(shape: tuple[int, ...], axes, config: ModelConfig, stack: int | None) -> nnx.Param:
    shape, axes = _stacked(stack, shape, axes)
    return nnx.Param(jnp.ones(shape, config.weight_dtype), logical_axes=axes)


def rope_frequencies(config: ModelConfig) -> np.ndarray:
    """Inverse rotary frequencies [D/2], float32, with the config's scaling applied (HF rules)."""
    exponent = np.arange(0, config.head_dim, 2, dtype=np.float32) / np.float32(config.head_dim)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponent)).astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    return _llama3_frequencies(inv_freq, scaling)


def _llama3_frequencies(inv_freq: np.ndarray, scaling: RopeScaling) -> np.ndarray:
    context = scaling.original_max_position_embeddings
    low_freq_wavelen = context / scaling.low_freq_factor
    high_freq_wavelen = context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary_embedding(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, D] for positions [B, T], in the HF rotate-half layout."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, D]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, H, D] by the angles in cos/sin [B, T, D]."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def causal_mask(batch_size: int, block_len: int) -> jax.Array:
    """Lower-triangular visibility [B, T, T]: query t sees keys 0..t of its block."""
    mask = jnp.tril(jnp.ones((block_len, block_len), jnp.bool_))
    return jnp.broadcast_to(mask, (batch_size, block_len, block_len))


def unk_lookahead_table(embed: jax.Array, unk_id: int, rows: int) -> jax.Array:
    """An untrained lookahead table [rows, d]: every row the UNK token's embedding (embed
    [V, d]). Tables start so, and the "[UNK] lookahead" baseline decodes with one."""
    return jnp.broadcast_to(embed[unk_id], (rows, embed.shape[-1]))


class RMSNorm(nnx.Module):
    def __init__(self, config: ModelConfig, stack: int | None = None):
        self.scale = _ones((config.d_model,), ("embed",), config, stack)
        self.eps = config.norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(jnp.float32) * xf).astype(x.dtype)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, operand_dtype: jnp.dtype
) -> jax.Array:
    """Grouped-query attention, its two matmuls on operands rounded to `operand_dtype`.

    q [B, T, H, D]; k, v [B, S, K, D] with K dividing H; mask [B, T, S] bool. Returns [B, T, H, D].
    """
    batch, block_len, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    q = q.reshape(batch, block_len, n_kv, n_heads // n_kv, head_dim)  # [B, T, K, G, D]
    scores = contract("btkgd,bskd->bkgts", q, k, operand_dtype, jnp.float32)
    scores = scores * (head_dim**-0.5)  # [B, K, G, T, S]
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = contract("bkgts,bskd->btkgd", probs, v, operand_dtype)  # [B, T, K, G, D]
    return out.reshape(batch, block_len, n_heads, head_dim)


class Adapter(nnx.Module):
    """The gated low-rank term of one projection `y = einsum(spec, x, W)`: `(x A) B`, added to
    `y` at lookahead slots only.

    `A` [*in, r] (normal, std d_in^-1/2) and `B` [r, *out] (zero at first: the model's function
    is unchanged) take the logical axes of the dimensions of `W` they replace, `r` named
    `adapter_rank`; with the `per_slot` gate, `slot_scale` [L_max] (1 at first) scales the term
    per table row.
    """

    def __init__(
        self, spec: str, weight: nnx.Param, config: ModelConfig, rngs: nnx.Rngs, stack: int | None
    ):
        inputs, out = spec.split("->")
        x_axes, w_axes = inputs.split(",")
        lead = "".join(c for c in x_axes if c not in w_axes)  # the kept axes: "bt"
        w_in = "".join(c for c in w_axes if c in x_axes)  # contracted: "d"
        w_out = "".join(c for c in w_axes if c in out)  # produced: "hk"
        self.specs = (f"{x_axes},{w_in}r->{lead}r", f"{lead}r,r{w_out}->{out}")
        skip = int(stack is not None)  # the layer axis
        dims = dict(zip(w_axes, weight.shape[skip:], strict=True))
        names = dict(zip(w_axes, weight.get_metadata()["logical_axes"][skip:], strict=True))
        rank = config.adapter_rank

        def param(letters: str, std: float | None, rank_first: bool) -> AdapterParam:
            shape, axes = (dims[c] for c in letters), (names[c] for c in letters)
            shape, axes = (
                ((rank, *shape), ("adapter_rank", *axes))
                if rank_first
                else ((*shape, rank), (*axes, "adapter_rank"))
            )
            shape, axes = _stacked(stack, shape, axes)
            if std is None:
                return AdapterParam(jnp.zeros(shape, config.weight_dtype), logical_axes=axes)
            return AdapterParam(_normal(rngs, shape, std, config.weight_dtype), logical_axes=axes)

        self.a = param(w_in, math.prod(dims[c] for c in w_in) ** -0.5, rank_first=False)
        self.b = param(w_out, None, rank_first=True)
        if config.adapter_gate == "per_slot":
            shape, axes = _stacked(stack, (config.max_lookahead,), (None,))
            self.slot_scale = AdapterParam(jnp.ones(shape, config.weight_dtype), logical_axes=axes)
        self.dtype, self.operand_dtype = config.compute_dtype, config.operand_dtype

    def __call__(self, x: jax.Array, y: jax.Array, slots: jax.Array) -> jax.Array:
        """`y` [B, T, *out] plus the term where `slots` [B, T] >= 0; elsewhere `y` itself,
        bit for bit."""
        a, b = (w[...].astype(self.dtype) for w in (self.a, self.b))
        low = contract(self.specs[0], x, a, self.operand_dtype)  # [B, T, r]
        delta = contract(self.specs[1], low, b, self.operand_dtype)  # like y
        expand = (slice(None), slice(None), *([None] * (y.ndim - 2)))
        if hasattr(self, "slot_scale"):
            scale = self.slot_scale[...].astype(self.dtype)
            delta = delta * jnp.take(scale, jnp.clip(slots, 0, scale.shape[0] - 1))[expand]
        return jnp.where((slots >= 0)[expand], y + delta, y)


class Projections(nnx.Module):
    """A module's projection weights (`SPECS`: name -> einsum spec), each with an optional
    lookahead adapter."""

    SPECS: ClassVar[dict[str, str]]

    def set_adapters(self, config: ModelConfig, rngs: nnx.Rngs, stack: int | None) -> None:
        """Fresh adapters on the projections `config` names (none with `adapter_rank == 0`)."""
        targets = [name for name in self.SPECS if name in config.adapter_targets]
        if hasattr(self, "adapters"):
            del self.adapters
        if config.adapter_rank and targets:
            self.adapters = nnx.Dict(
                {n: Adapter(self.SPECS[n], getattr(self, n), config, rngs, stack) for n in targets}
            )

    def project(self, name: str, x: jax.Array, slots: jax.Array | None) -> jax.Array:
        """`einsum(SPECS[name], x, W)` in the compute dtype, operands rounded as configured,
        plus the projection's adapter term at lookahead slots (`slots` [B, T], None: none)."""
        weight = getattr(self, name)[...].astype(self.dtype)
        y = contract(self.SPECS[name], x, weight, self.operand_dtype)
        adapters = getattr(self, "adapters", None)
        if slots is None or adapters is None or name not in adapters:
            return y
        return adapters[name](x, y, slots)


class Attention(Projections):
    SPECS: ClassVar[dict[str, str]] = {
        "wq": "btd,dhk->bthk",
        "wk": "btd,dhk->bthk",
        "wv": "btd,dhk->bthk",
        "wo": "bthk,hkd->btd",
    }

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, stack: int | None = None):
        d, h, k, hd = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = _weight(rngs, (d, h, hd), ("embed", "q_heads", "head_dim"), config, stack)
        self.wk = _weight(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), config, stack)
        self.wv = _weight(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), config, stack)
        self.wo = _weight(rngs, (h, hd, d), ("q_heads", "head_dim", "embed"), config, stack)
        self.dtype, self.operand_dtype = config.compute_dtype, config.operand_dtype

    def __call__(
        self,
        x: jax.Array,  # [B, T, d]
        cos: jax.Array,  # [B, T, D]
        sin: jax.Array,  # [B, T, D]
        mask: jax.Array,  # [B, T, S]
        cache: KVCache | None,
        layer: int | jax.Array,
        slots: jax.Array | None,  # [B, T]: lookahead slots, -1 at tokens
    ) -> tuple[jax.Array, KVCache | None]:
        """Self-attention; with a cache, the block's keys and values are written into its layer
        `layer` first and attention reads that layer."""
        q, k, v = (self.project(name, x, slots) for name in ("wq", "wk", "wv"))  # [B, T, H|K, D]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            cache, k, v = cache.write(layer, k, v)  # k, v [B, S, K, D]
        out = attend(q, k.astype(self.dtype), v.astype(self.dtype), mask, self.operand_dtype)
        return self.project("wo", out, slots), cache


class MLP(Projections):
    """SwiGLU feed-forward."""

    SPECS: ClassVar[dict[str, str]] = {
        "w_gate": "btd,df->btf",
        "w_up": "btd,df->btf",
        "w_down": "btf,fd->btd",
    }

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, stack: int | None = None):
        d, f = config.d_model, config.d_ff
        self.w_gate = _weight(rngs, (d, f), ("embed", "mlp"), config, stack)
        self.w_up = _weight(rngs, (d, f), ("embed", "mlp"), config, stack)
        self.w_down = _weight(rngs, (f, d), ("mlp", "embed"), config, stack)
        self.dtype, self.operand_dtype = config.compute_dtype, config.operand_dtype

    def __call__(self, x: jax.Array, slots: jax.Array | None) -> jax.Array:  # [B, T, d]
        gate = self.project("w_gate", x, slots)  # [B, T, F]
        up = self.project("w_up", x, slots)
        return self.project("w_down", jax.nn.silu(gate) * up, slots)


class Block(nnx.Module):
    """One pre-norm decoder layer."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, stack: int | None = None):
        self.attn_norm = RMSNorm(config, stack)
        self.attn = Attention(config, rngs, stack)
        self.mlp_norm = RMSNorm(config, stack)
        self.mlp = MLP(config, rngs, stack)

    def __call__(self, x, cos, sin, mask, cache, layer, slots):
        attn_out, cache = self.attn(self.attn_norm(x), cos, sin, mask, cache, layer, slots)
        x = constrain(x + attn_out, HIDDEN)
        return constrain(x + self.mlp(self.mlp_norm(x), slots), HIDDEN), cache


class Transformer(nnx.Module):
    """Token embedding, decoder layers (applied `n_repeats` times), final norm, output head, the
    lookahead table, and a trained early head (`early_head="trained"`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        """The base weights are those of the same config without adapters (the adapters draw
        their random numbers last)."""
        d = config.d_model
        self.embed = _weight(rngs, (config.vocab_size, d), ("vocab", "embed"), config, None)
        if config.scan_layers:
            self.layers = Block(config, rngs, stack=config.n_layers)
        else:
            self.layers = nnx.List([Block(config, rngs) for _ in range(config.n_layers)])
        self.final_norm = RMSNorm(config)
        if config.has_early_head:  # zero at first: the shared head's function, but its own norm
            self.early_norm = RMSNorm(config)
            self.early_proj = nnx.Param(
                jnp.zeros((d, d), config.weight_dtype), logical_axes=("embed", None)
            )
        if not config.tie_embeddings:
            self.lm_head = _weight(rngs, (d, config.vocab_size), ("embed", "vocab"), config, None)
        if config.max_lookahead:
            table = unk_lookahead_table(self.embed[...], config.unk_id, config.max_lookahead)
            # Replicated on every mesh: tiny, and read by every draft call.
            self.lookahead = LookaheadParam(table, logical_axes=(None, None))
        self.inv_freq = rope_frequencies(config)
        self._build_adapters(config, rngs)

    @property
    def has_lookahead(self) -> bool:
        return self.config.max_lookahead > 0

    @property
    def has_adapters(self) -> bool:
        return self.config.adapter_rank > 0

    def _build_adapters(self, config: ModelConfig, rngs: nnx.Rngs) -> None:
        """Sets the config to `config` and replaces the adapters with fresh ones of its shape."""
        self.config = config
        stack = config.n_layers if config.scan_layers else None
        for block in [self.layers] if config.scan_layers else self.layers:
            block.attn.set_adapters(config, rngs, stack)
            block.mlp.set_adapters(config, rngs, stack)

    def set_adapters(
        self,
        rank: int,
        targets: Sequence[str] = ADAPTER_TARGETS,
        gate: str = "lookahead",
        *,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        """Gives the model fresh lookahead adapters (`B = 0`: its function is unchanged) of this
        rank, targets and gate, or removes them (rank 0); nothing happens when it has these
        already. On a mesh the new weights go to their shardings."""
        config = self.config.replace(
            adapter_rank=rank, adapter_targets=tuple(targets), adapter_gate=gate
        )
        if config == self.config:
            return
        self._build_adapters(config, rngs or nnx.Rngs(0))
        mesh = mesh_of(nnx.state(self))
        if mesh is not None and self.has_adapters:
            state = nnx.state(self, AdapterParam)
            nnx.update(self, jax.device_put(state, param_shardings(state, mesh)))

    def embed_inputs(self, tokens: jax.Array, lookahead_slots: jax.Array | None) -> jax.Array:
        """Token embeddings [B, T, d], with lookahead embeddings where `lookahead_slots >= 0`."""
        x = jnp.take(self.embed[...], tokens, axis=0)
        if lookahead_slots is not None:
            if not self.has_lookahead:
                raise ValueError("lookahead slots given but the model has no lookahead table")
            table = self.lookahead[...]
            la = jnp.take(table, jnp.clip(lookahead_slots, 0, table.shape[0] - 1), axis=0)
            x = jnp.where(lookahead_slots[..., None] >= 0, la.astype(x.dtype), x)
        return x.astype(self.config.compute_dtype)

    def hidden_states(
        self,
        tokens: jax.Array,  # [B, T] int32
        *,
        lookahead_slots: jax.Array | None = None,  # [B, T] int32, -1 where a token
        positions: jax.Array | None = None,  # [B, T] int32
        block_mask: jax.Array | None = None,  # [B, T, T] bool, causal by default
        cache: KVCache | None = None,
        early: bool = False,
    ) -> tuple[jax.Array, KVCache | None] | tuple[jax.Array, KVCache | None, jax.Array]:
        """Final-norm hidden states [B, T, d], and the cache with the block written (if any);
        with `early`, also the residual stream after the first repeat [B, T, d] (for
        `early_logits`)."""
        batch, block_len = tokens.shape
        if block_mask is None:
            block_mask = causal_mask(batch, block_len)
        if cache is None:
            mask = block_mask
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(block_len, dtype=jnp.int32), tokens.shape)
        else:
            mask = cache.attention_mask(block_mask)
            if positions is None:
                positions = cache.write_slots(block_len)
        cos, sin = rotary_embedding(positions, self.inv_freq)
        x = constrain(self.embed_inputs(tokens, lookahead_slots), HIDDEN)
        x, cache = self.run_blocks(x, cos, sin, mask, cache, lookahead_slots)
        first = x  # the residual stream after the first repeat
        for repeat in range(1, self.config.n_repeats):
            layer = repeat * self.config.n_layers
            x, cache = self.run_blocks(x, cos, sin, mask, cache, lookahead_slots, layer)
        if cache is not None:
            cache = cache.constrained()
        if early:
            return self.final_norm(x), cache, first
        return self.final_norm(x), cache

    def run_blocks(
        self,
        x: jax.Array,  # [B, T, d]
        cos: jax.Array,  # [B, T, D]
        sin: jax.Array,  # [B, T, D]
        mask: jax.Array,  # [B, T, S]
        cache: Any,
        slots: jax.Array | None,  # [B, T]
        first_layer: int | jax.Array = 0,
    ) -> tuple[jax.Array, Any]:
        """The unique blocks once on x (one repeat): block `l` writes its keys and values into
        cache layer `first_layer + l`. `slots` (lookahead slots, -1 at tokens) gate the
        adapters. `cache` is a `KVCache`, None, or anything with its `write` (SPEED's
        `DepthCache`)."""

        def apply(block, x, cache, layer):
            return block(x, cos, sin, mask, cache, layer, slots)

        if self.config.remat:
            # jax.checkpoint over the block's arrays: nnx.remat would write the block's state
            # back, which fails for a block merged outside an enclosing loop (looped layers
            # inside the decode while_loop).
            def apply(block, x, cache, layer):
                graphdef, state = nnx.split(block)
                pure = lambda state, x, cache, layer: nnx.merge(graphdef, state)(
                    x, cos, sin, mask, cache, layer, slots
                )
                return jax.checkpoint(pure)(state, x, cache, layer)

        if not self.config.scan_layers:
            for layer, block in enumerate(self.layers):
                x, cache = apply(block, x, cache, first_layer + layer)
            return x, cache
        graphdef, stacked = nnx.split(self.layers)

        def body(carry, layer_state):
            x, cache, layer = carry
            x, cache = apply(nnx.merge(graphdef, layer_state), x, cache, layer)
            return (x, cache, layer + 1), None

        start = jnp.asarray(first_layer, jnp.int32)
        (x, cache, _), _ = jax.lax.scan(body, (x, cache, start), stacked)
        return x, cache

    def early_hidden(self, residual: jax.Array) -> jax.Array:
        """The early prediction's head input [..., d] from the residual stream after the first
        repeat [..., d]: its final norm (`early_head="shared"`), or the trained early head's
        norm and residual projection."""
        if not self.config.has_early_head:
            return self.final_norm(residual)
        hidden = self.early_norm(residual)
        proj = self.early_proj[...].astype(self.config.compute_dtype)
        lead = "ABCDEFG"[: hidden.ndim - 1]
        return hidden + contract(f"{lead}d,de->{lead}e", hidden, proj, self.config.operand_dtype)

    def early_logits(self, residual: jax.Array) -> jax.Array:
        """The early prediction's logits [..., vocab] (float32) from the residual stream after
        the first repeat [..., d]."""
        return self.logits(self.early_hidden(residual))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Output logits [..., vocab] in float32 from final hidden states [..., d]."""
        config = self.config
        lead = "ABCDEFG"[: hidden.ndim - 1]  # the leading axes, kept
        if config.tie_embeddings:
            head, spec = self.embed[...].astype(config.compute_dtype), f"{lead}d,vd->{lead}v"
        else:
            head, spec = self.lm_head[...].astype(config.compute_dtype), f"{lead}d,dv->{lead}v"
        return contract(spec, hidden, head, config.operand_dtype, jnp.float32)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        lookahead_slots: jax.Array | None = None,
        positions: jax.Array | None = None,
        block_mask: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Logits [B, T, vocab]; with a cache, `(logits, cache)` with the block written (not
        committed: the caller advances `cache.lengths`)."""
        hidden, new_cache = self.hidden_states(
            tokens,
            lookahead_slots=lookahead_slots,
            positions=positions,
            block_mask=block_mask,
            cache=cache,
        )
        logits = constrain(self.logits(hidden), LOGITS)
        return logits if cache is None else (logits, new_cache)


def loop_layers(model: Transformer) -> Transformer:
    """The same function with stacked (scanned) layers split into a Python loop of blocks.

    For decoding: inside `lax.scan`, XLA appears to materialise each layer's weight slice at
    every step, which costs more than a memory-bound decode's matmuls (7B in bf16 on an H200:
    11.4 ms per token scanned, 4.6 ms looped). Training keeps the scan, for its compile time. Until
    `model` is dropped both copies of the layer weights are held. Returns `model` itself when
    its layers are not stacked.
    """
    if not model.config.scan_layers:
        return model
    config = model.config.replace(scan_layers=False, remat=False)
    looped = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    pure = nnx.to_pure_dict(nnx.state(model))
    stacked = pure["layers"]
    pure["layers"] = {i: jax.tree.map(lambda w, i=i: w[i], stacked) for i in range(config.n_layers)}
    state = nnx.state(looped)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(looped, state)
    return looped
