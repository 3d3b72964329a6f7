"""Evaluation of a trained lookahead table: greedy PaSS acceptance on held-out prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pass_jax.decode.generation import generate
from pass_jax.model import Transformer

__all__ = ["measure_acceptance"]


def measure_acceptance(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: str = "pass",
    num_lookahead: int | None = None,
) -> dict[str, Any]:
    """Greedy PaSS decoding of held-out prompts with `generate`, and its draft statistics.

    `acceptance_by_position[i]`: of the windows whose draft i was verified, the fraction that
    accepted it (greedy: it equals the model's own greedy token). `accepted_per_window`: drafts
    accepted per draft window. `tau`: new tokens per model call (autoregressive: 1).
    """
    stats = generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        method=method,
        num_lookahead=num_lookahead,
        temperature=0.0,
    ).stats
    windows = max(stats.reached_by_position[0], 1)
    return {
        "acceptance_by_position": stats.acceptance_by_position,
        "accepted_per_window": sum(stats.accepted_by_position) / windows,
        "tau": stats.tau,
        "decode_tokens_per_s": stats.tokens_per_s,
    }
