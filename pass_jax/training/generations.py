"""The model's own continuations as a training corpus, for the `distill` and `joint` stages.

A table trained on the corpus learns to draft the corpus; at decoding time it drafts the model's
own continuations, which for a small or weak model can be far from the corpus (greedy output
repeats itself). Training the table on what the model itself generates from corpus prompts
removes that shift (self-distillation; the base stays frozen and decoding stays lossless).

Each sequence is the first `prompt_len` tokens of a training sequence followed by the model's
continuation (greedy at temperature 0, else sampled with top-k), decoded with `generate` to
exactly the training sequence length (no EOS stop). The corpus is a function of the base
weights, the prompts and the settings; it is cached in the workdir (`generations/STAGE/`),
keyed by all three, so that a resumed stage trains on the same sequences and a retrained base
gets a new corpus.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import jax
import numpy as np

from pass_jax.data.tokens import save_array
from pass_jax.decode.generation import generate
from pass_jax.io.checkpoint import split_params
from pass_jax.model import Transformer

CORPUS_FILENAME = "generations.npy"


def generate_corpus(
    model: Transformer,
    prompts: np.ndarray,  # [N, P] int32
    *,
    seq_len: int,
    temperature: float,
    top_k: int = 0,
    batch_size: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Each prompt continued by the model to `seq_len` tokens: int32 [N, seq_len]."""
    num, prompt_len = prompts.shape
    if not 0 < prompt_len < seq_len:
        raise ValueError(f"prompt_len {prompt_len} must be in [1, seq_len={seq_len})")
    rows = []
    for start in range(0, num, batch_size):
        batch = prompts[start : start + batch_size]
        result = generate(
            model,
            batch.tolist(),
            max_new_tokens=seq_len - prompt_len,
            temperature=temperature,
            top_k=top_k,
            seed=seed + start,
        )
        rows.append(np.concatenate([batch, np.asarray(result.tokens)], axis=1))
    return np.concatenate(rows).astype(np.int32)


def corpus_key(model: Transformer, prompts: np.ndarray, **settings) -> str:
    """Names a corpus by the model's base weights (not its lookahead table, which generation
    does not read and the stage trains), the prompts and the generation settings."""
    digest = hashlib.sha1(np.ascontiguousarray(prompts).tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path, leaf in jax.tree.leaves_with_path(split_params(model)["params"]):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _load_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The corpus cached at `path`, or None (with a warning naming it) when it is damaged."""
    try:
        corpus = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        problem = str(e)
    else:
        if corpus.shape == shape and corpus.dtype == np.int32:
            return corpus
        problem = f"{corpus.dtype} {list(corpus.shape)}, expected int32 {list(shape)}"
    warnings.warn(
        f"damaged generations cache {path} ({problem}): generating it again", stacklevel=3
    )
    return None


def load_or_generate(
    directory: Path,
    model: Transformer,
    prompts: np.ndarray,  # [N, P] int32
    *,
    seq_len: int,
    temperature: float,
    top_k: int,
    seed: int,
) -> tuple[np.ndarray, str]:
    """The cached corpus in `directory` if it matches, else a new one (written atomically; a
    damaged cache is generated again, with a warning).

    Returns:
      (int32 [N, seq_len] sequences, the corpus key).
    """
    settings = dict(seq_len=seq_len, temperature=temperature, top_k=top_k, seed=seed)
    key = corpus_key(model, prompts, **settings)
    path = directory / CORPUS_FILENAME
    key_path = directory / (CORPUS_FILENAME + ".key")
    if path.is_file() and key_path.is_file() and key_path.read_text() == key:
        cached = _load_cached(path, (len(prompts), seq_len))
        if cached is not None:
            return cached, key
    start = time.perf_counter()
    corpus = generate_corpus(model, prompts, **settings)
    print(
        f"generated {corpus.shape[0]} sequences of {seq_len} tokens at temperature "
        f"{temperature} in {time.perf_counter() - start:.1f}s"
    )
    key_path.unlink(missing_ok=True)
    save_array(path, corpus)
    key_path.write_text(key)
    return corpus, key
