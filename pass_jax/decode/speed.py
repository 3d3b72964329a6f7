"""SPEED (Hooper et al. 2023, seed 004): speculative pipelined execution on a parameter-shared
decoder (`method="speed"`).

A shared model (`ModelConfig.n_repeats = R > 1`) applies its unique blocks R times. Each loop
iteration is one call that applies the blocks once to every token in flight (up to
`pipeline_depth` P <= R per row), each at its own repeat: one load of the shared weights serves
them all, and each token writes its keys and values into the cache layers of its repeat as it
passes them (`DepthCache`). Slot j of a row holds the token at cache position `lengths + j`;
slot 0, the oldest, is the pending token (the one whose successor is not known yet).

- When the newest token leaves the first repeat, its early prediction
  (`Transformer.early_logits`) proposes the token after it, which enters the next free slot:
  greedy, the argmax; sampled, a draw from the early distribution `q` (processed like `p`).
- When slot 0 leaves the last repeat, its output is the target `p` of the next token, which
  verifies slot 1's token: greedy, equality with the argmax; sampled, the speculative sampling
  rule (`verify.verify_sampled`). Slot 0 is committed (all its layers are written) and the next
  token is emitted. Accepted: the pipeline shifts by one and keeps the partial work of every
  token in flight. Rejected: the tokens in flight are flushed (their cache entries are never
  committed, and are overwritten later) and the emitted token restarts at the first repeat.

Greedy output equals AR's token for token; sampled output has the model's distribution
(docs/algorithms.md, "SPEED"). With every prediction right a row emits P tokens per R calls,
each call one repeat (1/R of a forward) on P tokens; P = 1 is AR, R calls per token.

Statistics: `calls` counts these calls; the tree is the one draft each verification sees, so
`reached` / `accepted` count verifications with a token in flight behind slot 0 and the
accepted ones (the early prediction's accuracy in decoding), and `Pipeline.in_flight` the tokens
in flight per call (`tokens_in_flight`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pass_jax import sampling
from pass_jax.config import ModelConfig
from pass_jax.decode import loop, verify
from pass_jax.decode.loop import DecodeState
from pass_jax.decode.methods import DecodeMethod
from pass_jax.kv_cache import KVCache
from pass_jax.model import Transformer, rotary_embedding
from pass_jax.sampling import Sampler, SamplingParams, check_integer


@struct.dataclass
class Pipeline:
    """The tokens in flight of each row (`DecodeState.drafter_state` of `method="speed"`)."""

    tokens: jax.Array  # [B, P] int32: slot j holds the token at cache position lengths + j
    depth: jax.Array  # [B, P] int32: repeats the slot's token has passed
    valid: jax.Array  # [B, P] bool: the slots in flight, a prefix (slot 0 always)
    residual: jax.Array  # [B, P, d]: the residual stream after the slot's last repeat
    q: jax.Array | None  # [B, P, V] float32: the distribution each slot was drawn from (sampled)
    guess: jax.Array  # [B] int32: the early prediction after the newest token
    guess_q: jax.Array | None  # [B, V] float32: the distribution it was drawn from (sampled)
    has_guess: jax.Array  # [B] bool: `guess` is waiting for a free slot
    in_flight: jax.Array  # [B] int32: tokens in flight, summed over the row's active calls

    @classmethod
    def start(cls, pending: jax.Array, width: int, config: ModelConfig, sampled: bool) -> Pipeline:
        """The pending tokens [B] alone in flight, at the first repeat."""
        batch, vocab = pending.shape[0], config.vocab_size
        slots = jnp.zeros((batch, width), jnp.int32)
        return cls(
            tokens=slots.at[:, 0].set(pending),
            depth=slots,
            valid=jnp.broadcast_to(jnp.arange(width) == 0, (batch, width)),
            residual=jnp.zeros((batch, width, config.d_model), config.compute_dtype),
            q=jnp.zeros((batch, width, vocab), jnp.float32) if sampled else None,
            guess=jnp.zeros((batch,), jnp.int32),
            guess_q=jnp.zeros((batch, vocab), jnp.float32) if sampled else None,
            has_guess=jnp.zeros((batch,), jnp.bool_),
            in_flight=jnp.zeros((batch,), jnp.int32),
        )


@struct.dataclass
class DepthCache:
    """A `KVCache` seen by the N rows of one call, each at its own depth: row n writes and reads
    layer `first_layer[n] + layer` of batch row `rows[n]`, at position `positions[n]`. It stands
    in for the cache in `Transformer.run_blocks`."""

    cache: KVCache
    first_layer: jax.Array  # [N] int32: the first cache layer of the row's repeat
    rows: jax.Array  # [N] int32
    positions: jax.Array  # [N] int32

    def write(
        self, layer: int | jax.Array, k: jax.Array, v: jax.Array
    ) -> tuple[DepthCache, jax.Array, jax.Array]:
        """Writes each row's key and value k, v [N, 1, K, D]; returns the view and each row's
        layer of keys and values [N, S, K, D]."""
        layers = self.first_layer + layer  # [N]
        index = (layers, self.rows, self.positions)
        k_all = self.cache.k.at[index].set(k[:, 0].astype(self.cache.k.dtype), mode="drop")
        v_all = self.cache.v.at[index].set(v[:, 0].astype(self.cache.v.dtype), mode="drop")
        cache = self.cache.replace(k=k_all, v=v_all)
        return self.replace(cache=cache), k_all[layers, self.rows], v_all[layers, self.rows]


def check_pipeline(
    config: ModelConfig,
    method: str,
    pipeline_depth: int | None,
    longest: int,
    max_new_tokens: int,
) -> int | None:
    """`generate`'s `pipeline_depth` checked against the model: for `method="speed"` the depth
    (default `n_repeats`), else None. A `ValueError` names the problem."""
    if method != "speed":
        if pipeline_depth is not None:
            raise ValueError(f"pipeline_depth is an option of method='speed', not of {method!r}")
        return None
    repeats = config.n_repeats
    if repeats == 1:
        raise ValueError(
            "method='speed' pipelines the repeats of a parameter-shared model, but this model "
            "has n_repeats=1 (ModelConfig.n_repeats > 1 shares its layers)"
        )
    depth = repeats if pipeline_depth is None else check_integer("pipeline_depth", pipeline_depth)
    if not 1 <= depth <= repeats:
        raise ValueError(
            f"pipeline_depth={depth} is outside [1, n_repeats={repeats}]: at most one token in "
            "flight per repeat"
        )
    if longest + max_new_tokens + depth - 1 > config.max_seq_len:
        raise ValueError(
            f"the cache cannot hold the longest prompt ({longest} tokens) + max_new_tokens "
            f"({max_new_tokens}) + the tokens in flight past them ({depth - 1}): max_seq_len is "
            f"{config.max_seq_len}"
        )
    return depth


def _advance(model: Transformer, pipe: Pipeline, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """The call: every slot through the shared blocks once, at its own repeat. Returns the
    residual streams [B, P, d] and the cache with each slot's keys and values written."""
    config = model.config
    batch, width = pipe.tokens.shape
    rows = batch * width
    embedded = model.embed_inputs(pipe.tokens, None)  # [B, P, d]
    x = jnp.where((pipe.depth == 0)[..., None], embedded, pipe.residual)
    positions = cache.write_slots(width).reshape(rows, 1)  # [N, 1]
    cos, sin = rotary_embedding(positions, model.inv_freq)
    mask = (jnp.arange(cache.capacity, dtype=jnp.int32) <= positions)[:, None, :]  # [N, 1, S]
    repeat = jnp.minimum(pipe.depth, config.n_repeats - 1).reshape(rows)
    view = DepthCache(
        cache=cache,
        first_layer=repeat * config.n_layers,
        rows=jnp.repeat(jnp.arange(batch, dtype=jnp.int32), width),
        positions=positions[:, 0],
    )
    x, view = model.run_blocks(x.reshape(rows, 1, -1), cos, sin, mask, view, None)
    return x.reshape(batch, width, -1), view.cache


def _where(flags: jax.Array, a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    """`a` where flags [B], else `b` (arrays [B, ...]; None stays None)."""
    if a is None:
        return None
    return jnp.where(flags.reshape(-1, *([1] * (a.ndim - 1))), a, b)


def _shifted(x: jax.Array | None) -> jax.Array | None:
    """Slots [B, P, ...] moved one to the left (slot j takes slot j + 1's), the last zeroed."""
    if x is None:
        return None
    return jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)


def _step(
    model: Transformer, sampler: Sampler, params: SamplingParams, state: DecodeState
) -> DecodeState:
    """One call, then the early prediction, the verification of the token after slot 0 when it
    left the last repeat (commit, emit; shift or flush), and a new token into a free slot."""
    pipe: Pipeline = state.drafter_state
    batch, width = pipe.tokens.shape
    rows = jnp.arange(batch)
    active = ~state.done
    keys, early_keys, verify_keys = sampling.split_keys(state.keys, 3)
    residual, cache = _advance(model, pipe, state.cache)
    depth = pipe.depth + pipe.valid  # [B, P]
    newest = jnp.sum(pipe.valid, axis=1) - 1  # [B]
    fresh = depth[rows, newest] == 1  # the newest token left the first repeat: it predicts
    finished = depth[:, 0] == model.config.n_repeats  # slot 0 left the last one: verify
    heads = jnp.stack(
        [model.final_norm(residual[:, 0]), model.early_hidden(residual[rows, newest])], axis=1
    )  # [B, 2, d]
    logits = model.logits(heads)  # [B, 2, V]: the target after slot 0, the early prediction

    # The early prediction: the token after the newest, waiting for a free slot.
    if sampler.greedy:
        guess, guess_q = sampling.argmax(logits[:, 1]), None
    else:
        guess_q = sampler.probabilities(logits[:, 1], params)  # [B, V]
        guess = sampling.sample(early_keys, guess_q)
    pipe = pipe.replace(
        depth=depth,
        residual=residual,
        guess=jnp.where(fresh, guess, pipe.guess),
        guess_q=_where(fresh, guess_q, pipe.guess_q),
        has_guess=pipe.has_guess | fresh,
    )

    # Verify slot 1's token against the target after slot 0.
    second = min(1, width - 1)  # slot 1 (slot 0 when P = 1, never in flight behind itself)
    draft = pipe.tokens[:, second]
    drafted = pipe.valid[:, second] & (width > 1)  # [B]
    if sampler.greedy:
        token = sampling.argmax(logits[:, 0])
        accept = drafted & (draft == token)
    else:
        p = sampler.probabilities(logits[:, :1], params)  # [B, 1, V]
        # No bonus token: an accepted draft is the next token (its bonus draw is dropped).
        count, token = verify.verify_sampled(
            verify_keys,
            jnp.concatenate([p, p], axis=1),
            pipe.q[:, second : second + 1],
            draft[:, None],
            drafted[:, None],
        )
        accept = count == 1
    token = jnp.where(accept, draft, token)  # [B]: the next token
    keep, flush = finished & accept, finished & ~accept
    fields = ("tokens", "depth", "valid", "residual", "q")
    pipe = pipe.replace(
        **{f: _where(keep, _shifted(getattr(pipe, f)), getattr(pipe, f)) for f in fields}
    )
    first = jnp.arange(width) == 0  # [P]
    pipe = pipe.replace(
        tokens=pipe.tokens.at[:, 0].set(jnp.where(flush, token, pipe.tokens[:, 0])),
        depth=jnp.where(flush[:, None], 0, pipe.depth),
        valid=jnp.where(flush[:, None], first, pipe.valid),
        has_guess=pipe.has_guess & ~flush,
    )

    # The waiting prediction enters the first free slot, at the first repeat.
    count = jnp.sum(pipe.valid, axis=1)  # [B]
    add = pipe.has_guess & (count < width)
    slot = jnp.minimum(count, width - 1)
    q = pipe.q
    if q is not None:
        q = q.at[rows, slot].set(_where(add, pipe.guess_q, q[rows, slot]))
    pipe = pipe.replace(
        tokens=pipe.tokens.at[rows, slot].set(jnp.where(add, pipe.guess, pipe.tokens[rows, slot])),
        depth=pipe.depth.at[rows, slot].set(jnp.where(add, 0, pipe.depth[rows, slot])),
        valid=pipe.valid.at[rows, slot].set(pipe.valid[rows, slot] | add),
        q=q,
        has_guess=pipe.has_guess & ~add,
        in_flight=pipe.in_flight + jnp.where(active, newest + 1, 0),
    )

    due = finished & active  # rows whose next token is emitted and slot 0 committed
    state = state.replace(
        cache=cache.commit(due.astype(jnp.int32)),
        keys=keys,
        pending=jnp.where(due, token, state.pending),
        drafter_state=pipe,
        row_calls=state.row_calls + active,
        calls=state.calls + 1,
        reached=state.reached.at[:, 0].add(due & drafted),
        accepted=state.accepted.at[:, 0].add(due & accept),
    )
    return loop._emit(state, token[:, None], jnp.ones((batch,), jnp.int32), due)


def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    cache: KVCache,
    pending: jax.Array,  # [B] int32: each prompt's last token
    keys: jax.Array,  # [B] PRNG keys
    sampling_params: SamplingParams,
    max_new: jax.Array,  # [] int32
    eos_id: jax.Array,  # [] int32, -1 for none
    prompt: jax.Array,  # [B, prompt block] int32, right-padded prompts
    prompt_lengths: jax.Array,  # [B] int32
    *,
    method: DecodeMethod,
    sampler: Sampler,
    buffer_len: int,
) -> DecodeState:
    """SPEED's decoding loop, `loop.decode`'s arguments: one `lax.while_loop` of calls until
    every row is done."""
    model = nnx.merge(graphdef, params)
    state = loop.initial_state(
        model, method, sampler, buffer_len, cache, pending, keys, max_new, eos_id, prompt,
        prompt_lengths,
    )  # fmt: skip
    pipe = Pipeline.start(pending, method.pipeline_depth, model.config, not sampler.greedy)
    state = state.replace(drafter_state=pipe)
    # Every emitted token takes at most n_repeats calls (a restart); a guard.
    max_calls = model.config.n_repeats * (buffer_len + 1)

    def cond(state: DecodeState) -> jax.Array:
        return ~jnp.all(state.done) & (state.calls < max_calls)

    return jax.lax.while_loop(cond, lambda s: _step(model, sampler, sampling_params, s), state)


def tokens_in_flight(state: DecodeState) -> float:
    """Tokens in flight per call, over the calls each row made while active."""
    return float(jnp.sum(state.drafter_state.in_flight)) / max(int(jnp.sum(state.row_calls)), 1)
