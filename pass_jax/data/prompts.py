"""Held-out prompts: the first tokens of documents, BOS-prefixed like the training documents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pass_jax.data.config import DataConfig
from pass_jax.data.sources import DocumentSource, make_source
from pass_jax.tokenizer import Tokenizer, bos_prefix

__all__ = ["config_prompts", "sample_prompts"]


def sample_prompts(
    source: Sequence[str] | DocumentSource,
    tokenizer: Tokenizer,
    *,
    num_prompts: int,
    add_bos: bool,
    prompt_len: int = 32,
    seed: int | None = 0,
) -> np.ndarray:
    """The first ``prompt_len`` tokens of ``num_prompts`` documents of ``source``.

    Documents are visited in a seeded random order (``seed=None``: source order); ones with
    fewer than ``prompt_len`` tokens are skipped. With ``add_bos`` BOS is prepended (the
    result then has ``prompt_len + 1`` columns), as `tokenize_documents` does for training.

    Returns:
      int32 [num_prompts, prompt_len (+1 with add_bos)].
    """
    if num_prompts < 1 or prompt_len < 1:
        raise ValueError("num_prompts and prompt_len must be positive")
    prefix = bos_prefix(tokenizer, add_bos=add_bos)
    n = len(source)
    order = range(n) if seed is None else np.random.default_rng(seed).permutation(n)
    prompts: list[list[int]] = []
    for i in order:
        ids = tokenizer.encode(source[int(i)])
        if len(ids) >= prompt_len:
            prompts.append(prefix + ids[:prompt_len])
            if len(prompts) == num_prompts:
                break
    if len(prompts) < num_prompts:
        raise ValueError(
            f"only {len(prompts)} of {n} documents have >= {prompt_len} tokens; "
            f"{num_prompts} prompts requested"
        )
    return np.asarray(prompts, dtype=np.int32).reshape(num_prompts, -1)  # [N, P]


def config_prompts(
    config: DataConfig, tokenizer: Tokenizer, *, num_prompts: int, prompt_len: int
) -> np.ndarray:
    """`sample_prompts` from ``config``'s source and split, seeded by ``config.seed``, with BOS
    exactly when ``config.add_bos``: prompts that start like the model's training documents.

    Returns:
      int32 [num_prompts, prompt_len (+1 with add_bos)].
    """
    return sample_prompts(
        make_source(config),
        tokenizer,
        num_prompts=num_prompts,
        prompt_len=prompt_len,
        seed=config.seed,
        add_bos=config.add_bos,
    )
