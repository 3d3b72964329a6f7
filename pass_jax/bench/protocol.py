"""The paper's benchmark protocol, measured properly.

For each model (e.g. the frozen-recipe table and the lookahead-aware one) and temperature, the
methods (autoregressive, "[UNK] lookahead", PaSS at several L) decode the same prompts one
sequence at a time (batch 1, as in the paper) to exactly `max_new_tokens` (no EOS), interleaved
within each repeat so that machine drift hits all of them; the first call of each method compiles
and is not timed. The cost of a forward on each block length is sampled between the decoded
sequences, so the cost curve sees the same machine state as the decoding it projects. Time per
sequence is the median over repeats of the mean over prompts of prefill + decode time;
speedup = AR time / method time for the same prompts.

Beside the measured speedup: tau (committed tokens per model call), acceptance by lookahead
position, the theoretical tau from the draft-1 acceptance (i.i.d. drafts, ALGORITHMS.md), and
the *projected* speedup, tau divided by the measured relative cost of the calls the method makes
(every PaSS call feeds L+1 tokens). A measured speedup far below its projection means the loop
wastes time.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pass_jax.bench.timing import ForwardTimer
from pass_jax.decode.generation import GenerationResult, bucket, generate
from pass_jax.model import Transformer


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What to measure. The defaults are the paper's, but for fewer prompts and repeats."""

    max_new_tokens: int = 512
    top_k: int = 10
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8)
    num_lookahead: int = 4  # L for the per-temperature table
    sweep_lookaheads: tuple[int, ...] = (1, 2, 4, 6, 8)
    sweep_temperature: float = 0.8  # the paper's L sweep is at T=0.8
    repeats: int = 3
    seed: int = 0
    cost_block_lens: tuple[int, ...] = (1, 2, 4, 8, 16)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str  # "ar", "pass_unk" or "pass"
    num_lookahead: int | None

    @property
    def label(self) -> str:
        if self.name == "ar":
            return "autoregressive"
        kind = "[UNK] lookahead" if self.name == "pass_unk" else "PaSS"
        return f"{kind}, L={self.num_lookahead}"


def methods_for(protocol: Protocol, temperature: float, max_lookahead: int) -> list[Method]:
    """The methods measured at one temperature: AR, [UNK], PaSS at L (and the L sweep)."""
    lookaheads = {min(protocol.num_lookahead, max_lookahead)}
    if temperature == protocol.sweep_temperature:
        lookaheads |= {n for n in protocol.sweep_lookaheads if n <= max_lookahead}
    default = min(protocol.num_lookahead, max_lookahead)
    return [
        Method("ar", None),
        Method("pass_unk", default),
        *(Method("pass", n) for n in sorted(lookaheads)),
    ]


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
        method=method.name,
        num_lookahead=method.num_lookahead,
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
                "temperature": temperature,
                "seconds_per_sequence": median_s,
                "seconds_per_repeat": seconds[method],
                "speedup": ar_seconds / median_s,
                "tau": tau,
                "acceptance_by_position": acceptance if method.num_lookahead else [],
                "tau_theory": _theoretical_tau(acceptance, method.num_lookahead),
                "tau_bound": (method.num_lookahead + 2) / 2 if method.num_lookahead else 1.0,
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


def _theoretical_tau(acceptance: list[float], num_lookahead: int | None) -> float:
    """Tokens per call if every draft were accepted i.i.d. at the draft-1 rate: each iteration
    of two calls yields t_n plus (1 - a^(L+1)) / (1 - a) tokens (ALGORITHMS.md)."""
    if not num_lookahead:
        return 1.0
    a = acceptance[0]
    verified = num_lookahead + 1 if a >= 1.0 else (1 - a ** (num_lookahead + 1)) / (1 - a)
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
        lookaheads = {protocol.num_lookahead, *protocol.sweep_lookaheads}
        block_lens = {1, *protocol.cost_block_lens, *(n + 1 for n in lookaheads)}
        timer = ForwardTimer(
            model,
            sorted(block_lens),
            context=context,
            capacity=capacity + max(lookaheads),
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
            n = record["num_lookahead"]
            record["projected_speedup"] = record["tau"] / curve[n + 1] if n else 1.0
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
