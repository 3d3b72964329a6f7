"""`generate_text`: text in, text out, through `generate`."""

from __future__ import annotations

import pytest
from conftest import sharp_model
from hf_files import write_bpe_tokenizer

from pass_jax.decode.generation import generate
from pass_jax.decode.text import generate_text
from pass_jax.tokenizer import HFTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_bpe_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=300))


@pytest.fixture(scope="module")
def model(tokenizer):
    return sharp_model(1, vocab_size=tokenizer.vocab_size, max_lookahead=3)


def test_generate_text_is_generate_between_encode_and_decode(model, tokenizer):
    assert tokenizer.add_bos  # its post-processor's convention
    prompt = "def f(x):"
    ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    expected = generate(model, [ids], max_new_tokens=12, eos_id=tokenizer.eos_id)
    text = generate_text(model, tokenizer, prompt, max_new_tokens=12, method="pass_unk")
    assert isinstance(text, str) and text == tokenizer.decode(expected.tokens[0])
    assert text  # something was generated

    without_bos = generate(model, [ids[1:]], max_new_tokens=12, eos_id=tokenizer.eos_id)
    texts = generate_text(model, tokenizer, [prompt, "import os"], max_new_tokens=12, add_bos=False)
    assert isinstance(texts, list) and texts[0] == tokenizer.decode(without_bos.tokens[0])
    assert len(texts) == 2


def test_generate_text_stops_at_eos_and_rejects_empty_input(model, tokenizer):
    ids = [tokenizer.bos_id, *tokenizer.encode("x = 1")]
    free = generate(model, [ids], max_new_tokens=12).tokens[0]
    stop = free[3]  # pretend the 4th new token is EOS: decoding stops there
    stopping = HFTokenizer.load(tokenizer.path, specials={"bos": tokenizer.bos_id, "eos": stop})
    text = generate_text(model, stopping, "x = 1", max_new_tokens=12)
    assert text == tokenizer.decode(free[: free.index(stop) + 1])
    with pytest.raises(ValueError, match="no prompts"):
        generate_text(model, tokenizer, [], max_new_tokens=4)
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate_text(model, tokenizer, "", max_new_tokens=4, add_bos=False)
