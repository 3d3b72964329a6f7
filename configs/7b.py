"""LLaMA-2-7B: the paper's lookahead recipe on a frozen, converted base (bf16, scanned layers).

    python -m pass_jax.convert --hf_dir /ckpt/Llama-2-7b-hf --out /ckpt/llama2_7b_orbax \\
        --dtype bfloat16 --scan_layers
    python train.py --config configs/7b.py --workdir /runs/7b \\
        --config.train.init_from=/ckpt/llama2_7b_orbax \\
        --config.tokenizer.path=/ckpt/Llama-2-7b-hf/tokenizer.model
    python -m pass_jax.aot --config configs/7b.py            # compile check, no accelerator
    python train.py --config configs/7b.py --workdir /tmp/x --dry_run   # train step + decode

Data: TFDS Wikipedia (`tfds_name`, prepared offline in `data.tfds_data_dir`); for a local code
corpus set `--config.data.source=text_dir --config.data.path=/corpus --config.data.pattern=*.py
--config.data.split=train --config.eval.split=validation`.

The table has L_max = 8 rows (all trained); decoding drafts `decode.num_lookahead` = 4 of them by
default, the paper's best setting for 7B. `mesh.train_shape` shards the frozen base FSDP-style
over every device (data, fsdp, tensor); `mesh.decode_shape` is tensor parallel. On several hosts
add `--distributed` (README, "Running on TPU and GPU").
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = dict(
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        head_dim=128,
        d_ff=11008,
        max_seq_len=4096,
        rope_theta=10000.0,
        norm_eps=1e-5,
        max_lookahead=8,
        tie_embeddings=False,
        dtype="bfloat16",
        param_dtype="bfloat16",
        scan_layers=True,
        remat=True,
    )
    # LLaMA-2's SentencePiece model (<unk> = 0, the row the lookahead table starts from).
    config.tokenizer = dict(path=placeholder(str), vocab_size=32000)
    config.data = dict(
        source="tfds",
        path=placeholder(str),
        pattern="*.txt",
        text_key="text",
        tfds_name="wikipedia/20230601.en",
        tfds_data_dir=placeholder(str),
        split="train[:99%]",
        max_documents=placeholder(int),
        seq_len=2048,
        batch_size=8,
        seed=0,
        add_bos=True,
        cache_dir=placeholder(str),
    )
    config.stages = "lookahead"
    # The paper's recipe: base frozen, only the table trained; AdamW lr 1e-2, batch 8, 10k steps,
    # 2k linear warmup steps then cosine decay.
    config.lookahead = dict(
        steps=10_000,
        learning_rate=1e-2,
        warmup_steps=2_000,
        end_lr_ratio=0.0,
        weight_decay=0.0,
        grad_clip=1.0,
        lookahead_weight=1.0,
        num_insertions=8,
        lookahead_loss="ce",
    )
    # init_from: the converted base checkpoint (`python -m pass_jax.convert`).
    config.train = dict(
        log_every=50, checkpoint_every=500, max_to_keep=2, init_from=placeholder(str)
    )
    config.eval = dict(
        split="train[99%:]",
        loss_batches=16,
        num_insertions=8,
        num_prompts=32,
        prompt_len=128,
        max_new_tokens=128,
    )
    config.mesh = dict(
        axes=("data", "fsdp", "tensor"), train_shape=(1, -1, 1), decode_shape=(1, 1, -1)
    )
    config.decode = dict(num_lookahead=4, batch_size=8, prompt_len=512, max_new_tokens=512)
    return config
