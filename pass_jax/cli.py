"""The logic behind `train.py` and `decode.py` (which only define flags and call in here)."""

from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags
from flax import nnx

from pass_jax import distributed
from pass_jax.config import ModelConfig
from pass_jax.decode.generation import GenerationResult, generate
from pass_jax.dry_run import format_dry_run, use_fake_cpu_devices
from pass_jax.experiment import ExperimentConfig
from pass_jax.io.checkpoint import CheckpointError, load_params, read_meta, step_dir
from pass_jax.model import Transformer, loop_layers
from pass_jax.tokenizer import MODEL_FILENAME, Tokenizer
from pass_jax.training.stages import TrainingInterrupted, run, stage_checkpoints

_CONFIG_FLAG = "--config"


def _config_file(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(_CONFIG_FLAG + "="):
            return arg.split("=", 1)[1]
        if arg == _CONFIG_FLAG and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def flags_parser(argv: list[str]) -> list[str]:
    """absl's flags parser, with a clear error for a `--config.<key>` override of a missing key.

    Logging defaults to WARNING (absl would raise it to INFO, where orbax logs every save);
    `--verbosity=0` restores INFO.
    """
    path, _, arg = (_config_file(argv) or "").partition(":")
    if Path(path).is_file():  # absl reports a missing config file itself
        get_config = runpy.run_path(path)["get_config"]
        config = get_config(arg) if arg else get_config()
        for flag in argv:
            if flag.startswith(_CONFIG_FLAG + "."):
                key = flag[len(_CONFIG_FLAG) + 1 :].split("=", 1)[0]
                if not _has_key(config, key):
                    sys.exit(f"FATAL: unknown config key {key!r} in {flag}: {path} has no such key")
    remaining = app.parse_flags_with_usage(argv)
    if flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = -1
    return remaining


def train_main(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    dry_run: bool = False,
    multi_host: bool = False,
    reevaluate: bool = False,
) -> int:
    """Runs the experiment; returns the exit status (128 + signal number when interrupted).

    Starts the distributed runtime first when `multi_host` or the environment asks for it
    (`distributed.initialize`). `dry_run` compiles and sizes the programs instead
    (`pass_jax.dry_run`; fake CPU devices when there is no accelerator) and trains nothing.
    `reevaluate` evaluates finished stages again instead of skipping them.
    """
    if dry_run:
        use_fake_cpu_devices()
    distributed.initialize(multi_host)
    exp = ExperimentConfig.from_config(config)
    if dry_run:
        distributed.main_print(format_dry_run(exp))
        return 0
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
    """`decode.py`'s flags."""

    prompt: str
    method: str = "pass"
    num_lookahead: int | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 128
    compare: bool = False


def load_tokenizer(exp: ExperimentConfig, workdir: str | None) -> Tokenizer:
    if exp.tokenizer.path:
        return Tokenizer.load(exp.tokenizer.path)
    if workdir is None:
        raise ValueError("no tokenizer: set config.tokenizer.path or give --workdir")
    return Tokenizer.load(Path(workdir) / MODEL_FILENAME)


def find_checkpoint(exp: ExperimentConfig, workdir: str | None, stage: str | None) -> Path:
    """The latest step of `stage`, or of the last configured stage that has a checkpoint."""
    if workdir is None:
        raise ValueError("give --workdir or --checkpoint")
    names = [stage] if stage else [s.name for s in reversed(exp.stages)]
    for name in names:
        directory = stage_checkpoints(workdir, name)
        if directory.is_dir():
            return step_dir(directory)
    raise CheckpointError(f"no checkpoint of stage(s) {names} under {workdir}/checkpoints")


def load_model(checkpoint: Path, *, dtype: str | None = None) -> Transformer:
    """A model built from a checkpoint's stored config, with its weights, laid out for decoding
    (scanned layers looped: `model.loop_layers`); `dtype` overrides the stored compute dtype,
    and the matmuls then take their operands in it too."""
    directory = step_dir(checkpoint)
    stored = read_meta(directory)["model"]
    override = {"dtype": dtype, "matmul_dtype": None} if dtype else {}
    model = Transformer(ModelConfig.from_dict({**stored, **override}), rngs=nnx.Rngs(0))
    load_params(model, directory)
    return loop_layers(model)


def _timed(model: Transformer, prompt: list[int], opts: DecodeOptions, method: str, eos: int):
    """A warm-up call (compiles), then the measured call; returns (result, compile seconds)."""
    kwargs = dict(
        max_new_tokens=opts.max_new_tokens,
        method=method,
        num_lookahead=None if method == "ar" else opts.num_lookahead,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        seed=opts.seed,
        eos_id=eos,
    )
    warmup = generate(model, [prompt], **kwargs)
    return generate(model, [prompt], **kwargs), warmup.stats["compile_s"]


def _report(name: str, result: GenerationResult, compile_s: float) -> str:
    s = result.stats
    lines = [
        f"{name}: {s['new_tokens']} new tokens in {s['decode_s']:.3f}s = "
        f"{s['tokens_per_s']:.1f} tokens/s, tau {s['tau']:.3f}, {s['forward_passes']} calls, "
        f"prefill {s['prefill_s'] * 1e3:.1f} ms, compile {compile_s:.1f}s (excluded)"
    ]
    if s["num_lookahead"]:
        accept = " ".join(f"{x:.3f}" for x in s["acceptance_by_position"])
        lines.append(f"{name}: acceptance by position {accept} (L={s['num_lookahead']})")
    return "\n".join(lines)


def decode_main(
    config: ml_collections.ConfigDict,
    opts: DecodeOptions,
    *,
    workdir: str | None,
    checkpoint: str | None = None,
    stage: str | None = None,
    dtype: str | None = None,
) -> str:
    """Decodes the prompt; returns the printed report (completion and statistics)."""
    exp = ExperimentConfig.from_config(config)
    tokenizer = load_tokenizer(exp, workdir)
    path = Path(checkpoint) if checkpoint else find_checkpoint(exp, workdir, stage)
    model = load_model(path, dtype=dtype)
    prompt = ([tokenizer.bos_id] if exp.data.add_bos else []) + tokenizer.encode(opts.prompt)
    if not prompt:
        raise ValueError("the prompt is empty")
    eos = tokenizer.eos_id
    result, compile_s = _timed(model, prompt, opts, opts.method, eos)
    lines = [
        f"checkpoint: {step_dir(path)}",
        f"--- completion ({opts.method}) ---",
        opts.prompt + tokenizer.decode(result.tokens[0]),
        "---",
        _report(opts.method, result, compile_s),
    ]
    if opts.compare:
        baseline, ar_compile_s = _timed(model, prompt, opts, "ar", eos)
        lines.append(_report("ar", baseline, ar_compile_s))
        per_token = baseline.stats["decode_s"] / max(baseline.stats["new_tokens"], 1)
        ours = result.stats["decode_s"] / max(result.stats["new_tokens"], 1)
        ratio = f"wall-clock ratio (ar / {opts.method}, per token): {per_token / ours:.3f}x"
        if opts.temperature == 0:  # greedy decoding is deterministic: lossless means identical
            ratio += f"; same tokens: {baseline.tokens == result.tokens}"
        lines.append(ratio)
    return "\n".join(lines)
