"""LLaMA-2-7B: the paper's lookahead recipe, then lookahead adapters, on a frozen, converted base
(bf16, scanned layers).

    python -m pass_jax.io.convert --hf_dir /ckpt/Llama-2-7b-hf --out /ckpt/llama2_7b_orbax \\
        --dtype bfloat16 --scan_layers
    python train.py --config configs/7b.py --workdir /runs/7b \\
        --config.train.init_from=/ckpt/llama2_7b_orbax \\
        --config.tokenizer.path=/ckpt/Llama-2-7b-hf/tokenizer.model
    python train.py --config configs/7b.py --workdir /tmp/x --dry_run   # compile and size only
    python -m pass_jax.aot --config configs/7b.py            # the decode programs alone
    python decode.py --config configs/7b.py --workdir /runs/7b --compare --prompt "def "

On several hosts (a TPU pod slice, several GPU hosts) every host runs the same train command
with `--distributed`, and the workdir on a filesystem every host mounts: see
docs/training.md.

Data: TFDS Wikipedia (`tfds_name`, prepared offline in `data.tfds_data_dir`); for a local code
corpus set `--config.data.source=text_dir --config.data.path=/corpus --config.data.pattern=*.py
--config.data.split=train --config.eval.split=validation`.

The table has L_max = 8 rows (all trained); decoding drafts `decode.num_lookahead` = 4 of them by
default, the paper's best setting for 7B. `adapters` then trains the table and rank-16 adapters
on every projection (40M parameters, acting at lookahead slots only: the base's outputs stay
exact) on the corpus with the KL to the model's own outputs (no generated rows, so it runs on
several hosts too); `--config.stages=lookahead` stops at the paper's recipe. `mesh.train_shape`
shards the frozen base FSDP-style over every device (data, fsdp, tensor); `mesh.decode_shape` is
tensor parallel.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()  # its model section is LLaMA-2-7B's shapes
    config.model.update(
        max_lookahead=8, dtype="bfloat16", param_dtype="bfloat16", scan_layers=True, remat=True,
        adapter_rank=16,  # every projection (adapter_targets): the slots' q, k, v, o and MLP
    )  # fmt: skip
    # LLaMA-2's SentencePiece model (<unk> = 0, the row the lookahead table starts from).
    config.tokenizer.update(vocab_size=32000)
    config.data.update(
        source="tfds", tfds_name="wikipedia/20230601.en", split="train[:99%]", seq_len=2048,
        batch_size=8, add_bos=True,
    )  # fmt: skip
    config.stages = "lookahead,adapters"
    # The paper's recipe: base frozen, only the table trained; AdamW lr 1e-2, batch 8, 10k steps,
    # 2k linear warmup steps then cosine decay.
    config.lookahead.update(steps=10_000, warmup_steps=2_000)
    # Table (from lookahead's) and adapters: KL to the model's outputs on corpus rows, a LoRA rate.
    config.adapters.update(steps=2_000, warmup_steps=200, learning_rate=3e-4, generation_share=0.0)
    # init_from: the converted base checkpoint (`python -m pass_jax.io.convert`).
    config.train.update(log_every=50, checkpoint_every=500)
    config.eval.update(split="train[99%:]", loss_sequences=128, num_prompts=32, prompt_len=128)
    config.decode.update(num_lookahead=4, batch_size=8, prompt_len=512, max_new_tokens=512)
    return config
