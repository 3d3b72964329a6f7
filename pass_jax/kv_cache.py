"""A static-shape KV cache with per-row committed lengths, built for speculative decoding.

A forward on a block of T new tokens writes their keys and values at each row's own offset
(`lengths[b] + t`) but does not advance `lengths`: the caller commits `k <= T` of them per row
afterwards. Uncommitted entries (lookahead slots, rejected drafts) are simply overwritten later,
so rollback is free.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from pass_jax.config import ModelConfig
from pass_jax.sharding import constrain

CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")  # k, v [depth, B, S, K, D]


@struct.dataclass
class KVCache:
    """Keys and values of every layer, with the committed length of each row."""

    k: jax.Array  # [depth, B, S, K, D]: a layer per layer application
    v: jax.Array  # [depth, B, S, K, D]
    lengths: jax.Array  # [B] int32: committed entries per row

    @classmethod
    def create(
        cls, config: ModelConfig, batch_size: int, capacity: int, dtype: jnp.dtype | None = None
    ) -> KVCache:
        """An empty cache holding up to `capacity` positions per row."""
        shape = (config.depth, batch_size, capacity, config.n_kv_heads, config.head_dim)
        dtype = dtype or config.compute_dtype
        cache = cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            lengths=jnp.zeros((batch_size,), jnp.int32),
        )
        return cache.constrained()

    def constrained(self) -> KVCache:
        """The cache with its sharding hinted (`CACHE_AXES`); unchanged when no mesh is set."""
        return self.replace(k=constrain(self.k, CACHE_AXES), v=constrain(self.v, CACHE_AXES))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def commit(self, counts: jax.Array) -> KVCache:
        """Advances each row's length by `counts` [B] entries of the block just written."""
        return self.replace(lengths=self.lengths + counts.astype(jnp.int32))

    def write_slots(self, block_len: int) -> jax.Array:
        """Cache slots [B, T] that a block of `block_len` new tokens is written to."""
        return self.lengths[:, None] + jnp.arange(block_len, dtype=jnp.int32)[None, :]

    def write(
        self, layer: int | jax.Array, k: jax.Array, v: jax.Array
    ) -> tuple[KVCache, jax.Array, jax.Array]:
        """Writes a block's keys and values k, v [B, T, K, D] into layer `layer` at each row's
        `write_slots` (not committed). Returns the cache and that layer's keys and values
        [B, S, K, D]."""
        rows = jnp.arange(k.shape[0])[:, None]  # [B, 1]
        slots = self.write_slots(k.shape[1])  # [B, T]
        k_all = self.k.at[layer, rows, slots].set(k.astype(self.k.dtype))
        v_all = self.v.at[layer, rows, slots].set(v.astype(self.v.dtype))
        return self.replace(k=k_all, v=v_all), k_all[layer], v_all[layer]

    def attention_mask(self, block_mask: jax.Array) -> jax.Array:
        """Which cache slots each query of the new block sees: [B, T, S] bool.

        A query sees every committed slot of its row, and the slots of the new block that
        `block_mask` [B, T, T] allows (causal by default).
        """
        block_len = block_mask.shape[-1]
        slots = jnp.arange(self.capacity, dtype=jnp.int32)[None, :]  # [1, S]
        offset = slots - self.lengths[:, None]  # [B, S]: index within the new block
        committed = offset < 0  # [B, S]
        in_block = (offset >= 0) & (offset < block_len)  # [B, S]
        index = jnp.clip(offset, 0, block_len - 1)[:, None, :]  # [B, 1, S]
        index = jnp.broadcast_to(index, (*block_mask.shape[:2], self.capacity))
        block_visible = jnp.take_along_axis(block_mask, index, axis=2)  # [B, T, S]
        return committed[:, None, :] | (in_block[:, None, :] & block_visible)

    def gather_block(self, order: jax.Array) -> KVCache:
        """Moves the block entries at offsets order [B, M] (non-decreasing, `order[:, j] >= j`)
        to offsets 0..M-1 of each row's block, in every layer: a tree's accepted path becomes
        contiguous before it is committed."""
        rows = jnp.arange(order.shape[0])[:, None]  # [B, 1]
        source = self.lengths[:, None] + order  # [B, M]
        target = self.write_slots(order.shape[1])  # [B, M]
        k = self.k.at[:, rows, target].set(self.k[:, rows, source])
        v = self.v.at[:, rows, target].set(self.v[:, rows, source])
        return self.replace(k=k, v=v)
