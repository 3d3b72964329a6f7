"""Trains a tokenizer, a base model and its PaSS lookahead table, as the config's stages say.

python train.py --config configs/tiny.py --workdir /tmp/tiny_run [--config.base.steps=100]
python train.py --config configs/7b.py --workdir /tmp/x --dry_run   # compile and size only
python train.py --config configs/tiny.py --workdir /tmp/tiny_run --reevaluate  # finished stages

On several hosts, run the same command on every host with `--distributed` (see README.md,
"Running on TPU and GPU").
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from pass_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for tokenizer, checkpoints, metrics.")
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    status = cli.train_main(
        _CONFIG.value,
        _WORKDIR.value,
        dry_run=_DRY_RUN.value,
        multi_host=_DISTRIBUTED.value,
        reevaluate=_REEVALUATE.value,
    )
    sys.exit(status)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser)
