"""Text in, text out: `generate` behind a tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from pass_jax.decode.generation import generate
from pass_jax.model import Transformer
from pass_jax.tokenizer import Tokenizer, bos_prefix


def encode_prompt(tokenizer: Tokenizer, text: str, *, add_bos: bool | None = None) -> list[int]:
    """The prompt's ids, after BOS when `add_bos` (None: the tokenizer's own `add_bos`)."""
    ids = bos_prefix(tokenizer, add_bos=add_bos) + tokenizer.encode(text)
    if not ids:
        raise ValueError("the prompt is empty (and no BOS is added)")
    return ids


@overload
def generate_text(model: Transformer, tokenizer: Tokenizer, prompts: str, **kwargs) -> str: ...
@overload
def generate_text(
    model: Transformer, tokenizer: Tokenizer, prompts: Sequence[str], **kwargs
) -> list[str]: ...


def generate_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int,
    method: str = "ar",
    num_lookahead: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    add_bos: bool | None = None,
) -> str | list[str]:
    """The continuation of each prompt (one string for one prompt, else a list), decoded by
    `generate` (arguments as there) until `tokenizer.eos_id` or `max_new_tokens` new tokens.
    Prompts start with BOS when `add_bos`, by default when the tokenizer's convention says so."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise ValueError("no prompts")
    ids = [encode_prompt(tokenizer, text, add_bos=add_bos) for text in texts]
    eos_id = tokenizer.eos_id if tokenizer.eos_id >= 0 else None
    result = generate(
        model,
        ids,
        max_new_tokens=max_new_tokens,
        method=method,
        num_lookahead=num_lookahead,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_id=eos_id,
    )
    completions = [tokenizer.decode(tokens) for tokens in result.tokens]
    return completions[0] if isinstance(prompts, str) else completions
