"""Trains a tokenizer, a base model and its PaSS lookahead table, as the config's stages say.

python train.py --config configs/tiny.py --workdir /tmp/tiny_run [--config.base.steps=100]
python train.py --config configs/7b.py --dry_run   # compile and size only
python train.py --config configs/tiny.py --workdir /tmp/tiny_run --reevaluate  # finished stages

On several hosts, run the same command on every host with `--distributed` (see README.md,
"Running on TPU and GPU").
"""

from pass_jax.cli.train import main

if __name__ == "__main__":
    main()
