"""Shared helpers: tiny random models built in-process (nothing is downloaded)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pass_jax.config import ModelConfig
from pass_jax.model import Transformer
from pass_jax.tools.fault_inject import TINY_RUN


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


def sharp_model(seed: int, head_scale: float = 10.0, **overrides) -> Transformer:
    """A random model with its output head scaled up: peaky, varied predictions (at the default
    0.02 init, logits are near 0 and every distribution is nearly uniform)."""
    model = tiny_model(seed, **overrides)
    model.lm_head[...] = head_scale * model.lm_head[...]
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

    The sequence is right-padded to a multiple of 32 tokens (causal attention ignores the
    padding), so references of similar lengths share one compiled forward."""
    width = -(-(len(prompt) + steps) // 32) * 32
    seq = list(prompt)
    for _ in range(steps):
        padded = jnp.asarray([seq + [0] * (width - len(seq))], jnp.int32)
        logits = forward(model, padded)
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt) :]


def chain_model(seed: int, good_drafts: int, attn_scale: float = 0.05, **overrides):
    """A model whose greedy continuation is nearly a chain `t -> f(t)`, and whose lookahead rows
    make the first `good_drafts` drafts continue that chain from a token `c` on its cycle.

    With attention turned down, each position's prediction is nearly a function `f` of its own
    input; lookahead row i (i <= good_drafts) is set to the embedding of `f^(i-1)(c)`, so when
    the pending token is `c` the first `good_drafts` drafts are `f(c), f^2(c), ...` and later
    ones are off-chain. Returns (model, c). Attention stays on (scaled), so the cache matters.
    """
    model = tiny_model(seed, **overrides)
    saved = [block.attn.wo[...] for block in model.layers]
    for block in model.layers:
        block.attn.wo[...] = jnp.zeros_like(block.attn.wo[...])
    vocab = model.config.vocab_size
    successor = jnp.argmax(forward(model, jnp.arange(vocab)[:, None])[:, 0], axis=-1)
    chain = [0]
    for _ in range(2 * vocab):
        chain.append(int(successor[chain[-1]]))
    c = chain[-1]  # on a cycle of f
    table = model.lookahead[...]
    token = c
    for i in range(good_drafts):
        table = table.at[i].set(model.embed[...][token])
        token = int(successor[token])
    model.lookahead[...] = table
    for block, wo in zip(model.layers, saved, strict=True):
        block.attn.wo[...] = attn_scale * wo
    return model, c


# A train.py run of the tiny/quickstart configs in seconds: `--config.KEY=VALUE` overrides.
TINY_RUN_OVERRIDES = {
    **TINY_RUN,  # 4 rows a batch, in 4 row groups; 3 rows of the joint batch generated
    "base.steps": 3,
    "lookahead.steps": 2,
    "joint.steps": 2,
    "joint.warmup_steps": 1,
    "joint.generations": 4,
    "joint.generation_prompt_len": 8,
}


def tiny_run_flags() -> list[str]:
    """`TINY_RUN_OVERRIDES` as command-line flags."""
    return [f"--config.{key}={value}" for key, value in TINY_RUN_OVERRIDES.items()]
