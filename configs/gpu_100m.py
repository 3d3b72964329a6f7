"""GPU 100M: the GPU benchmark model, a 97.5M-parameter code model trained in bfloat16 on one
accelerator, its frozen-recipe table (`lookahead`), lookahead adapters on the frozen base
(`adapters`) and a lookahead-aware fine-tune (`joint`), then the paper's protocol, in one command:

    python -m pass_jax.bench --config configs/gpu_100m.py --workdir $PWD/gpu_100m --train \\
        --stages lookahead,adapters,joint --num_prompts 16 --max_new_tokens 256 --repeats 2

`--train` runs (or resumes, or skips when finished) the config's stages first: tokenizer, base
(32.8M tokens), `lookahead` (base frozen, table only), `adapters` (base frozen, table and
adapters, on 256 of the model's own greedy continuations) and `joint` (base and table). Training
alone, and decoding:

    python train.py --config configs/gpu_100m.py --workdir $PWD/gpu_100m
    python decode.py --config configs/gpu_100m.py --workdir $PWD/gpu_100m --compare --prompt "def "

The corpus is the Python standard library sources. Where the standard library lacks its test
suite (Ubuntu's Python), its validation split is too small for `eval.loss_sequences`; train on
another code corpus with `--config.data.source=text_dir --config.data.path=DIR
--config.data.pattern=*.py` (the same overrides on every command). Results: BENCHMARKS.md.
"""

import ml_collections

from pass_jax.experiment import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model.update(
        d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, head_dim=64, d_ff=2048,
        max_seq_len=2048, max_lookahead=8, dtype="bfloat16", param_dtype="float32",
    )  # fmt: skip
    # Lookahead adapters, used by the `adapters` stage only (the other stages' models have
    # none): rank 16 on every projection, attention (wq, wk, wv, wo) and MLP (w_gate, w_up,
    # w_down). Drafting needs the slots' own queries, keys and values (what they attend to and
    # what later slots read from them) and the MLP, which holds most of a layer's weights.
    # `--config.model.adapter_targets="('wq','wv')"` or another rank to compare.
    config.model.adapter_rank = 16
    config.tokenizer.update(vocab_size=8192, max_train_bytes=8_000_000)
    config.data.update(seq_len=512, batch_size=64)
    config.stages = "base,lookahead,adapters,joint"
    config.base.update(steps=1000, warmup_steps=100, learning_rate=1.5e-3)
    config.lookahead.update(steps=200, warmup_steps=20)  # the paper's recipe
    config.adapters.update(steps=200, warmup_steps=20)  # base frozen: table and adapters
    config.joint.update(steps=200, warmup_steps=20)  # lookahead-aware: LM + lookahead loss
    config.train.update(log_every=50, checkpoint_every=500)
    config.eval.update(num_prompts=32, max_new_tokens=128)
    return config
