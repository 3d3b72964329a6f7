"""Small, parameter-shared: `small`'s compute with a third of its layer weights, for SPEED.

Two unique layers applied three times (`n_repeats=3`: six layer applications, as `small`'s six
distinct layers; 5.2M parameters against 10.1M), `small`'s other shapes, corpus and schedule.
The base trains with the early prediction's loss beside the LM loss (`early_weight`): the
residual stream after the first repeat, through a trained early head, predicts the next token,
and SPEED (`pass_jax.decode.speed`) starts that token through the network while the current one
is in the deeper repeats. The table (`lookahead`, the paper's recipe) lets PaSS run on the same
model.

    python train.py --config configs/small_shared.py --workdir /tmp/small_shared_run
    python decode.py --config configs/small_shared.py --workdir /tmp/small_shared_run \\
        --stage lookahead --method speed --compare --prompt "def "
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=320, n_layers=2, n_repeats=3, early_head="trained", n_heads=5, n_kv_heads=5,
        head_dim=64, d_ff=864, max_seq_len=1024, max_lookahead=8,
        matmul_dtype="auto",  # bf16 matmul operands where native (AVX512-BF16, sm80+, TPU)
    )  # fmt: skip
    config.tokenizer.update(vocab_size=4096, max_train_bytes=8_000_000)
    config.data.update(seq_len=256, batch_size=8)
    config.stages = "base,lookahead"
    # LM loss + 0.5 x the early prediction's loss (SPEED's draft).
    config.base.update(steps=3000, warmup_steps=80, early_weight=0.5)
    config.lookahead.update(steps=80)  # the paper's recipe: base frozen, table only
    config.eval.update(num_prompts=32)
    config.train.update(row_groups=4)  # the step's layers on 4 groups of 2 rows: ~1.2x on CPU
    return config
