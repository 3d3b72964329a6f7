"""Quickstart: the whole recipe in about two minutes on 2 CPU cores, to see it work end to end.

Trains a SentencePiece tokenizer on the Python standard library, a very small base model, the
paper's frozen lookahead table and a short `joint` fine-tune of base and table, then reports the
held-out loss and greedy PaSS acceptance after each stage. The model is too small to be useful;
configs/tiny.py is the same recipe at a size where PaSS decodes faster than autoregression.

    python train.py --config configs/quickstart.py --workdir /tmp/qs
    python decode.py --config configs/quickstart.py --workdir /tmp/qs --compare --prompt "def "
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=128, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=64, d_ff=352,
        max_seq_len=256, max_lookahead=4,
        matmul_dtype="auto",  # bf16 matmul operands where native (AVX512-BF16, sm80+, TPU)
    )  # fmt: skip
    config.tokenizer.update(vocab_size=512, max_train_bytes=2_000_000)
    config.data.update(seq_len=128, batch_size=8)
    config.stages = "base,lookahead,joint"
    config.base.update(steps=900, warmup_steps=30)
    config.lookahead.update(steps=40)
    config.joint.update(
        steps=400, learning_rate=1e-3, warmup_steps=10, generations=128, generation_share=0.75
    )
    config.train.update(log_every=50, checkpoint_every=1000, row_groups=2)
    config.eval.update(loss_sequences=64, num_prompts=16, prompt_len=32, max_new_tokens=64)
    return config
