"""Small: the strongest base 2 CPU cores train in about 40 minutes (10.1M parameters, float32
weights, bfloat16 matmul operands), and its three tables in about 20 minutes more.

A language-model base, then three lookahead tables (L_max = 8), kept side by side for the
benchmark (BENCHMARKS.md):

- `lookahead`: the paper's recipe, base frozen, table only;
- `distill`: base frozen, table only, distilled (KL) from 512 of the model's own greedy
  continuations of corpus prompts;
- `joint`: the lookahead-aware variant, a fine-tune of base + table (from the `distill` table):
  each batch is 4 corpus rows and 4 of the model's own greedy continuations; LM loss on the
  corpus rows, KL from the model's own text outputs to its lookahead outputs on every row
  (changes the base; decoding stays lossless).

    python train.py --config configs/small.py --workdir /tmp/small_run
    python -m pass_jax.bench --config configs/small.py --workdir /tmp/small_run \
        --stages lookahead,distill,joint

Sizing: on an idle 2-core machine this model trains at 2,900-3,200 tokens/s (8 x 256 tokens a
step, its layers in 4 row groups, bfloat16 matmul operands; 1,490-1,790 with float32 operands:
`python -m pass_jax.bench.train_step --config configs/small.py`). At a fixed hour, tokens seen
matter more than width here, so 10M parameters and a 4,096 vocabulary (a 1,024 vocabulary
reached a lower loss per token but a worse one per byte in an equal-time probe).

Measured (2026-11-23; beside a low-priority `nice -n 19` job; logged rate median 2,670
tokens/s): 3,000 base steps (6.1M tokens) in 38.8 min of steps; held-out loss
3.951 nats/token, 1.147 nats/byte (the float32 run before, 2,100 steps in 60 min: 4.168,
1.210). Then 1.3 min for `lookahead`, 2.2 + 1.6 min (generating, training) for `distill` and
2.2 + 7.8 min for `joint`, whose held-out loss is 3.987. Greedy acceptance on 80 held-out
prompts (`--config.eval.num_prompts=80`), draft-1 / accepted drafts per window: [UNK] table
0.11 / 0.13, frozen recipe 0.07 / 0.07, `distill` 0.16 / 0.17, `joint` 0.30 / 0.46 (tau
1.23). On this stronger base the frozen recipe's table drafts below the untrained one under
greedy decoding (float32 operands, same base: 0.09 / 0.11 against 0.11 / 0.12), though it
lowers the lookahead loss (8.13 to 7.11). A 3-minute `joint` (`--config.joint.steps=180
--config.joint.learning_rate=3e-4 --config.joint.warmup_steps=10
--config.joint.generation_share=0.75`, 196 s of steps) reaches 0.31 / 0.44, held-out 3.998.
The float32 run before (BENCHMARKS.md) reached 0.18 / 0.185 frozen, 0.50 / 0.87 `joint`, and
0.24-0.34 / 0.33-0.51 in 3-minute `joint` runs of 125 steps.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=320, n_layers=6, n_heads=5, n_kv_heads=5, head_dim=64, d_ff=864,
        max_seq_len=1024, max_lookahead=8,
        matmul_dtype="bfloat16",  # float32 model, bf16 matmul operands: ~1.8x on AVX512-BF16
    )  # fmt: skip
    config.tokenizer.update(vocab_size=4096, max_train_bytes=8_000_000)
    config.data.update(seq_len=256, batch_size=8)
    config.stages = "base,lookahead,distill,joint"
    # Language-model pretraining (lookahead_weight > 0 would make it lookahead-aware).
    config.base.update(steps=3000, warmup_steps=80)
    config.lookahead.update(steps=80)  # the paper's recipe: base frozen, table only
    # Frozen base, the table distilled (KL) from 512 of the model's own greedy continuations.
    config.distill.update(steps=100, generations=512, lookahead_loss="kl")
    # Lookahead-aware fine-tune from the table before it: LM loss on corpus rows + KL to the
    # model's own outputs on every row, half of each batch the model's greedy continuations.
    config.joint.update(steps=450, warmup_steps=20, generations=512, generation_share=0.5)
    config.eval.update(num_prompts=32)
    config.train.update(row_groups=4)  # the step's layers on 4 groups of 2 rows: ~1.2x on CPU
    return config
