"""Small: the strongest base 2 CPU cores train in about an hour (10.1M parameters, float32),
and its three tables in about 25 minutes more.

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

Sizing: on an idle 2-core machine this model trains at 1,610-1,980 tokens/s (8 x 256 tokens a
step, its layers run in 4 row groups; 1,390-1,670 in one group; `train.py`'s log and `python -m
pass_jax.bench.train_step --config configs/small.py`), against ~840 for a 17M model with a
8,192 vocabulary (one group). At a fixed hour, tokens seen matter more than width here,
so 10M parameters and a 4,096 vocabulary (a 1,024 vocabulary reached a lower loss per token but
a worse one per byte in an equal-time probe).

Measured (every stage in one row group): 2,100 base steps (4.3M tokens) in 60 min, 12 of them
beside the test suite (about 51 min idle); held-out loss 4.168 nats/token, 1.210 nats/byte.
Then 2.2 min for `lookahead`, 2 + 2.2 min (generating, training) for `distill` and 2 + 15 min
for `joint`, whose held-out loss is 4.175. Greedy acceptance on 80 held-out prompts
(`--config.eval.num_prompts=80`), draft-1 / accepted drafts per window: frozen recipe 0.18 /
0.185, `distill` 0.18 / 0.21, `joint` 0.50 / 0.87 (tau 1.43); on the 32 prompts below,
`joint` 0.54 / 0.93. A `joint` trained on corpus rows alone reached 0.27 / 0.30 (80 prompts)
and 4.106: drafting the model's own greedy text is what the drafts are scored on, and the
mixed batch teaches it. A 3-minute `joint` (`--config.joint.steps=125
--config.joint.learning_rate=3e-4 --config.joint.warmup_steps=10
--config.joint.generation_share=0.75`, 197-211 s of steps, 4 row groups) reaches 0.24-0.34 /
0.33-0.51 over four runs (80 prompts; README), held-out loss 4.214-4.223.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=320, n_layers=6, n_heads=5, n_kv_heads=5, head_dim=64, d_ff=864,
        max_seq_len=1024, max_lookahead=8,
    )  # fmt: skip
    config.tokenizer.update(vocab_size=4096, max_train_bytes=8_000_000)
    config.data.update(seq_len=256, batch_size=8)
    config.stages = "base,lookahead,distill,joint"
    # Language-model pretraining (lookahead_weight > 0 would make it lookahead-aware).
    config.base.update(steps=2100, warmup_steps=80)
    config.lookahead.update(steps=80)  # the paper's recipe: base frozen, table only
    # Frozen base, the table distilled (KL) from 512 of the model's own greedy continuations.
    config.distill.update(steps=100, generations=512, lookahead_loss="kl")
    # Lookahead-aware fine-tune from the table before it: LM loss on corpus rows + KL to the
    # model's own outputs on every row, half of each batch the model's greedy continuations.
    config.joint.update(steps=450, warmup_steps=20, generations=512, generation_share=0.5)
    config.eval.update(num_prompts=32)
    config.train.update(row_groups=4)  # the step's layers on 4 groups of 2 rows: ~1.2x on CPU
    return config
