"""A PaSS head for a Hugging Face LLaMA model: the lookahead table and lookahead adapters on the
frozen base (`adapters`), straight from an HF directory, with no conversion step.

    python train.py --config configs/hf_head.py --workdir /runs/head \\
        --config.hf_dir=/ckpt/Llama-3.2-1B
    python decode.py --hf_dir /ckpt/Llama-3.2-1B --head /runs/head/heads/adapters \\
        --compare --prompt "def "

The adapters act at lookahead slots only, so decoding with the head outputs exactly the HF
model's distribution (greedy: its tokens). `--config.stages=lookahead` trains the paper's recipe
instead (the table alone); `--config.stages=lookahead,adapters` both, the adapters starting from
the trained table.

The model's shapes, tokenizer (`tokenizer.json` or `tokenizer.model`) and base weights are the
HF directory's; the model section sets only dtypes, layout, the table size (`max_lookahead`),
the adapters and the sequence length. The trained head is exported to `<workdir>/heads/<stage>`
(`pass_jax.io.head`), which loads onto this base only. Data: the Python standard library (the
`stdlib` source); point `config.data` at another corpus as in configs/7b.py.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(max_lookahead=4, max_seq_len=2048, dtype="float32", param_dtype="float32")
    # Rank 16 on every projection, attention and MLP (adapter_targets, the default): the slots
    # need their own queries, keys and values, and the MLP holds most of a layer's weights.
    config.model.adapter_rank = 16
    config.data.update(seq_len=512, batch_size=8, add_bos=True)
    config.stages = "adapters"
    config.lookahead.update(steps=500, warmup_steps=50)  # the paper's recipe
    # Table and adapters, distilled (KL) from 256 of the model's own greedy continuations.
    config.adapters.update(steps=500, warmup_steps=50)
    config.train.update(log_every=10, checkpoint_every=100)
    config.eval.update(loss_sequences=32, num_prompts=16)
    return config
