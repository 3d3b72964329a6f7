"""Small's draft model: `tiny`'s shape, trained as a plain language model on `small`'s tokenizer,
for draft-model speculative sampling (`--method sps`) and PEARL (`--method pearl`) with `small`
as the target.

The tokenizer is `small`'s, read from its workdir (train `small` first; a draft model must share
the target's tokenizer, and decoding refuses a checkpoint trained with another one). The config
argument names that workdir (default /tmp/small_run); `--config.tokenizer.path` works too.

    python train.py --config configs/small.py --workdir /tmp/small_run
    python train.py --config configs/small_draft.py:/tmp/small_run --workdir /tmp/small_draft_run
    python decode.py --config configs/small.py --workdir /tmp/small_run --stage base \\
        --draft_checkpoint /tmp/small_draft_run/checkpoints/base --method pearl --compare \\
        --prompt "def "

6.1M parameters against small's 10.1M: a draft call costs roughly 60% of a target call, so on a
CPU the draft pays only where acceptance is high (a shallower draft is cheaper; override
`--config.model.n_layers`).
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config(small_workdir: str = "/tmp/small_run") -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=256, n_layers=5, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=704,
        max_seq_len=1024, max_lookahead=0,  # small's context; no lookahead table
        matmul_dtype="auto",  # bf16 matmul operands where native (AVX512-BF16, sm80+, TPU)
    )  # fmt: skip
    config.tokenizer.update(path=small_workdir, vocab_size=4096)  # small's (a directory holds it)
    config.data.update(seq_len=256, batch_size=8)
    config.stages = "base"
    config.base.update(steps=850)  # tiny's base training
    config.train.update(checkpoint_every=250, row_groups=4)
    config.eval.update(num_prompts=0)  # no table: no acceptance to measure
    return config
