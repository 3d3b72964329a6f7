"""Shared helpers: tiny random models built in-process (nothing is downloaded)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pass_jax.config import ModelConfig
from pass_jax.model import Transformer


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_ff=48,
        max_seq_len=96,
        max_lookahead=8,
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    return Transformer(tiny_config(**overrides), rngs=nnx.Rngs(seed))


def peaked_model(seed: int, sharpness: float, **overrides) -> Transformer:
    """A random model whose predictions lean towards a few tokens, so that even an untrained
    lookahead table's drafts are often accepted: every embedding (lookahead rows included) is
    pulled towards one shared vector by `sharpness`."""
    model = tiny_model(seed, **overrides)
    key = jax.random.key(seed + 1000)
    shared = jax.random.normal(key, (model.config.d_model,))
    model.embed[...] = model.embed[...] + sharpness * shared
    model.lookahead[...] = model.lookahead[...] + sharpness * shared
    return model


@pytest.fixture
def model() -> Transformer:
    return tiny_model()


@nnx.jit
def forward(model: Transformer, tokens: jax.Array, **kwargs):
    """The model's forward, jitted (eager NNX calls are several times slower to run once)."""
    return model(tokens, **kwargs)


def greedy_reference(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    """Greedy continuation by full forwards with no cache: the independent reference.

    The sequence is right-padded to a fixed length (causal attention ignores the padding)."""
    width = len(prompt) + steps
    seq = list(prompt)
    for _ in range(steps):
        padded = jnp.asarray([seq + [0] * (width - len(seq))], jnp.int32)
        logits = forward(model, padded)
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt) :]
