"""Decoding: `generate` runs autoregressive decoding or PaSS in one jitted loop per method.

    from pass_jax.decode import generate
    result = generate(model, [[1, 2, 3]], max_new_tokens=64, method="pass")

Modules: `generation` (the public call, its plan and statistics), `loop` (the jitted
`lax.while_loop` and the per-method steps), `verify` (the acceptance rules).
"""

from pass_jax.decode.generation import (
    METHODS,
    DecodeStats,
    GenerationResult,
    RowStats,
    generate,
)

__all__ = ["METHODS", "DecodeStats", "GenerationResult", "RowStats", "generate"]
