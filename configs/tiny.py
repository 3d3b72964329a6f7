"""Tiny: tokenizer, base pretraining, the frozen lookahead recipe and a short joint fine-tune on
the Python standard library, in at most 15 minutes on 2 CPU cores (float32).

    python train.py --config configs/tiny.py --workdir /tmp/tiny_run
    python decode.py --config configs/tiny.py --workdir /tmp/tiny_run --compare --prompt "def "

Stage `joint` starts from the frozen recipe's table and fine-tunes base + table together: its
held-out loss and acceptance are reported next to the frozen recipe's.

Measured (6.1M parameters, ~2,100 training tokens/s on an otherwise idle machine): with 1000
base and 150 joint steps the whole run took 12.5 min idle, so these 900 / 120 steps take ~11 min;
15.3 min when other jobs kept the machine at a load of ~4. Held-out loss 5.57 nats/token.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=256, n_layers=5, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=704,
        max_seq_len=512, max_lookahead=4,
    )  # fmt: skip
    config.tokenizer.update(vocab_size=4096, max_train_bytes=8_000_000)
    config.data.update(seq_len=256, batch_size=4)
    config.stages = "base,lookahead,joint"
    config.base.update(steps=900)
    config.lookahead.update(steps=100)  # the paper's recipe: base frozen, table only
    config.joint.update(steps=120, warmup_steps=12)  # lookahead-aware: LM + lookahead loss
    config.train.update(checkpoint_every=250)
    config.eval.update(num_prompts=32)
    return config
