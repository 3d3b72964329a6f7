"""Reference 10M: a 10M-parameter code model (d 256, 8 layers, untied, a 1,024-piece vocabulary)
on the Python standard library, with the paper's frozen recipe and a 3-minute lookahead-aware
fine-tune, and rank-16 lookahead adapters on the frozen base between them.

About 14 minutes of base training on 2 CPU cores (float32 weights, bfloat16 matmul operands),
then `lookahead` (base frozen, table only), `adapters` (base frozen, table and lookahead adapters,
on 128 of the model's own greedy continuations) and `joint` (base and table, on corpus rows and
128 of the model's own greedy continuations; 3 minutes with generating them). Held-out loss and
greedy acceptance on 80 held-out prompts are reported after each stage: a fixed reference point
for comparing training recipes at this size.

    python train.py --config configs/reference_10m.py --workdir /tmp/reference_10m
    # a frozen-base table trained on the model's own continuations, on the same base:
    python train.py --config configs/reference_10m.py --workdir /tmp/reference_10m \\
        --config.stages=base,lookahead,distill
    python -m pass_jax.bench --config configs/reference_10m.py --workdir /tmp/reference_10m \\
        --stages lookahead,adapters,joint --num_prompts 4 --max_new_tokens 256 --repeats 3 \\
        --temperatures 0,0.5 --lookaheads 2,4

Results: BENCHMARKS.md.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=256, n_layers=8, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=1152,
        max_seq_len=1024, max_lookahead=8,
        matmul_dtype="auto",  # bf16 matmul operands where native (AVX512-BF16, sm80+, TPU)
    )  # fmt: skip
    # Lookahead adapters, used by the `adapters` stage only (the other stages' models have
    # none): rank 16 on every projection, attention (wq, wk, wv, wo) and MLP (w_gate, w_up,
    # w_down). Drafting needs the slots' own queries, keys and values (what they attend to and
    # what later slots read from them) and the MLP, which holds most of a layer's weights.
    # `--config.model.adapter_targets="('wq','wv')"` or another rank to compare.
    config.model.adapter_rank = 16
    config.tokenizer.update(vocab_size=1024, max_train_bytes=8_000_000)
    config.data.update(seq_len=256, batch_size=8)
    config.stages = "base,lookahead,adapters,joint"
    config.base.update(steps=1050, warmup_steps=80)
    config.lookahead.update(steps=80)  # the paper's recipe: base frozen, table only
    config.distill.update(steps=100, generations=512, lookahead_loss="kl")
    config.adapters.update(steps=150, generations=128)  # from the frozen recipe's table
    # Lookahead-aware, 3 minutes from the frozen recipe's table: LM loss on 2 corpus rows + KL
    # to the model's own outputs on every row, 6 of 8 rows its greedy continuations.
    config.joint.update(
        steps=150, learning_rate=3e-4, warmup_steps=10, generations=128, generation_share=0.75
    )
    config.eval.update(num_prompts=80)
    config.train.update(row_groups=4)  # the step's layers on 4 groups of 2 rows: ~1.2x on CPU
    return config
