"""`pass-jax-train`: trains a tokenizer, a base model and its PaSS lookahead table, as the
config's stages say.

    pass-jax-train --config tiny --workdir /tmp/tiny_run [--config.base.steps=100]
    pass-jax-train --config configs/7b.py --dry_run   # compile and size only
    pass-jax-train --config tiny --workdir /tmp/tiny_run --reevaluate  # finished stages again
    pass-jax-train --config hf_head --workdir /runs/h --config.hf_dir=/ckpt/Llama-3.2-1B

`--config` is a config file or the name of one shipped in `pass_jax.configs`. On several hosts,
run the same command on every host with `--distributed` (README.md, "Running on TPU and GPU").
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from pass_jax.cli.commands import run_training
from pass_jax.cli.flags import run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: a file, or a packaged config's name (e.g. tiny)."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for tokenizer, checkpoints, metrics (not with --dry_run)."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Compile the train steps and the decode loop against abstract arrays (8 fake CPU devices "
    "without an accelerator) and print per-device memory; trains nothing.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host: call jax.distributed.initialize() first (automatic when the environment names "
    "a multi-process job; see pass_jax/distributed.py).",
)
_REEVALUATE = flags.DEFINE_bool(
    "reevaluate",
    False,
    "Evaluate stages that are already finished again (held-out losses and acceptance, e.g. "
    "after changing config.eval) instead of skipping them; unfinished stages train as usual.",
)
flags.mark_flags_as_required(["config"])


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    status = run_training(
        _CONFIG.value,
        _WORKDIR.value,
        dry_run=_DRY_RUN.value,
        multi_host=_DISTRIBUTED.value,
        reevaluate=_REEVALUATE.value,
    )
    sys.exit(status)


def main() -> None:
    """The console script's entry point."""
    run_main(_main)
