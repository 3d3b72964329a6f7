"""pass-jax: fast, lossless LLM decoding with Parallel Speculative Sampling (PaSS) in JAX."""

from pass_jax.config import ModelConfig, RopeScaling
from pass_jax.kv_cache import KVCache
from pass_jax.model import LookaheadParam, Transformer

__all__ = ["KVCache", "LookaheadParam", "ModelConfig", "RopeScaling", "Transformer"]
