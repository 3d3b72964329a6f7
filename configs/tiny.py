"""Tiny: the end-to-end demo on a CPU (about 11 minutes on 2 cores).

Trains a tokenizer and a 4.5M-parameter code model on the Python standard library sources of
the machine (no download), then the lookahead table with the paper's recipe (`lookahead`: base
frozen, table only), then a short lookahead-aware fine-tune (`joint`: base and table, partly on
the model's own greedy continuations). Float32 weights with bfloat16 matmul operands; on a CPU
without native bfloat16 (AVX512-BF16) try `--config.model.matmul_dtype=float32`.

    python train.py --config configs/tiny.py --workdir /tmp/tiny_run
    python decode.py --config configs/tiny.py --workdir /tmp/tiny_run --compare --prompt "def "
    python -m pass_jax.bench --config configs/tiny.py --workdir /tmp/tiny_run --quick

Installed: `pass-jax-train --config tiny --workdir /tmp/tiny_run`. Results: BENCHMARKS.md.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=256, n_layers=5, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=704,
        max_seq_len=512, max_lookahead=4,
        matmul_dtype="auto",  # bf16 matmul operands where native (AVX512-BF16, sm80+, TPU)
    )  # fmt: skip
    config.tokenizer.update(vocab_size=1024, max_train_bytes=8_000_000)
    config.data.update(seq_len=256, batch_size=8)
    config.stages = "base,lookahead,joint"
    config.base.update(steps=850)
    config.lookahead.update(steps=80)  # the paper's recipe: base frozen, table only
    # Lookahead-aware, from the frozen recipe's table: LM loss on 2 corpus rows + KL to the
    # model's own outputs on every row, 6 of 8 rows its greedy continuations.
    config.joint.update(
        steps=300, learning_rate=3e-4, warmup_steps=10, generations=256, generation_share=0.75
    )
    config.train.update(checkpoint_every=250, row_groups=4)
    config.eval.update(num_prompts=32)
    return config
