"""Small: the strongest model 2 CPU cores train in about an hour (17M parameters, float32).

Lookahead-aware base training from the start (LM loss + 0.5 * lookahead loss, table and base
trained together, 4 insertion points per sequence), then a short frozen-base polish of the
table with the paper's recipe. L_max = 8.

    python train.py --config configs/small.py --workdir /tmp/small_run

Measured on this (shared) 2-core machine: 3.5-4.6 s per base step of 8 x 256 tokens (450-600
tokens/s), 3.5 s per frozen step; estimate 55-70 min of base training + 4 min of lookahead
training + ~1 min of tokenizer, data and evaluation.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = dict(
        d_model=384,
        n_layers=6,
        n_heads=6,
        n_kv_heads=6,
        head_dim=64,
        d_ff=1024,
        max_seq_len=1024,
        max_lookahead=8,
        tie_embeddings=False,
        dtype="float32",
        param_dtype="float32",
        scan_layers=False,
    )
    config.tokenizer = dict(path=placeholder(str), vocab_size=8192, max_train_bytes=20_000_000)
    config.data = dict(
        source="stdlib",
        path=placeholder(str),
        pattern="*.txt",
        text_key="text",
        tfds_name=placeholder(str),
        split="train",
        max_documents=placeholder(int),
        seq_len=256,
        batch_size=8,
        seed=0,
        add_bos=False,
        cache_dir=placeholder(str),
    )
    config.stages = "base,lookahead"
    # Lookahead-aware base training: the base model itself learns to be drafted for.
    config.base = dict(
        steps=900,
        learning_rate=2e-3,
        warmup_steps=80,
        end_lr_ratio=0.1,
        weight_decay=0.1,
        grad_clip=1.0,
        lookahead_weight=0.5,
        num_insertions=4,
        lookahead_loss="ce",
    )
    # The paper's recipe on the final base: base frozen, table only.
    config.lookahead = dict(
        steps=60,
        learning_rate=1e-2,
        warmup_steps=10,
        end_lr_ratio=0.0,
        weight_decay=0.0,
        grad_clip=1.0,
        lookahead_weight=1.0,
        num_insertions=8,
        lookahead_loss="ce",
    )
    # Optional (add to `stages`): a joint fine-tune of an existing base.
    config.joint = dict(
        steps=100,
        learning_rate=5e-4,
        warmup_steps=10,
        end_lr_ratio=0.1,
        weight_decay=0.1,
        grad_clip=1.0,
        lookahead_weight=1.0,
        num_insertions=8,
        lookahead_loss="ce",
    )
    config.train = dict(
        log_every=10, checkpoint_every=100, max_to_keep=2, init_from=placeholder(str)
    )
    config.eval = dict(
        split="validation",
        loss_batches=8,
        num_insertions=8,
        num_prompts=16,
        prompt_len=32,
        max_new_tokens=128,
    )
    return config
