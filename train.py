"""Trains a tokenizer, a base model and its PaSS lookahead table, as the config's stages say.

python train.py --config configs/tiny.py --workdir /tmp/tiny_run [--config.base.steps=100]
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from pass_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for tokenizer, checkpoints, metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sys.exit(cli.train_main(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser)
