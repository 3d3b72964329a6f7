"""Test helper: a small byte-level BPE `tokenizer.json` (Llama-3 style), trained here with the
`tokenizers` library (nothing is downloaded), and its Hugging Face special-token files."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def stdlib_texts(names=("textwrap.py", "shlex.py", "fnmatch.py")) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [(stdlib / name).read_text(encoding="utf-8") for name in names]


def write_bpe_tokenizer(directory: Path, *, vocab_size: int = 400, texts=None) -> Path:
    """Trains a byte-level BPE whose post-processor prepends BOS (as Llama-3's does), writes
    `tokenizer.json` and a `tokenizer_config.json` naming BOS/EOS into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts or stdlib_texts(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, bos_id)]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": BOS, "eos_token": {"content": EOS}}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def write_tiny_llama(directory: Path, *, vocab_size: int, seed: int = 0) -> Path:
    """A tiny random `LlamaForCausalLM` saved (safetensors) by transformers into `directory`."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaky predictions: varied greedy text
    model.save_pretrained(directory)
    return directory
