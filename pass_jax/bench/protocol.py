"""The paper's benchmark protocol, measured properly.

For each model (e.g. the frozen-recipe table and the lookahead-aware one) and temperature, the
methods (autoregressive, then `Protocol.methods`: "[UNK] lookahead", PaSS, the one-call methods,
with candidates or argmax drafts; PaSS's L sweep at one temperature) decode the same prompts one
sequence at a time (batch 1, as in the paper) to exactly `max_new_tokens` (no EOS), interleaved
within each repeat so that machine drift hits all of them; the first call of each method compiles
and is not timed. The cost of a forward on each block length is sampled between the decoded
sequences, so the cost curve sees the same machine state as the decoding it projects. Time per
sequence is the median over repeats of the mean over prompts of prefill + decode time;
speedup = AR time / method time for the same prompts.

Beside the measured speedup: tau (committed tokens per model call), acceptance by lookahead
position, the theoretical tau from the draft-1 acceptance (i.i.d. drafts, ALGORITHMS.md), and
the *projected* speedup, tau divided by the measured relative cost of the calls the method makes
(the mean of c(n) over the block sizes of one iteration's calls). A measured speedup far below
its projection means the loop wastes time.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pass_jax.bench.timing import ForwardTimer
from pass_jax.decode.generation import GenerationResult, bucket, generate
from pass_jax.decode.methods import METHODS, DecodeMethod
from pass_jax.decode.tree import DraftTree
from pass_jax.decode.verify import DRAFT_RULES
from pass_jax.model import Transformer


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What to measure. The defaults are the paper's, but for fewer prompts and repeats."""

    max_new_tokens: int = 512
    top_k: int = 10
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8)
    num_lookahead: int = 4  # L of the methods whose spec names none
    # The methods of the per-temperature table (`Method.parse`); AR always runs first.
    methods: tuple[str, ...] = ("pass_unk", "pass", "pass_fused", "pass_tree")
    sweep_lookaheads: tuple[int, ...] = (1, 2, 4, 6, 8)  # PaSS's L sweep
    sweep_temperature: float = 0.8  # the paper's L sweep is at T=0.8
    repeats: int = 3
    seed: int = 0
    cost_block_lens: tuple[int, ...] = (1, 2, 4, 8, 16)

    def __post_init__(self):
        for spec in self.methods:  # a bad spec is an error before any work
            Method.parse(spec, self.num_lookahead)


@dataclasses.dataclass(frozen=True)
class Method:
    """A decoding method with its options: `name[:L][xK][:rule]`, e.g. "pass_tree:3x2:argmax"
    (L drafts per window, K candidates per position, the draft rule)."""

    name: str
    num_lookahead: int | None = None
    candidates: int = 1
    draft_rule: str = "sampled"

    @classmethod
    def parse(cls, spec: str, default_lookahead: int) -> Method:
        name, *options = spec.split(":")
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r} in {spec!r}; methods: {METHODS}")
        if name == "ar":
            return cls("ar")
        if name == "speed":  # speed[:P]: num_lookahead holds the pipeline depth (None: n_repeats)
            return cls("speed", int(options[0]) if options else None)
        num_la, candidates, rule = default_lookahead, 1, "sampled"
        for option in options:
            size, _, k = option.partition("x")
            if option in DRAFT_RULES:
                rule = option
            elif (size or k) and (size or "0").isdigit() and (k or "0").isdigit():
                num_la, candidates = int(size or num_la), int(k or candidates)
            else:
                raise ValueError(
                    f"bad option {option!r} in method {spec!r}: name[:L][xK][:rule], rule one "
                    f"of {DRAFT_RULES}"
                )
        return cls(name, num_la, candidates, rule)

    @property
    def decode_method(self) -> DecodeMethod:
        tree = DraftTree.top_k(self.num_lookahead or 0, self.candidates)
        return DecodeMethod(self.name, tree, self.draft_rule)

    @property
    def label(self) -> str:
        if self.name == "ar":
            return "autoregressive"
        kind = {"pass_unk": "[UNK] lookahead", "pass": "PaSS"}.get(self.name, self.name)
        label = f"{kind}, L={self.num_lookahead}"
        if self.candidates > 1:
            label += f", {self.candidates} candidates"
        return label + (", argmax drafts" if self.draft_rule == "argmax" else "")

    @property
    def call_block_lens(self) -> list[int]:
        """Tokens fed by each call of one iteration."""
        return [layout.block_len for layout in self.decode_method.layouts]

    @property
    def tau_bound(self) -> float:
        """Tokens per call when every draft is accepted."""
        if not self.num_lookahead:
            return 1.0
        calls = len(self.call_block_lens)
        return (self.num_lookahead + calls) / calls

    def options(self) -> dict[str, Any]:
        """`generate`'s keyword arguments for this method."""
        if self.name == "ar":
            return {"method": "ar"}
        if self.name == "speed":
            return {"method": "speed", "pipeline_depth": self.num_lookahead}
        return {
            "method": self.name,
            "num_lookahead": self.num_lookahead,
            "candidates": self.candidates,
            "draft_rule": self.draft_rule,
        }


def methods_for(protocol: Protocol, temperature: float, max_lookahead: int) -> list[Method]:
    """The methods measured at one temperature: AR, the protocol's methods (argmax-draft
    variants only when sampling: greedy drafts are argmax drafts), and PaSS's L sweep."""
    default = min(protocol.num_lookahead, max_lookahead)
    methods = [Method("ar")]
    for spec in protocol.methods:
        method = Method.parse(spec, default)
        if method.draft_rule == "argmax" and temperature == 0.0:
            continue
        methods.append(
            dataclasses.replace(method, draft_rule="sampled") if temperature == 0.0 else method
        )
    if temperature == protocol.sweep_temperature:
        methods += [Method("pass", n) for n in protocol.sweep_lookaheads if n <= max_lookahead]
    return list(dict.fromkeys(methods))


def _decode(
    model: Transformer,
    prompt: list[int],
    method: Method,
    protocol: Protocol,
    temperature: float,
    seed: int,
) -> GenerationResult:
    """One sequence decoded to exactly `max_new_tokens` (no EOS): its tokens and statistics."""
    return generate(
        model,
        [prompt],
        max_new_tokens=protocol.max_new_tokens,
        **method.options(),
        temperature=temperature,
        top_k=protocol.top_k,
        seed=seed,
    )


def measure_temperature(
    model: Transformer,
    prompts: Sequence[list[int]],
    protocol: Protocol,
    temperature: float,
    timer: ForwardTimer,
) -> list[dict[str, Any]]:
    """Every method at one temperature, interleaved, with warm-up; one record per method.
    `timer` samples the forward costs after each prompt's round of methods."""
    methods = methods_for(protocol, temperature, model.config.max_lookahead)
    compile_s = {
        m: _decode(model, prompts[0], m, protocol, temperature, 0).stats.compile_s for m in methods
    }
    seconds = {m: [] for m in methods}  # per repeat: mean seconds per sequence
    counts = {m: {"tokens": 0, "calls": 0, "reached": 0, "accepted": 0} for m in methods}
    # Greedy only: per sequence, the tokens equal to AR's before the first difference.
    matched = {m: [] for m in methods}
    for repeat in range(protocol.repeats):
        order = methods[repeat % len(methods) :] + methods[: repeat % len(methods)]
        per_method = {m: [] for m in methods}
        for i, prompt in enumerate(prompts):
            sequences = {}
            for method in order:
                seed = protocol.seed + 1000 * repeat + i
                result = _decode(model, prompt, method, protocol, temperature, seed)
                sequences[method], stats = result.tokens[0], result.stats
                per_method[method].append(stats.decode_s + stats.prefill_s)
                c = counts[method]
                c["tokens"] += stats.new_tokens
                c["calls"] += stats.forward_passes
                c["reached"] += np.asarray(stats.reached_by_position)
                c["accepted"] += np.asarray(stats.accepted_by_position)
            if temperature == 0.0:
                for method in methods:
                    matched[method].append(_common_prefix(sequences[method], sequences[methods[0]]))
            timer.sample()
        for method in methods:
            seconds[method].append(statistics.fmean(per_method[method]))
    ar_seconds = statistics.median(seconds[methods[0]])
    records = []
    for method in methods:
        c = counts[method]
        median_s = statistics.median(seconds[method])
        tau = c["tokens"] / c["calls"]
        acceptance = (np.asarray(c["accepted"]) / np.maximum(c["reached"], 1)).tolist()
        records.append(
            {
                "method": method.name,
                "label": method.label,
                "num_lookahead": method.num_lookahead,
                "candidates": method.candidates,
                "draft_rule": method.draft_rule,
                "temperature": temperature,
                "seconds_per_sequence": median_s,
                "seconds_per_repeat": seconds[method],
                "speedup": ar_seconds / median_s,
                "tau": tau,
                "acceptance_by_position": acceptance if method.num_lookahead else [],
                "tau_theory": _theoretical_tau(acceptance, method),
                "tau_bound": method.tau_bound,
                "call_block_lens": method.call_block_lens,
                "compile_s": compile_s[method],
                **(_greedy_agreement(matched[method], protocol) if temperature == 0.0 else {}),
            }
        )
    return records


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two sequences share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def _greedy_agreement(prefixes: list[int], protocol: Protocol) -> dict[str, float]:
    """How far greedy decoding agrees with AR: the share of sequences identical to AR's, and the
    mean number of tokens before the first difference. Exact arithmetic gives 1 and all tokens;
    in low precision a near-tie may round differently in an (L+1)-token call than in a one-token
    call, and the two greedy sequences part there."""
    return {
        "greedy_identical": float(np.mean([p == protocol.max_new_tokens for p in prefixes])),
        "greedy_agreed_tokens": float(np.mean(prefixes)),
    }


def _theoretical_tau(acceptance: list[float], method: Method) -> float:
    """Tokens per call of a chain if every draft were accepted i.i.d. at the draft-1 rate `a`
    (docs/algorithms.md): a verifying call yields (1 - a^(L+1)) / (1 - a) tokens; `pass` adds
    a draftless call (one token) per iteration; `pass_fused` makes a draftless call after every
    window not wholly accepted; NaN for trees with candidates (no closed form here)."""
    num_la = method.num_lookahead
    if not num_la:
        return 1.0
    if method.candidates > 1:
        return float("nan")
    a = acceptance[0]
    verified = num_la + 1 if a >= 1.0 else (1 - a ** (num_la + 1)) / (1 - a)
    if method.name == "pass_tree":
        return verified
    if method.name == "pass_fused":
        rejected = 1 - a**num_la  # then a draftless call (one token) comes next
        return (verified + rejected) / (1 + rejected)
    return (1 + verified) / 2


def run(
    models: Mapping[str, Transformer], prompts: Sequence[list[int]], protocol: Protocol
) -> dict[str, Any]:
    """The whole protocol on each named model: the cost curve, the AR loop's efficiency, and
    every method at every temperature."""
    results: dict[str, Any] = {"protocol": dataclasses.asdict(protocol), "models": {}}
    for name, model in models.items():
        capacity = bucket(max(len(p) for p in prompts)) + bucket(protocol.max_new_tokens)
        context = len(prompts[0]) + protocol.max_new_tokens // 2
        methods = {
            m
            for t in protocol.temperatures
            for m in methods_for(protocol, t, model.config.max_lookahead)
        }
        block_lens = {1, *protocol.cost_block_lens}
        block_lens |= {n for m in methods for n in m.call_block_lens}
        timer = ForwardTimer(
            model,
            sorted(block_lens),
            context=context,
            capacity=capacity + max(block_lens),
        )
        records = [
            record
            for temperature in protocol.temperatures
            for record in measure_temperature(model, prompts, protocol, temperature, timer)
        ]
        curve = timer.relative_cost()
        forward_s = timer.seconds()[1]
        ar = [r for r in records if r["method"] == "ar"]
        ar_per_token = statistics.median(r["seconds_per_sequence"] for r in ar)
        ar_per_token /= protocol.max_new_tokens
        for record in records:
            cost = statistics.fmean(curve[n] for n in record["call_block_lens"])
            record["projected_speedup"] = record["tau"] / cost
        results["models"][name] = {
            "params_millions": model.config.num_params / 1e6,
            "max_lookahead": model.config.max_lookahead,
            "forward_cost_relative": {str(k): v for k, v in curve.items()},
            "ar_loop_efficiency": {
                "forward_ms_per_token": 1e3 * forward_s,
                "generate_ms_per_token": 1e3 * ar_per_token,
                "overhead": ar_per_token / forward_s - 1.0,
            },
            "records": records,
        }
    return results
