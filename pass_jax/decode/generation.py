"""`generate`: batched decoding with autoregressive sampling or PaSS, one jitted loop per method.

Methods (`methods.METHODS`; see `pass_jax.decode.methods`): `"ar"`, `"pass"` (the paper's two
calls per iteration), `"pass_unk"` (the untrained-table baseline), `"pass_fused"` and
`"pass_tree"` (one call per iteration). Every lookahead method takes `num_lookahead` drafts per
window (default: the table size L_max; 0 decodes autoregressively), optionally several
candidates per position (`candidates=k`, or an explicit `tree` of paths), and a `draft_rule`:
`"sampled"` (the paper), `"distinct"` (candidates without replacement) or `"argmax"`
(deterministic drafts verified as one-hot proposals). `"prompt_lookup"` verifies n-gram copies
from each row's own context (any model); the lookahead methods can be backed by them
(`backing="prompt_lookup"`) and cut their windows per row (`adaptive`). `"sps"` and `"pearl"`
draft with a smaller model (`draft_model`, with its own cache; its weights are an argument of
the program, so a draft model of the same shape reuses it). Every combination is lossless.

Compilation: prompts are right-padded to a power-of-two bucket (at least 16) and the output
buffer is sized to a power-of-two bucket of `max_new_tokens` (at least 16), the exact limit being
a traced value. Calls with the same batch size, buckets, method and method options (the tree,
draft rule, n-gram sizes, backing, adaptive rule and threshold) and sampling mode (greedy or
not, top-k, top-p on or off) reuse one compiled program; temperature, top-p value, seed and EOS
id never recompile.

`.stats` counts only the decode loop's model calls (the draft model's apart); the prefill calls
are reported apart.

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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from pass_jax import sharding
from pass_jax.config import ModelConfig
from pass_jax.decode import loop, speed
from pass_jax.decode.adaptive import ADAPTIVE_RULES
from pass_jax.decode.draft_model import DEFAULT_GAMMA
from pass_jax.decode.methods import (
    BACKINGS,
    DRAFT_MODEL_METHODS,
    LOOKAHEAD_METHODS,
    METHODS,
    DecodeMethod,
)
from pass_jax.decode.prompt_lookup import DEFAULT_DRAFTS, DEFAULT_NGRAM
from pass_jax.decode.tree import DraftTree
from pass_jax.decode.verify import DRAFT_RULES
from pass_jax.model import AdapterParam, Transformer, unk_lookahead_table
from pass_jax.sampling import Sampler, SamplingParams, check_integer

TreeSpec = Sequence[Sequence[int]]  # draft-tree paths, e.g. ((0,), (1,), (0, 0))
_MIN_BUCKET = 16
_EXECUTABLES: dict[Any, Any] = {}
ArgTree = Any  # a program argument: arrays or `jax.ShapeDtypeStruct`s, or a tree of them


@dataclasses.dataclass(frozen=True)
class RowStats:
    """Per-row statistics, one entry per row (`reached`/`accepted`: one list of L per row)."""

    forward_passes: list[int]
    new_tokens: list[int]
    tau: list[float]
    reached: list[list[int]]
    accepted: list[list[int]]


@dataclasses.dataclass(frozen=True)
class DecodeStats:
    """Statistics of one `generate` call; `*_by_position` lists have one entry per draft slot."""

    forward_passes: int  # decode-loop model calls (the prefill call is not counted)
    new_tokens: int
    tau: float  # new tokens per model call made while a row was active
    num_lookahead: int
    call_block_lens: list[int]  # tokens fed by each model call of one iteration
    draft_forward_passes: int  # draft-model calls (sps, pearl: num_lookahead per iteration)
    per_row: RowStats
    reached_by_position: list[int]  # how often draft slot i was verified
    accepted_by_position: list[int]  # how often draft slot i was accepted
    acceptance_by_position: list[float]
    acceptance_rate: float  # accepted drafts / proposed drafts
    decode_s: float
    prefill_s: float
    compile_s: float
    tokens_per_s: float
    method: str
    tokens_in_flight: float = 0.0  # speed: tokens per call, mean (0 for the other methods)

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists, for JSON."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """New tokens per row (no padding, ending at EOS when produced) and decoding statistics."""

    tokens: list[list[int]]
    stats: DecodeStats


def bucket(n: int) -> int:
    """The power of two (at least 16) that a length is padded to."""
    return max(_MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Program:
    """`fn(graphdef, *args, **static)` as one jitted program: `args` are its arguments (arrays or
    `jax.ShapeDtypeStruct`s), `donate` indexes them."""

    fn: Callable[..., Any]
    graphdef: nnx.GraphDef
    args: tuple[ArgTree, ...]
    static: dict[str, Any]
    donate: tuple[int, ...] = ()

    def lower(self) -> jax.stages.Lowered:
        """Lowered under the mesh the arguments live on (none if they live on no mesh, whatever
        mesh the caller set): the program depends only on the arguments."""
        jitted = jax.jit(
            lambda *args: self.fn(self.graphdef, *args, **self.static), donate_argnums=self.donate
        )
        with jax.set_mesh(sharding.mesh_of(self.args)):
            return jitted.lower(*self.args)

    def compiled(self) -> tuple[jax.stages.Compiled, float]:
        """The executable (compiled once per shape, dtype and sharding of the arguments), which
        takes `args`, and the seconds spent compiling it now."""
        leaves, treedef = jax.tree.flatten(self.args)
        signature = tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves)
        static = tuple(sorted(self.static.items()))
        key = (self.fn, self.graphdef, treedef, signature, static, self.donate)
        if key in _EXECUTABLES:
            return _EXECUTABLES[key], 0.0
        start = time.perf_counter()
        executable = self.lower().compile()
        _EXECUTABLES[key] = executable
        return executable, time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """The static shape of a `generate` call: everything its compiled programs depend on besides
    the model and the argument shardings."""

    method: DecodeMethod
    sampler: Sampler
    batch_size: int
    prompt_block: int  # prompts are right-padded to this many tokens
    capacity: int  # cache positions per row: bucketed lengths plus the largest call's block
    buffer_len: int  # new tokens each row's output buffer holds
    draft_capacity: int = 0  # the draft model's cache positions per row (0: no draft model)

    @classmethod
    def create(
        cls,
        config: ModelConfig,
        batch_size: int,
        longest_prompt: int,
        max_new_tokens: int,
        method: str,
        num_lookahead: int,
        sampler: Sampler,
        tree: DraftTree | None = None,
        draft_rule: str = "sampled",
        **options: Any,
    ) -> DecodePlan:
        """Buckets the lengths (`bucket`); the cache holds both buckets and the largest call.
        `tree` defaults to a chain of `num_lookahead` drafts; `options` are `DecodeMethod`'s
        drafting options (`ngram`, `backing`, `adaptive`, `adaptive_threshold`, `draft_model`).
        The draft model's cache has the same room, more if it writes further than the target."""
        tree = DraftTree.chain(num_lookahead) if tree is None or not num_lookahead else tree
        decode_method = DecodeMethod(method, tree, draft_rule, **options)
        capacity = min(
            config.max_seq_len,
            bucket(longest_prompt) + bucket(max_new_tokens) + decode_method.block_len - 1,
        )
        room = decode_method.draft_block_len  # how far the draft model writes (0: none)
        return cls(
            method=decode_method,
            sampler=sampler,
            batch_size=batch_size,
            prompt_block=min(bucket(longest_prompt), capacity),
            capacity=capacity,
            buffer_len=bucket(max_new_tokens),
            draft_capacity=capacity + max(room - decode_method.block_len, 0) if room else 0,
        )

    @property
    def num_lookahead(self) -> int:
        """Drafts per window; 0 for autoregressive decoding."""
        return self.method.num_lookahead

    def row_inputs(self) -> tuple[jax.ShapeDtypeStruct, ...]:
        """Shapes of the per-row inputs: prompt tokens [B, P], prompt lengths [B], pending
        tokens [B], PRNG keys [B]."""
        batch = self.batch_size
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))
        return (
            jax.ShapeDtypeStruct((batch, self.prompt_block), jnp.int32),
            jax.ShapeDtypeStruct((batch,), jnp.int32),
            jax.ShapeDtypeStruct((batch,), jnp.int32),
            keys,
        )

    def prefill(
        self,
        graphdef: nnx.GraphDef,
        params: ArgTree,
        tokens: ArgTree,
        lengths: ArgTree,
        *,
        draft: bool = False,
    ) -> Program:
        """The prefill program: prompts [B, P] and their lengths [B] into a fresh cache (the
        draft model's, of `draft_capacity`, with `draft`)."""
        capacity = self.draft_capacity if draft else self.capacity
        return Program(loop.prefill, graphdef, (params, tokens, lengths), {"capacity": capacity})

    def decode(
        self,
        graphdef: nnx.GraphDef,
        params: ArgTree,
        cache: ArgTree,
        pending: ArgTree,
        keys: ArgTree,
        sampling_params: SamplingParams,
        max_new_tokens: int,
        eos_id: int | None,
        tokens: ArgTree,
        lengths: ArgTree,
        draft_params: ArgTree = None,
        draft_cache: ArgTree = None,
    ) -> Program:
        """The decoding loop from the prefilled cache (donated), with the prompts [B, P] and
        their lengths [B] (the rows' context), and the draft model's weights and prefilled cache
        (donated) for the methods that have one; the token limit, EOS id and sampling parameters
        are traced."""
        limits = (jnp.int32(max_new_tokens), jnp.int32(-1 if eos_id is None else eos_id))
        args = (params, cache, pending, keys, sampling_params, *limits, tokens, lengths)
        donate = (1,)
        if draft_params is not None:
            args, donate = (*args, draft_params, draft_cache), (1, len(args) + 1)
        return Program(
            speed.decode if self.method.name == "speed" else loop.decode,
            graphdef,
            args,
            {"method": self.method, "sampler": self.sampler, "buffer_len": self.buffer_len},
            donate=donate,
        )


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: str = "ar",
    num_lookahead: int | None = None,
    candidates: int = 1,
    tree: TreeSpec | None = None,
    draft_rule: str = "sampled",
    ngram_size: int = DEFAULT_NGRAM[0],
    ngram_min: int = DEFAULT_NGRAM[1],
    backing: str | None = None,
    adaptive: str | None = None,
    adaptive_threshold: float = 0.5,
    draft_model: Transformer | None = None,
    pipeline_depth: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
) -> GenerationResult:
    """Decodes `max_new_tokens` new tokens (fewer on EOS) after each prompt.

    Lookahead methods draft `num_lookahead` positions per window (default L_max), `candidates`
    per position (the top one continues the chain: `DraftTree.top_k`), or the draft tree
    `tree` (paths of candidate ranks, Medusa's notation; its depth is the window).
    `method="prompt_lookup"` drafts a chain of `num_lookahead` (default 4) tokens copied after
    the most recent earlier occurrence of the row's last n tokens, n from `ngram_size` down to
    `ngram_min`; `backing="prompt_lookup"` fills a lookahead method's empty draft slots the same
    way. `adaptive` cuts each row's window: `"confidence"` before the first draft whose largest
    draft probability is below `adaptive_threshold`, `"acceptance"` past the drafts whose running
    chance of acceptance is below it (`pass_jax.decode.adaptive`). `method="sps"` and
    `method="pearl"` draft with `draft_model` (a smaller `Transformer` with the model's
    vocabulary), `num_lookahead` (gamma, default 4) tokens per window; it is placed on the
    model's mesh if it lives on none. `method="speed"` pipelines a parameter-shared model
    (`n_repeats > 1`) with `pipeline_depth` tokens in flight (default `n_repeats`;
    `pass_jax.decode.speed`). Rows are independent: each has its own cache length,
    positions and random stream (from `seed` and the row index), so a row's output does not
    depend on the rest of the batch.
    """
    sampler, sampling_params = Sampler.create(temperature, top_k, top_p)
    draft_tree = _check_inputs(
        model, prompts, max_new_tokens, method, num_lookahead, candidates, tree, draft_rule, seed,
        eos_id,
    )  # fmt: skip
    options = _drafting_options(
        method, ngram_size, ngram_min, backing, adaptive, adaptive_threshold
    )
    max_new_tokens, seed = int(max_new_tokens), int(seed)  # NumPy ints too
    lengths = np.array([len(p) for p in prompts], np.int32)
    depth = speed.check_pipeline(
        model.config, method, pipeline_depth, int(lengths.max()), max_new_tokens
    )
    if depth is not None:
        options["pipeline_depth"] = depth
    _check_draft_model(model, draft_model, method, draft_tree, int(lengths.max()), max_new_tokens)
    if draft_model is not None:
        draft_graphdef, draft_params = nnx.split(draft_model)
        options["draft_model"] = draft_graphdef
    plan = DecodePlan.create(
        model.config, len(prompts), int(lengths.max()), max_new_tokens, method,
        draft_tree.depth, sampler, draft_tree, draft_rule, **options,
    )  # fmt: skip
    tokens = np.zeros((plan.batch_size, plan.prompt_block), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt

    graphdef, params = nnx.split(model)
    mesh = sharding.mesh_of(params)
    if method == "pass_unk":
        params = _with_unk_lookahead(params, model.config.unk_id)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(
        jax.random.key(seed), jnp.arange(plan.batch_size)
    )
    pending = tokens[np.arange(plan.batch_size), lengths - 1]
    tokens, lengths, pending, row_keys = (
        sharding.shard_batch(x, mesh) for x in (tokens, lengths, pending, row_keys)
    )

    program = plan.prefill(graphdef, params, tokens, lengths)
    prefill, prefill_compile_s = program.compiled()
    start = time.perf_counter()
    cache = jax.block_until_ready(prefill(*program.args))
    prefill_s = time.perf_counter() - start
    draft = ()
    if draft_model is not None:
        if mesh is not None and sharding.mesh_of(draft_params) is None:
            draft_params = jax.device_put(
                draft_params, sharding.param_shardings(draft_params, mesh)
            )
        program = plan.prefill(draft_graphdef, draft_params, tokens, lengths, draft=True)
        draft_prefill, compile_s = program.compiled()
        prefill_compile_s += compile_s
        start = time.perf_counter()
        draft = (draft_params, jax.block_until_ready(draft_prefill(*program.args)))
        prefill_s += time.perf_counter() - start

    program = plan.decode(
        graphdef, params, cache, pending, row_keys, sampling_params, max_new_tokens, eos_id,
        tokens, lengths, *draft,
    )  # fmt: skip
    decode, decode_compile_s = program.compiled()
    start = time.perf_counter()
    state = jax.block_until_ready(decode(*program.args))
    decode_s = time.perf_counter() - start
    state = state.replace(cache=None, **_on_host(state, _RESULT_FIELDS))

    num_new = np.asarray(state.num_new)
    out = np.asarray(state.tokens)
    new_tokens = [out[row, : num_new[row]].tolist() for row in range(plan.batch_size)]
    compile_s = prefill_compile_s + decode_compile_s
    stats = _statistics(state, plan, decode_s, prefill_s, compile_s)
    return GenerationResult(tokens=new_tokens, stats=stats)


def check_options(
    max_new_tokens: int, num_lookahead: int | None = None, seed: int = 0, eos_id: int | None = None
) -> None:
    """The checks of `generate`'s options that need no model: integers (a `TypeError` naming
    the argument otherwise), `max_new_tokens >= 1`, `num_lookahead >= 0`."""
    if check_integer("max_new_tokens", max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_lookahead is not None and check_integer("num_lookahead", num_lookahead) < 0:
        raise ValueError(f"num_lookahead={num_lookahead} is outside [0, L_max]")
    check_integer("seed", seed)
    if eos_id is not None:
        check_integer("eos_id", eos_id)


def check_num_lookahead(num_lookahead: int, max_lookahead: int) -> None:
    """A `ValueError` unless `num_lookahead` drafts fit a table of `max_lookahead` rows."""
    if not 0 <= num_lookahead <= max_lookahead:
        raise ValueError(
            f"num_lookahead={num_lookahead} is outside [0, {max_lookahead}]: the model's "
            f"lookahead table has L_max={max_lookahead} rows"
        )


def _check_inputs(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    method: str,
    num_lookahead: int | None,
    candidates: int,
    tree: TreeSpec | None,
    draft_rule: str,
    seed: int,
    eos_id: int | None,
) -> DraftTree:
    """Validates a call before anything compiles; returns the draft tree (empty for AR)."""
    config = model.config
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty: every prompt needs at least one token")
        ids = np.asarray(prompt)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"prompt {row} must be a sequence of integer token ids, got {ids.dtype} values"
            )
        if ids.min() < 0 or ids.max() >= config.vocab_size:
            raise ValueError(
                f"prompt {row} has token ids outside the vocabulary [0, {config.vocab_size})"
            )
    check_options(max_new_tokens, num_lookahead, seed, eos_id)
    if eos_id is not None and not 0 <= eos_id < config.vocab_size:
        raise ValueError(f"eos_id {eos_id} outside the vocabulary [0, {config.vocab_size})")
    draft_tree = _draft_tree(model, method, num_lookahead, candidates, tree, draft_rule)
    block = DecodeMethod(method, draft_tree, draft_rule).block_len
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens + block - 1 > config.max_seq_len:
        raise ValueError(
            f"the cache cannot hold the longest prompt ({longest} tokens) + max_new_tokens "
            f"({max_new_tokens}) + the room of the largest call past them ({block - 1}) = "
            f"{longest + max_new_tokens + block - 1} positions: max_seq_len is "
            f"{config.max_seq_len}"
        )
    return draft_tree


def _draft_tree(
    model: Transformer,
    method: str,
    num_lookahead: int | None,
    candidates: int,
    tree: TreeSpec | None,
    draft_rule: str,
) -> DraftTree:
    """The draft tree that the drafting options describe, checked against the model."""
    config = model.config
    if check_integer("candidates", candidates) < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if draft_rule not in DRAFT_RULES:
        raise ValueError(f"unknown draft_rule {draft_rule!r}; choose one of {DRAFT_RULES}")
    if method == "ar":
        if num_lookahead or tree is not None or candidates != 1:
            raise ValueError("method='ar' drafts nothing: num_lookahead, tree and candidates "
                             "are options of the lookahead methods")  # fmt: skip
        return DraftTree()
    if method == "prompt_lookup":
        if tree is not None or candidates != 1:
            raise ValueError("method='prompt_lookup' drafts a chain: tree and candidates are "
                             "options of the lookahead methods")  # fmt: skip
        return DraftTree.chain(DEFAULT_DRAFTS if num_lookahead is None else num_lookahead)
    if method == "speed":
        if (num_lookahead, tree, candidates, draft_rule) != (None, None, 1, "sampled"):
            raise ValueError(
                "method='speed' verifies one early prediction at a time: num_lookahead, tree, "
                "candidates and draft_rule are options of the drafting methods (its own option "
                "is pipeline_depth)"
            )
        return DraftTree.chain(1)
    if method in DRAFT_MODEL_METHODS:
        if tree is not None or candidates != 1 or draft_rule != "sampled":
            raise ValueError(
                f"method={method!r} drafts a chain with the draft model: tree, candidates and "
                "draft_rule are options of the lookahead methods"
            )
        gamma = DEFAULT_GAMMA if num_lookahead is None else num_lookahead
        if gamma < 1:
            raise ValueError(
                f"method={method!r} drafts num_lookahead = gamma >= 1 tokens per window, got "
                f"{gamma}"
            )
        return DraftTree.chain(gamma)
    if not model.has_lookahead:
        raise ValueError(
            f"method {method!r} needs a lookahead table, but this model has none "
            "(ModelConfig.max_lookahead == 0)"
        )
    if tree is not None:
        if candidates != 1:
            raise ValueError("give either candidates or tree, not both")
        draft_tree = DraftTree.create(tree)
        if not draft_tree.num_nodes:
            raise ValueError("tree is empty: give at least one path, e.g. ((0,),)")
        if num_lookahead is not None and num_lookahead != draft_tree.depth:
            raise ValueError(
                f"num_lookahead={num_lookahead} differs from the tree's depth "
                f"{draft_tree.depth}: a tree drafts one window of its depth"
            )
    else:
        num_la = config.max_lookahead if num_lookahead is None else num_lookahead
        check_num_lookahead(num_la, config.max_lookahead)
        draft_tree = DraftTree.top_k(num_la, candidates) if num_la else DraftTree()
    if draft_tree.depth > config.max_lookahead:
        raise ValueError(
            f"the tree is {draft_tree.depth} deep, but the model's lookahead table drafts at "
            f"most L_max={config.max_lookahead} positions"
        )
    if draft_tree.num_candidates > config.vocab_size:
        raise ValueError(
            f"{draft_tree.num_candidates} candidates per position exceed the vocabulary "
            f"({config.vocab_size} tokens)"
        )
    return draft_tree


def _drafting_options(
    method: str,
    ngram_size: int,
    ngram_min: int,
    backing: str | None,
    adaptive: str | None,
    adaptive_threshold: float,
) -> dict[str, Any]:
    """`DecodeMethod`'s prompt-lookup and adaptive-window options, checked."""
    if check_integer("ngram_size", ngram_size) < 1:
        raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
    if not 1 <= check_integer("ngram_min", ngram_min) <= ngram_size:
        raise ValueError(f"ngram_min must be in [1, ngram_size={ngram_size}], got {ngram_min}")
    if backing is not None:
        if backing not in BACKINGS:
            raise ValueError(f"unknown backing {backing!r}; choose one of {BACKINGS}")
        if method not in LOOKAHEAD_METHODS:
            raise ValueError(
                f"backing is an option of the lookahead methods {LOOKAHEAD_METHODS}, "
                f"not of {method!r}"
            )
    if adaptive is not None:
        if adaptive not in ADAPTIVE_RULES:
            raise ValueError(f"unknown adaptive rule {adaptive!r}; choose one of {ADAPTIVE_RULES}")
        if method == "ar":
            raise ValueError("method='ar' drafts nothing: adaptive windows need drafts")
        if method == "speed":
            raise ValueError("method='speed' has no draft windows: adaptive cuts windows")
        if method == "pearl":
            raise ValueError(
                "method='pearl' adapts its draft length itself (windows chain while drafts are "
                "accepted): adaptive is an option of the other drafting methods"
            )
        if adaptive == "confidence" and method not in LOOKAHEAD_METHODS:
            raise ValueError(
                f"adaptive='confidence' cuts the lookahead methods' windows {LOOKAHEAD_METHODS}; "
                f"with {method!r} use adaptive='acceptance'"
            )
    if not 0.0 < adaptive_threshold < 1.0:
        raise ValueError(f"adaptive_threshold must be in (0, 1), got {adaptive_threshold}")
    return dict(
        ngram=(int(ngram_size), int(ngram_min)),
        backing=backing,
        adaptive=adaptive,
        adaptive_threshold=float(adaptive_threshold),
    )


def _check_draft_model(
    model: Transformer,
    draft_model: Transformer | None,
    method: str,
    draft_tree: DraftTree,
    longest: int,
    max_new_tokens: int,
) -> None:
    """A draft model is given exactly to the methods that draft with one, and fits them: the
    model's vocabulary, room in its `max_seq_len`, and the model's mesh (or none)."""
    if method not in DRAFT_MODEL_METHODS:
        if draft_model is not None:
            raise ValueError(
                f"method={method!r} drafts with no draft model: draft_model is for "
                f"{DRAFT_MODEL_METHODS}"
            )
        return
    if not isinstance(draft_model, Transformer):
        raise ValueError(
            f"method={method!r} drafts with a draft model: give draft_model=<a Transformer with "
            f"the model's vocabulary>, got {draft_model!r}"
        )
    config, vocab = draft_model.config, model.config.vocab_size
    if config.vocab_size != vocab:
        raise ValueError(
            f"the draft model's vocabulary has {config.vocab_size} tokens, the model's {vocab}: "
            "a draft model must share the model's tokenizer"
        )
    room = DecodeMethod(method, draft_tree).draft_block_len
    if longest + max_new_tokens + room - 1 > config.max_seq_len:
        raise ValueError(
            f"the draft model cannot hold the longest prompt ({longest} tokens) + "
            f"max_new_tokens ({max_new_tokens}) + its drafts past them ({room - 1}) = "
            f"{longest + max_new_tokens + room - 1} positions: its max_seq_len is "
            f"{config.max_seq_len}"
        )
    draft_mesh = sharding.mesh_of(nnx.state(draft_model))
    if draft_mesh is not None and draft_mesh != sharding.mesh_of(nnx.state(model)):
        raise ValueError(
            "the draft model lives on another mesh than the model: shard it onto the model's "
            "mesh (sharding.shard_model), or leave it unsharded to have it placed there"
        )


_RESULT_FIELDS = ("tokens", "num_new", "row_calls", "calls", "reached", "accepted")


def _on_host(state: loop.DecodeState, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """The named fields of the final state as numpy arrays; rows that live on other processes
    are gathered first."""

    def fetch(x: jax.Array) -> np.ndarray:
        if not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return {name: fetch(getattr(state, name)) for name in fields}


def _with_unk_lookahead(params: nnx.State, unk_id: int) -> nnx.State:
    """The "[UNK] lookahead" baseline: a copy of `params` with an untrained head (the UNK table,
    any lookahead adapters zeroed)."""
    params = jax.tree.map(
        lambda v: v.replace(jnp.zeros_like(v[...])) if isinstance(v, AdapterParam) else v,
        params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )  # a shallow copy; leaves are immutable
    rows = params["lookahead"][...].shape[0]
    params["lookahead"][...] = unk_lookahead_table(params["embed"][...], unk_id, rows)
    return params


def _statistics(
    state: loop.DecodeState,
    plan: DecodePlan,
    decode_s: float,
    prefill_s: float,
    compile_s: float,
) -> DecodeStats:
    row_calls = np.asarray(state.row_calls)
    num_new = np.asarray(state.num_new)
    reached = np.asarray(state.reached).sum(axis=0)
    accepted = np.asarray(state.accepted).sum(axis=0)
    total_new = int(num_new.sum())
    num_lookahead = plan.num_lookahead
    proposed = int(reached[0]) * num_lookahead if num_lookahead else 0
    return DecodeStats(
        forward_passes=int(state.calls),
        new_tokens=total_new,
        tau=total_new / max(int(row_calls.sum()), 1),
        num_lookahead=num_lookahead,
        call_block_lens=[layout.block_len for layout in plan.method.layouts],
        draft_forward_passes=int(state.calls) * plan.method.draft_calls,
        per_row=RowStats(
            forward_passes=row_calls.tolist(),
            new_tokens=num_new.tolist(),
            tau=(num_new / np.maximum(row_calls, 1)).tolist(),
            reached=np.asarray(state.reached).tolist(),
            accepted=np.asarray(state.accepted).tolist(),
        ),
        reached_by_position=reached.tolist(),
        accepted_by_position=accepted.tolist(),
        acceptance_by_position=(accepted / np.maximum(reached, 1)).tolist(),
        acceptance_rate=float(accepted.sum()) / proposed if proposed else 0.0,
        decode_s=decode_s,
        prefill_s=prefill_s,
        compile_s=compile_s,
        tokens_per_s=total_new / decode_s if decode_s > 0 else 0.0,
        method=plan.method.name,
        tokens_in_flight=speed.tokens_in_flight(state) if plan.method.name == "speed" else 0.0,
    )
