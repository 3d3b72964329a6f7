"""What `pass-jax-train` and `pass-jax-decode` do, as functions (no flags defined here, so the
bench command lines can call them too)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import ml_collections

from pass_jax import distributed
from pass_jax.bench.timing import ForwardTimer
from pass_jax.data.tokens import max_stream_tokens
from pass_jax.decode.generation import (
    DRAFT_MODEL_METHODS,
    GenerationResult,
    check_num_lookahead,
    generate,
)
from pass_jax.decode.methods import TRAINED_TABLE_METHODS
from pass_jax.decode.pearl import projected_parallel_s
from pass_jax.decode.text import encode_prompt
from pass_jax.dry_run import format_dry_run, use_fake_cpu_devices
from pass_jax.experiment import ExperimentConfig
from pass_jax.io import workdir as workdir_layout
from pass_jax.io.checkpoint import read_meta, step_dir
from pass_jax.io.head import load_head, read_head_info
from pass_jax.io.hf import load_hf_llama
from pass_jax.model import Transformer
from pass_jax.tokenizer import Tokenizer, load_tokenizer
from pass_jax.training.stages import TrainingInterrupted, run

DEFAULT_HF_MAX_LOOKAHEAD = 8  # table rows of an HF model decoded without a head (pass_unk)


def check_workdir(workdir: str | None) -> None:
    """A `ValueError` unless `workdir` is a directory this process can write, or can be made
    one."""
    if workdir is None:
        raise ValueError("--workdir is required (except with --dry_run)")
    path = Path(workdir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--workdir {workdir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir}: {existing} is not writable")


def check_held_out_size(exp: ExperimentConfig) -> None:
    """A `ValueError` when the held-out split is surely too small for `exp.eval.loss_sequences`
    (`max_stream_tokens`: from its text, before any tokenizer trains)."""
    needed = exp.eval.loss_sequences * exp.data.seq_len
    data = dataclasses.replace(exp.data, split=exp.eval.split)
    if needed and (bound := max_stream_tokens(data, needed)) < needed:
        raise ValueError(
            f"held-out split {data.split!r} of the {data.source} corpus: at most {bound} tokens, "
            f"fewer than the {needed} of config.eval.loss_sequences={exp.eval.loss_sequences} "
            f"sequences of config.data.seq_len={data.seq_len}; lower config.eval.loss_sequences "
            "or point config.data at a larger corpus"
        )


def run_training(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    *,
    dry_run: bool = False,
    multi_host: bool = False,
    reevaluate: bool = False,
) -> int:
    """Runs the experiment; returns the exit status (128 + signal number when interrupted).

    Starts the distributed runtime first when `multi_host` or the environment asks for it
    (`distributed.initialize`). `dry_run` compiles and sizes the programs instead
    (`pass_jax.dry_run`; fake CPU devices when there is no accelerator) and trains nothing.
    `reevaluate` evaluates finished stages again instead of skipping them. The config, the
    workdir (needless with `dry_run`) and the held-out split's size are checked first.
    """
    if dry_run:
        use_fake_cpu_devices()
    distributed.initialize(multi_host)
    exp = ExperimentConfig.from_config(config)
    if dry_run:
        distributed.main_print(format_dry_run(exp))
        return 0
    check_workdir(workdir)
    check_held_out_size(exp)
    try:
        run(exp, workdir, reevaluate=reevaluate)
    except TrainingInterrupted as e:
        distributed.main_print(
            f"interrupted ({e}); checkpoint saved, rerun the same command to resume"
        )
        return 128 + e.signum
    return 0


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """`pass-jax-decode`'s decoding flags. `method` None: `pass` when a trained table is loaded
    (a checkpoint, or an HF model with a head), else `ar`."""

    prompt: str
    method: str | None = None
    num_lookahead: int | None = None
    candidates: int = 1
    draft_rule: str = "sampled"
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 128
    compare: bool = False


@dataclasses.dataclass(frozen=True)
class DecodeSource:
    """What `decode_report` decodes with: a model, its tokenizer, a one-line description, the
    BOS convention, whether the model's table is trained, and a draft model (sps, pearl)."""

    model: Transformer
    tokenizer: Tokenizer
    description: str
    add_bos: bool
    trained_table: bool
    draft_model: Transformer | None = None


def experiment_source(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | None,
    checkpoint: str | None = None,
    stage: str | None = None,
    dtype: str | None = None,
    head: str | None = None,
    num_lookahead: int | None = None,
) -> DecodeSource:
    """A trained checkpoint of an experiment (the latest of `stage`, by default of the last
    stage), optionally with another `head`'s table. A `num_lookahead` the table cannot draft is
    refused before the weights load."""
    exp = ExperimentConfig.from_config(config)
    path = Path(checkpoint) if checkpoint else workdir_layout.find_checkpoint(exp, workdir, stage)
    if num_lookahead is not None:
        if head is not None:
            rows = read_head_info(head).max_lookahead
        else:
            rows = read_meta(step_dir(path))["model"]["max_lookahead"]
        check_num_lookahead(num_lookahead, rows)
    tokenizer = workdir_layout.experiment_tokenizer(exp, workdir)
    model = workdir_layout.load_model(path, tokenizer=tokenizer, dtype=dtype)
    description = f"checkpoint: {step_dir(path)}"
    if head is not None:
        load_head(model, head, tokenizer=tokenizer)
        description += f", head: {head}"
    return DecodeSource(model, tokenizer, description, exp.data.add_bos, model.has_lookahead)


def hf_source(
    hf_dir: str,
    *,
    head: str | None = None,
    max_lookahead: int | None = None,
    dtype: str | None = None,
    num_lookahead: int | None = None,
) -> DecodeSource:
    """A Hugging Face LLaMA directory (its tokenizer, its weights), with a PaSS `head` or an
    untrained table of `max_lookahead` rows (default `DEFAULT_HF_MAX_LOOKAHEAD`). A
    `num_lookahead` the table cannot draft is refused before anything loads."""
    if head is not None and max_lookahead is not None:
        raise ValueError("--max_lookahead is the head's size with --head: give one of them")
    if head is not None:
        max_lookahead = read_head_info(head).max_lookahead
    elif max_lookahead is None:
        max_lookahead = DEFAULT_HF_MAX_LOOKAHEAD
    if num_lookahead is not None:
        check_num_lookahead(num_lookahead, max_lookahead)
    tokenizer = load_tokenizer(hf_dir)
    model = load_hf_llama(hf_dir, dtype=dtype or "float32", max_lookahead=max_lookahead)
    if head is not None:
        load_head(model, head, tokenizer=tokenizer)
    description = f"HF model: {hf_dir}" + (f", head: {head}" if head else ", no head")
    return DecodeSource(model, tokenizer, description, tokenizer.add_bos, head is not None)


def with_draft_model(
    source: DecodeSource, checkpoint: str, *, dtype: str | None = None
) -> DecodeSource:
    """`source` with the draft model of a checkpoint (or step directory) trained with the
    source's tokenizer (another one is a `CheckpointError`)."""
    draft = workdir_layout.load_model(checkpoint, tokenizer=source.tokenizer, dtype=dtype)
    description = f"{source.description}, draft model: {step_dir(checkpoint)}"
    return dataclasses.replace(source, draft_model=draft, description=description)


def _timed(
    model: Transformer,
    prompt: list[int],
    opts: DecodeOptions,
    method: str,
    eos: int,
    draft_model: Transformer | None = None,
):
    """A warm-up call (compiles), then the measured call; returns (result, compile seconds)."""
    kwargs = dict(
        max_new_tokens=opts.max_new_tokens,
        method=method,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        seed=opts.seed,
        eos_id=eos if eos >= 0 else None,
    )
    if method != "ar":
        kwargs.update(
            num_lookahead=opts.num_lookahead, candidates=opts.candidates, draft_rule=opts.draft_rule
        )
    if method in DRAFT_MODEL_METHODS:
        kwargs.update(draft_model=draft_model)
    warmup = generate(model, [prompt], **kwargs)
    return generate(model, [prompt], **kwargs), warmup.stats.compile_s


def _report(name: str, result: GenerationResult, compile_s: float) -> str:
    s = result.stats
    lines = [
        f"{name}: {s.new_tokens} new tokens in {s.decode_s:.3f}s = "
        f"{s.tokens_per_s:.1f} tokens/s, tau {s.tau:.3f}, {s.forward_passes} calls, "
        f"prefill {s.prefill_s * 1e3:.1f} ms, compile {compile_s:.1f}s (excluded)"
    ]
    if s.num_lookahead:
        accept = " ".join(f"{x:.3f}" for x in s.acceptance_by_position)
        lines.append(f"{name}: acceptance by position {accept} (L={s.num_lookahead})")
    return "\n".join(lines)


def speculation_cost(
    model: Transformer, result: GenerationResult, prompt_len: int, *, rounds: int = 5
) -> str:
    """This machine's cost of the method's calls, c(n) = time of one model call on n new
    tokens / one call on 1 token (`ForwardTimer`, at the decode's mean context), and the
    projected speedup tau / c (c averaged over the calls of one iteration)."""
    s = result.stats
    blocks = s.call_block_lens
    timer = ForwardTimer(
        model,
        [1, *blocks],
        context=prompt_len + s.new_tokens // 2,
        capacity=prompt_len + s.new_tokens + max(blocks) + 16,
    )
    timer.sample(rounds)
    curve = timer.relative_cost()
    cost = sum(curve[n] for n in blocks) / len(blocks)
    costs = ", ".join(f"c({n}) = {curve[n]:.3f}" for n in sorted(set(blocks)))
    return (
        f"{s.method}: calls on {'+'.join(map(str, blocks))} tokens per iteration; {costs} calls "
        f"on 1 token on this machine; projected speedup tau / c = {s.tau / cost:.3f}x"
    )


def draft_model_cost(
    source: DecodeSource, result: GenerationResult, prompt_len: int, *, rounds: int = 5
) -> str:
    """This machine's time of a target call and of a draft-model call (`ForwardTimer`s at the
    decode's mean context, sampled in turn); for pearl, the decode time projected for the draft
    model on a device of its own (`pearl.projected_parallel_s`), labelled as a projection."""
    s = result.stats
    (block,) = s.call_block_lens
    context, capacity = prompt_len + s.new_tokens // 2, prompt_len + s.new_tokens + block + 16
    calls = ((source.model, block), (source.draft_model, 1))
    timers = [ForwardTimer(model, [n], context=context, capacity=capacity) for model, n in calls]
    for _ in range(rounds):
        for timer in timers:
            timer.sample()
    target_s, draft_s = (timer.seconds()[n] for timer, (_, n) in zip(timers, calls, strict=True))
    gamma = s.draft_forward_passes // max(s.forward_passes, 1)
    line = (
        f"{s.method}: a target call on {block} tokens takes {target_s * 1e3:.2f} ms, a draft-model "
        f"call {draft_s * 1e3:.2f} ms on this machine, {gamma} of them per target call"
    )
    if s.method == "pearl":
        projected = projected_parallel_s(s, draft_s, target_s)
        line += (
            f"; PROJECTED (not measured) with the draft model on a device of its own: "
            f"{projected:.3f}s = {s.new_tokens / max(projected, 1e-9):.1f} tokens/s (measured, "
            f"one after the other: {s.decode_s:.3f}s)"
        )
    return line


def decode_report(source: DecodeSource, opts: DecodeOptions) -> str:
    """Decodes the prompt; returns the printed report (completion and statistics)."""
    default = "sps" if source.draft_model else "pass" if source.trained_table else "ar"
    method = opts.method or default
    if method in TRAINED_TABLE_METHODS and not source.trained_table:
        raise ValueError(
            f"--method {method} drafts with a trained table: give --head, or use --method "
            "pass_unk (untrained table) or ar"
        )
    prompt = encode_prompt(source.tokenizer, opts.prompt, add_bos=source.add_bos)
    eos = source.tokenizer.eos_id
    result, compile_s = _timed(source.model, prompt, opts, method, eos, source.draft_model)
    lines = [
        source.description,
        f"--- completion ({method}) ---",
        opts.prompt + source.tokenizer.decode(result.tokens[0]),
        "---",
        _report(method, result, compile_s),
    ]
    if method in DRAFT_MODEL_METHODS:
        lines.append(draft_model_cost(source, result, len(prompt)))
    elif result.stats.num_lookahead:
        lines.append(speculation_cost(source.model, result, len(prompt)))
    if opts.compare:
        baseline, ar_compile_s = _timed(source.model, prompt, opts, "ar", eos)
        lines.append(_report("ar", baseline, ar_compile_s))
        per_token = baseline.stats.decode_s / max(baseline.stats.new_tokens, 1)
        ours = result.stats.decode_s / max(result.stats.new_tokens, 1)
        ratio = f"wall-clock ratio (ar / {method}, per token): {per_token / ours:.3f}x"
        if opts.temperature == 0:  # greedy decoding is deterministic: lossless means identical
            ratio += f"; same tokens: {baseline.tokens == result.tokens}"
        lines.append(ratio)
    return "\n".join(lines)
