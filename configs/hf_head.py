"""A PaSS head for a Hugging Face LLaMA model: the paper's lookahead recipe (base frozen, only the
table trained) straight from an HF directory, with no conversion step.

    python train.py --config configs/hf_head.py --workdir /runs/head \\
        --config.hf_dir=/ckpt/Llama-3.2-1B
    python decode.py --hf_dir /ckpt/Llama-3.2-1B --head /runs/head/heads/lookahead \\
        --compare --prompt "def "

The model's shapes, tokenizer (`tokenizer.json` or `tokenizer.model`) and base weights are the
HF directory's; the model section sets only dtypes, layout, the table size (`max_lookahead`) and
the sequence length. The trained table is exported as a PaSS head to `<workdir>/heads/lookahead`
(`pass_jax.io.head`), which loads onto this base only. Data: the Python standard library (the
`stdlib` source); point `config.data` at another corpus as in configs/7b.py.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(max_lookahead=4, max_seq_len=2048, dtype="float32", param_dtype="float32")
    config.data.update(seq_len=512, batch_size=8, add_bos=True)
    config.stages = "lookahead"
    config.lookahead.update(steps=500, warmup_steps=50)
    config.train.update(log_every=10, checkpoint_every=100)
    config.eval.update(loss_sequences=32, num_prompts=16)
    return config
