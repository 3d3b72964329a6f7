"""pass-jax: fast, lossless LLM decoding with Parallel Speculative Sampling (PaSS) in JAX.

The public names load lazily (PEP 562), so that `import pass_jax.experiment`, what config
files do, stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "GenerationResult": "pass_jax.decode.generation",
    "generate": "pass_jax.decode.generation",
    "generate_text": "pass_jax.decode.text",
    "load_hf_llama": "pass_jax.io.hf",
    "load_head": "pass_jax.io.head",
    "save_head": "pass_jax.io.head",
    "load_tokenizer": "pass_jax.tokenizer",
    "ModelConfig": "pass_jax.config",
    "RopeScaling": "pass_jax.config",
    "KVCache": "pass_jax.kv_cache",
    "LookaheadParam": "pass_jax.model",
    "Transformer": "pass_jax.model",
}
__all__ = [
    "GenerationResult",
    "KVCache",
    "LookaheadParam",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "generate",
    "generate_text",
    "load_head",
    "load_hf_llama",
    "load_tokenizer",
    "save_head",
]

if TYPE_CHECKING:
    from pass_jax.config import ModelConfig, RopeScaling
    from pass_jax.decode.generation import GenerationResult, generate
    from pass_jax.decode.text import generate_text
    from pass_jax.io.head import load_head, save_head
    from pass_jax.io.hf import load_hf_llama
    from pass_jax.kv_cache import KVCache
    from pass_jax.model import LookaheadParam, Transformer
    from pass_jax.tokenizer import load_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pass_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
