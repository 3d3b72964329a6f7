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
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = dict(
        d_model=256,
        n_layers=5,
        n_heads=4,
        n_kv_heads=4,
        head_dim=64,
        d_ff=704,
        max_seq_len=512,
        max_lookahead=4,
        tie_embeddings=False,
        dtype="float32",
        param_dtype="float32",
        scan_layers=False,
    )
    config.tokenizer = dict(path=placeholder(str), vocab_size=4096, max_train_bytes=8_000_000)
    config.data = dict(
        source="stdlib",
        path=placeholder(str),
        pattern="*.txt",
        text_key="text",
        tfds_name=placeholder(str),
        split="train",
        max_documents=placeholder(int),
        seq_len=256,
        batch_size=4,
        seed=0,
        add_bos=False,
        cache_dir=placeholder(str),
    )
    config.stages = "base,lookahead,joint"
    config.base = dict(
        steps=900,
        learning_rate=3e-3,
        warmup_steps=50,
        end_lr_ratio=0.1,
        weight_decay=0.1,
        grad_clip=1.0,
        lookahead_weight=0.0,
        num_insertions=4,
        lookahead_loss="ce",
    )
    # The paper's recipe: base frozen, AdamW lr 1e-2, warmup then cosine, table only.
    config.lookahead = dict(
        steps=100,
        learning_rate=1e-2,
        warmup_steps=10,
        end_lr_ratio=0.0,
        weight_decay=0.0,
        grad_clip=1.0,
        lookahead_weight=1.0,
        num_insertions=8,
        lookahead_loss="ce",
    )
    # Lookahead-aware fine-tune: LM loss + weight * lookahead loss, everything trained.
    config.joint = dict(
        steps=120,
        learning_rate=1e-3,
        warmup_steps=12,
        end_lr_ratio=0.1,
        weight_decay=0.1,
        grad_clip=1.0,
        lookahead_weight=1.0,
        num_insertions=8,
        lookahead_loss="ce",
    )
    config.train = dict(
        log_every=10, checkpoint_every=250, max_to_keep=2, init_from=placeholder(str)
    )
    config.eval = dict(
        split="validation",
        loss_batches=8,
        num_insertions=8,
        num_prompts=32,
        prompt_len=32,
        max_new_tokens=128,
    )
    return config
