"""`generate`: batched decoding with autoregressive sampling or PaSS, one jitted loop per method.

Methods:
- `"ar"`: autoregressive decoding, one model call per token.
- `"pass"`: Parallel Speculative Sampling with the model's trained lookahead table, `num_lookahead`
  drafts per iteration (default: the table size L_max). `num_lookahead=0` drafts nothing and runs
  the autoregressive loop.
- `"pass_unk"`: the paper's "[UNK] lookahead" baseline: PaSS with every lookahead embedding reset
  to the UNK token's embedding (an untrained table).

Compilation: prompts are right-padded to a power-of-two bucket (at least 16) and the output
buffer is sized to a power-of-two bucket of `max_new_tokens` (at least 16), the exact limit being
a traced value. Calls with the same batch size, buckets, method, `num_lookahead` and sampling mode
(greedy or not, top-k, top-p on or off) reuse one compiled program; temperature, top-p value,
seed and EOS id never recompile.

`.stats` counts only the decode loop's model calls; the prefill call is reported apart.

Sharding: a model whose state lives on a mesh (`sharding.shard_model`) decodes on that mesh:
the prompts, the cache and the loop state are split over its batch axes (when the batch
divides), and the programs are traced under `jax.set_mesh` so the model's sharding hints apply.
The executables are cached per argument sharding, so each mesh compiles its own. On a mesh that
spans several processes, every process calls `generate` with the same prompts and gets the
whole result (rows held by other processes are gathered).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from pass_jax import sharding
from pass_jax.config import ModelConfig
from pass_jax.decode import loop
from pass_jax.model import Transformer
from pass_jax.sampling import SamplingConfig, SamplingParams

METHODS = ("ar", "pass", "pass_unk")
_MIN_BUCKET = 16
_EXECUTABLES: dict[Any, Any] = {}


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """New tokens per row (no padding, ending at EOS when produced) and decoding statistics."""

    tokens: list[list[int]]
    stats: dict[str, Any]


def bucket(n: int) -> int:
    """The power of two (at least 16) that a length is padded to."""
    return max(_MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length())


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: str = "ar",
    num_lookahead: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
) -> GenerationResult:
    """Decodes `max_new_tokens` new tokens (fewer on EOS) after each prompt.

    Rows are independent: each has its own cache length, positions and random stream (from
    `seed` and the row index), so a row's output does not depend on the rest of the batch.
    """
    sampling_config = SamplingConfig(temperature, top_k, top_p)
    num_la = _check_inputs(model, prompts, max_new_tokens, method, num_lookahead, eos_id)
    config = model.config
    lengths = np.array([len(p) for p in prompts], np.int32)
    prompt_block, capacity = cache_shape(config, int(lengths.max()), max_new_tokens, num_la)
    tokens = np.zeros((len(prompts), prompt_block), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt

    graphdef, params = nnx.split(model)
    mesh = sharding.mesh_of(params)
    if method == "pass_unk":
        params = _reset_lookahead_to_unk(params, config.unk_id)
    loop_method = "pass" if num_la else "ar"
    opts = loop.LoopOptions(num_la, *sampling_config.static_key)
    consts = loop.LoopConstants(
        max_new=jnp.int32(max_new_tokens),
        eos_id=jnp.int32(-1 if eos_id is None else eos_id),
        sampling=SamplingParams.from_config(sampling_config),
    )
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(
        jax.random.key(seed), jnp.arange(len(prompts))
    )
    pending = tokens[np.arange(len(prompts)), lengths - 1]
    tokens, lengths, pending, row_keys = (
        sharding.shard_batch(x, mesh) for x in (tokens, lengths, pending, row_keys)
    )

    prefill_args = (graphdef, params, tokens, lengths)
    prefill, prefill_compile_s = _compiled(loop.prefill, prefill_args, capacity=capacity)
    start = time.perf_counter()
    cache = jax.block_until_ready(prefill(*prefill_args[1:]))
    prefill_s = time.perf_counter() - start

    decode_args = (graphdef, params, cache, pending, row_keys, consts)
    decode, decode_compile_s = _compiled(
        loop.decode,
        decode_args,
        donate=(1,),
        method=loop_method,
        buffer_len=bucket(max_new_tokens),
        opts=opts,
    )
    start = time.perf_counter()
    state = jax.block_until_ready(decode(*decode_args[1:]))
    decode_s = time.perf_counter() - start
    state = state.replace(cache=None, **_on_host(state, _RESULT_FIELDS))

    num_new = np.asarray(state.num_new)
    out = np.asarray(state.tokens)
    new_tokens = [out[row, : num_new[row]].tolist() for row in range(len(prompts))]
    stats = _statistics(state, num_la, decode_s, prefill_s, prefill_compile_s + decode_compile_s)
    stats["method"] = method
    return GenerationResult(tokens=new_tokens, stats=stats)


def cache_shape(
    config: ModelConfig, longest_prompt: int, max_new_tokens: int, num_lookahead: int
) -> tuple[int, int]:
    """(prompt block, cache capacity) of a call: bucketed lengths plus the lookahead window."""
    capacity = min(
        config.max_seq_len, bucket(longest_prompt) + bucket(max_new_tokens) + num_lookahead
    )
    return min(bucket(longest_prompt), capacity), capacity


def _check_inputs(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    method: str,
    num_lookahead: int | None,
    eos_id: int | None,
) -> int:
    """Validates a call before anything compiles; returns the number of drafts per iteration."""
    config = model.config
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty: every prompt needs at least one token")
        ids = np.asarray(prompt)
        if ids.min() < 0 or ids.max() >= config.vocab_size:
            raise ValueError(
                f"prompt {row} has token ids outside the vocabulary [0, {config.vocab_size})"
            )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if eos_id is not None and not 0 <= eos_id < config.vocab_size:
        raise ValueError(f"eos_id {eos_id} outside the vocabulary [0, {config.vocab_size})")
    num_la = 0
    if method != "ar":
        if not model.has_lookahead:
            raise ValueError(
                f"method {method!r} needs a lookahead table, but this model has none "
                "(ModelConfig.max_lookahead == 0)"
            )
        num_la = config.max_lookahead if num_lookahead is None else num_lookahead
        if not 0 <= num_la <= config.max_lookahead:
            raise ValueError(
                f"num_lookahead={num_la} is outside [0, {config.max_lookahead}]: the model's "
                f"lookahead table has L_max={config.max_lookahead} rows"
            )
    elif num_lookahead:
        raise ValueError(f"num_lookahead={num_lookahead} given with method='ar'")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens + num_la > config.max_seq_len:
        raise ValueError(
            f"the cache cannot hold the longest prompt ({longest} tokens) + max_new_tokens "
            f"({max_new_tokens}) + the lookahead window ({num_la}) = "
            f"{longest + max_new_tokens + num_la} positions: max_seq_len is {config.max_seq_len}"
        )
    return num_la


_RESULT_FIELDS = ("tokens", "num_new", "row_calls", "calls", "reached", "accepted")


def _on_host(state: loop.DecodeState, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """The named fields of the final state as numpy arrays; rows that live on other processes
    are gathered first."""

    def fetch(x: jax.Array) -> np.ndarray:
        if not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return {name: fetch(getattr(state, name)) for name in fields}


def _reset_lookahead_to_unk(params: nnx.State, unk_id: int) -> nnx.State:
    """The "[UNK] lookahead" baseline: every lookahead row set to the UNK embedding."""
    params = jax.tree.map(lambda x: x, params)  # a shallow copy; leaves are immutable
    table = params["lookahead"][...]
    params["lookahead"][...] = jnp.broadcast_to(params["embed"][...][unk_id], table.shape)
    return params


def lower(fn, args: tuple, donate: tuple[int, ...] = (), **static) -> jax.stages.Lowered:
    """`fn(*args, **static)` lowered with its first arg static and `args[1:]` as arguments
    (arrays or `jax.ShapeDtypeStruct`s), traced under the mesh they live on (none if they live
    on no mesh, whatever mesh the caller set): the program depends only on the arguments."""
    graphdef = args[0]
    jitted = jax.jit(lambda *rest: fn(graphdef, *rest, **static), donate_argnums=donate)
    with jax.set_mesh(sharding.mesh_of(args[1:])):
        return jitted.lower(*args[1:])


def _compiled(fn, args: tuple, donate: tuple[int, ...] = (), **static):
    """An executable for `fn(*args, **static)` (first arg static), compiled once per shape,
    dtype and sharding of `args[1:]`.

    Returns the executable (which takes `args[1:]`) and the seconds spent compiling now.
    """
    leaves, treedef = jax.tree.flatten(args[1:])
    signature = tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves)
    key = (fn, args[0], treedef, signature, tuple(sorted(static.items())), donate)
    if key in _EXECUTABLES:
        return _EXECUTABLES[key], 0.0
    start = time.perf_counter()
    executable = lower(fn, args, donate, **static).compile()
    _EXECUTABLES[key] = executable
    return executable, time.perf_counter() - start


def _statistics(
    state: loop.DecodeState,
    num_lookahead: int,
    decode_s: float,
    prefill_s: float,
    compile_s: float,
) -> dict[str, Any]:
    row_calls = np.asarray(state.row_calls)
    num_new = np.asarray(state.num_new)
    reached = np.asarray(state.reached).sum(axis=0)
    accepted = np.asarray(state.accepted).sum(axis=0)
    total_new = int(num_new.sum())
    proposed = int(reached[0]) * num_lookahead if num_lookahead else 0
    return {
        "forward_passes": int(state.calls),
        "new_tokens": total_new,
        "tau": total_new / max(int(row_calls.sum()), 1),
        "num_lookahead": num_lookahead,
        "per_row": {
            "forward_passes": row_calls.tolist(),
            "new_tokens": num_new.tolist(),
            "tau": (num_new / np.maximum(row_calls, 1)).tolist(),
            "reached": np.asarray(state.reached).tolist(),
            "accepted": np.asarray(state.accepted).tolist(),
        },
        "reached_by_position": reached.tolist(),
        "accepted_by_position": accepted.tolist(),
        "acceptance_by_position": (accepted / np.maximum(reached, 1)).tolist(),
        "acceptance_rate": float(accepted.sum()) / proposed if proposed else 0.0,
        "decode_s": decode_s,
        "prefill_s": prefill_s,
        "compile_s": compile_s,
        "tokens_per_s": total_new / decode_s if decode_s > 0 else 0.0,
    }
