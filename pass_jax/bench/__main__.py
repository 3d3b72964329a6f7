"""The benchmark entry point: the paper's protocol on trained checkpoints.

    python -m pass_jax.bench --config configs/small.py --workdir /tmp/small_run
    python -m pass_jax.bench --config configs/tiny.py --workdir /tmp/tiny_run --quick
    python -m pass_jax.bench --config configs/gpu_100m.py --workdir /tmp/gpu --train

With `--train`, the config's stages are trained first (resumed, or skipped when finished), as
`train.py` would: training and benchmark in one command.

Each stage's checkpoint is a model (`lookahead`: the paper's recipe, frozen base; `joint`: the
lookahead-aware variant, whose base changed too, so its AR baseline is its own). Prompts are the
first `prompt_len` tokens of held-out documents (the test split). Writes results.json,
results.md and PNG plots to `--out` (default: WORKDIR/bench) and prints the Markdown.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from pass_jax.bench import protocol, report
from pass_jax.cli.commands import run_training
from pass_jax.cli.flags import run_main
from pass_jax.config import DTYPE_NAMES
from pass_jax.data.prompts import config_prompts
from pass_jax.experiment import ExperimentConfig
from pass_jax.io.workdir import experiment_tokenizer, find_checkpoint, load_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (tokenizer, checkpoints).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/bench).")
_STAGES = flags.DEFINE_list("stages", ["lookahead", "joint"], "Stages whose checkpoints to run.")
_TRAIN = flags.DEFINE_bool("train", False, "Train the config's stages first (as train.py).")
_QUICK = flags.DEFINE_bool(
    "quick", False, "About a minute: 2 prompts, 32 tokens, 1 repeat (T = 0 and 0.8 by default)."
)
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 8, "Held-out prompts (the paper: 200).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Tokens per prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 512, "New tokens per sequence.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (medians are reported).")
_TEMPERATURES = flags.DEFINE_list("temperatures", ["0", "0.2", "0.5", "0.8"], "Temperatures.")
_LOOKAHEADS = flags.DEFINE_list(
    "lookaheads",
    ["1", "2", "4", "6", "8"],
    "The L sweep: run at T=0.8 when --temperatures includes it; each L+1 joins the cost curve.",
)
_NUM_LOOKAHEAD = flags.DEFINE_integer("num_lookahead", 4, "L of methods whose spec names none.")
_METHODS = flags.DEFINE_list(
    "methods",
    list(protocol.Protocol.methods),
    "Methods beside AR: name[:L][xK][:rule], e.g. pass_tree:2x3:argmax (L drafts per window, K "
    "candidates per position, argmax/distinct/sampled drafts; argmax variants skip T=0).",
)
_DTYPE = flags.DEFINE_enum(
    "dtype", None, DTYPE_NAMES, "Compute dtype, matmul operands too (default: the checkpoint's)."
)
flags.mark_flags_as_required(["config", "workdir"])

STAGE_LABELS = {
    "lookahead": "frozen base, paper's recipe",
    "distill": "frozen base, table trained on the model's own continuations",
    "adapters": "frozen base, table and lookahead adapters",
    "joint": "lookahead-aware (base fine-tuned)",
}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    exp = ExperimentConfig.from_config(_CONFIG.value)
    if _TRAIN.value:
        status = run_training(_CONFIG.value, _WORKDIR.value)
        if status:
            sys.exit(status)
    tokenizer = experiment_tokenizer(exp, _WORKDIR.value)
    models = {
        f"{stage}: {STAGE_LABELS.get(stage, stage)}": load_model(
            find_checkpoint(exp, _WORKDIR.value, stage), tokenizer=tokenizer, dtype=_DTYPE.value
        )
        for stage in _STAGES.value
    }
    settings = protocol.Protocol(
        max_new_tokens=_MAX_NEW.value,
        temperatures=tuple(float(t) for t in _TEMPERATURES.value),
        num_lookahead=_NUM_LOOKAHEAD.value,
        methods=tuple(_METHODS.value),
        sweep_lookaheads=tuple(int(n) for n in _LOOKAHEADS.value),
        repeats=_REPEATS.value,
    )
    num_prompts = _NUM_PROMPTS.value
    if _QUICK.value:
        num_prompts = 2
        settings = dataclasses.replace(
            settings,
            max_new_tokens=32,
            temperatures=settings.temperatures if _TEMPERATURES.present else (0.0, 0.8),
            sweep_lookaheads=(1, 2),
            num_lookahead=2,
            methods=("pass_unk", "pass"),
            repeats=1,
            cost_block_lens=(1, 2, 4),
        )
    test_split = dataclasses.replace(exp.data, split="test")
    prompts = config_prompts(
        test_split, tokenizer, num_prompts=num_prompts, prompt_len=_PROMPT_LEN.value
    ).tolist()
    results = protocol.run(models, prompts, settings)
    results.update(num_prompts=num_prompts, prompt_len=_PROMPT_LEN.value, machine=report.machine())
    out = Path(_OUT.value or Path(_WORKDIR.value) / "bench")
    files = report.write(results, out, report.machine())
    print(files["markdown"].read_text())
    print("\n".join(f"wrote {path}" for path in files.values()))


if __name__ == "__main__":
    run_main(main)
