"""Small: the CPU benchmark model (10.1M parameters) and four PaSS heads side by side.

A base trained from scratch on the Python standard library sources (about 40 minutes of base
training on 2 CPU cores; float32 weights, bfloat16 matmul operands, the step's layers in 4 row
groups), then, each from the stage before:

- `lookahead`: the paper's recipe, base frozen, table only;
- `distill`: base frozen, table only, distilled (KL) from 512 of the model's own greedy
  continuations of corpus prompts;
- `adapters`: base frozen, table and rank-16 lookahead adapters (0.59M parameters, acting at
  lookahead slots only), distilled the same way: decoding stays exact with respect to the base;
- `joint`: the lookahead-aware variant, a fine-tune of base and table; each batch mixes corpus
  rows and the model's own greedy continuations (LM loss on the corpus rows, KL from the model's
  token outputs to its lookahead outputs on every row). It changes the base; decoding stays
  exact with respect to the fine-tuned model.

    python train.py --config configs/small.py --workdir /tmp/small_run
    python decode.py --config configs/small.py --workdir /tmp/small_run --stage joint \\
        --compare --prompt "def "
    python -m pass_jax.bench --config configs/small.py --workdir /tmp/small_run \\
        --stages lookahead,distill,adapters,joint --num_prompts 4 --max_new_tokens 256 --repeats 5
    python -m pass_jax.bench.train_step --config configs/small.py     # training tokens/s

Results: BENCHMARKS.md. CPU settings (matmul_dtype, row_groups): docs/cpu.md.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=320, n_layers=6, n_heads=5, n_kv_heads=5, head_dim=64, d_ff=864,
        max_seq_len=1024, max_lookahead=8,
        matmul_dtype="auto",  # bf16 matmul operands where native (AVX512-BF16, sm80+, TPU)
    )  # fmt: skip
    # Lookahead adapters, used by the `adapters` stage only (the other stages' models have
    # none): rank 16 on every projection, attention (wq, wk, wv, wo) and MLP (w_gate, w_up,
    # w_down). Drafting needs the slots' own queries, keys and values (what they attend to and
    # what later slots read from them) and the MLP, which holds most of a layer's weights.
    # `--config.model.adapter_targets="('wq','wv')"` or another rank to compare.
    config.model.adapter_rank = 16
    config.tokenizer.update(vocab_size=4096, max_train_bytes=8_000_000)
    config.data.update(seq_len=256, batch_size=8)
    config.stages = "base,lookahead,distill,adapters,joint"
    # Language-model pretraining (lookahead_weight > 0 would make it lookahead-aware).
    config.base.update(steps=3000, warmup_steps=80)
    config.lookahead.update(steps=80)  # the paper's recipe: base frozen, table only
    # Frozen base, the table distilled (KL) from 512 of the model's own greedy continuations.
    config.distill.update(steps=100, generations=512, lookahead_loss="kl")
    # Frozen base: table (from distill's) and adapters distilled (KL) from 512 greedy continuations.
    config.adapters.update(steps=300, generations=512)
    # Lookahead-aware fine-tune from the table before it: LM loss on corpus rows + KL to the
    # model's own outputs on every row, half of each batch the model's greedy continuations.
    config.joint.update(steps=450, warmup_steps=20, generations=512, generation_share=0.5)
    config.eval.update(num_prompts=32)
    config.train.update(row_groups=4)  # the step's layers on 4 groups of 2 rows: ~1.2x on CPU
    return config
