"""Tests for pass_jax.tokenizer: code round-trips, specials, loading, atomic writes."""

from __future__ import annotations

import dataclasses
import re
import sysconfig
from pathlib import Path

import pytest
import sentencepiece as spm
from hf_files import BOS, EOS, write_bpe_tokenizer

from pass_jax.tokenizer import (
    HF_TOKENIZER_FILENAME,
    MODEL_FILENAME,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    _chunks,
    bos_prefix,
    load_tokenizer,
    train_tokenizer,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN_FILES = ["os.py", "argparse.py", "functools.py", "textwrap.py", "inspect.py"]
HELDOUT_FILES = ["shlex.py", "fnmatch.py", "tabnanny.py"]

CODE_SAMPLES = [
    "",
    "\n",
    " ",
    "\t",
    "def f(x):\n    return x\n",
    "class A:\n\tdef m(self):\n\t\tpass\n\n\n\n\tx = 1  \n",  # tabs, blank lines, trailing ws
    "    \n\t  \t\n  \n",  # whitespace-only lines
    "if x:\r\n    y = 'crlf'\r\n",
    "  leading spaces and trailing spaces   ",
    "s = 'héllo wörld — ünïcode 日本語 😀 \u200b\ufeff'\n",
    "a\u2581b \u2581\u2581 c\u2581",  # SentencePiece's own space marker, used literally
    "x\x00y\x7f\n",
    "        " * 10 + "deeply_indented()\n",
]


def _read(name: str) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok") / "code.model"
    return train_tokenizer(
        (_read(n) for n in TRAIN_FILES), vocab_size=1000, output_path=out, max_train_bytes=400_000
    )


@pytest.mark.parametrize("text", CODE_SAMPLES)
def test_round_trip_code_snippets(trained: Tokenizer, text: str) -> None:
    ids = trained.encode(text)
    assert all(isinstance(i, int) and 0 <= i < trained.vocab_size for i in ids)
    assert trained.decode(ids) == text


def test_round_trip_heldout_source_files(trained: Tokenizer) -> None:
    for name in HELDOUT_FILES:
        text = _read(name)
        ids = trained.encode(text)
        assert trained.decode(ids) == text, name
        assert len(ids) < len(text.encode("utf-8")) / 2  # real compression, not bytes


def test_specials_and_vocab(trained: Tokenizer) -> None:
    assert trained.vocab_size == 1000
    assert (trained.unk_id, trained.bos_id, trained.eos_id, trained.pad_id) == (0, 1, 2, 3)
    ids = trained.encode("import os\n")
    assert ids and trained.bos_id not in ids and trained.eos_id not in ids
    # Specials decode to nothing.
    assert trained.decode([trained.bos_id, *ids, trained.eos_id, trained.pad_id]) == "import os\n"


def test_whitespace_and_newlines_are_vocabulary(trained: Tokenizer) -> None:
    pieces = [trained.id_to_piece(i) for i in range(trained.vocab_size)]
    assert any("\n" in p for p in pieces)
    assert "\u2581" * 4 in pieces  # 4-space indentation is one piece
    # A newline and an 8-space indent encode to single (non-byte) pieces.
    for text in ("\n", " " * 8):
        ids = trained.encode(text)
        assert len(ids) == 1, (text, [trained.id_to_piece(i) for i in ids])
        assert not trained.id_to_piece(ids[0]).startswith("<0x")


def test_encode_batch_matches_encode(trained: Tokenizer) -> None:
    texts = [*CODE_SAMPLES, _read("shlex.py")]
    assert trained.encode_batch(texts) == [trained.encode(t) for t in texts]


def test_load_file_and_directory(trained: Tokenizer, tmp_path: Path) -> None:
    assert trained.path is not None and trained.path.name == "code.model"
    loaded = load_tokenizer(trained.path)
    assert loaded.fingerprint == trained.fingerprint
    text = _read("fnmatch.py")
    assert loaded.encode(text) == trained.encode(text)
    # A directory containing tokenizer.model loads too.
    (tmp_path / MODEL_FILENAME).write_bytes(trained.path.read_bytes())
    assert load_tokenizer(tmp_path).encode(text) == trained.encode(text)


def test_training_writes_atomically_into_directory(tmp_path: Path) -> None:
    out_dir = tmp_path / "tokdir"
    out_dir.mkdir()
    tok = train_tokenizer([_read("shlex.py")], vocab_size=600, output_path=out_dir)
    assert tok.path == out_dir / MODEL_FILENAME
    assert sorted(p.name for p in out_dir.iterdir()) == [MODEL_FILENAME]  # no temp files left
    assert load_tokenizer(out_dir).fingerprint == tok.fingerprint


def test_missing_and_invalid_model(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        load_tokenizer((tmp_path / "empty_dir").mkdir() or tmp_path / "empty_dir")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"definitely not a protobuf")
    with pytest.raises(ValueError, match=r"bad\.model"):
        load_tokenizer(bad)


def test_train_rejects_too_small_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x = 1\n"], vocab_size=100, output_path=tmp_path / "t.model")
    assert not (tmp_path / "t.model").exists()


def test_loads_foreign_llama_style_model(tmp_path: Path) -> None:
    """A default SentencePiece model (unigram, dummy prefix, no pad) behaves like the raw one."""
    text = _read("textwrap.py")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_prefix=str(tmp_path / "foreign"),
        vocab_size=500,
        byte_fallback=True,
        minloglevel=2,
    )
    path = tmp_path / "foreign.model"
    tok = load_tokenizer(path)
    raw = spm.SentencePieceProcessor(model_file=str(path))
    assert tok.pad_id == -1 and tok.eos_id == raw.eos_id() and tok.vocab_size == 500
    for sample in ["Hello world", "a\u2581b", "wrap the text"]:
        assert tok.encode(sample) == raw.encode(sample)
        assert tok.decode(tok.encode(sample)) == raw.decode(raw.encode(sample))


def test_training_chunks_keep_text_and_respect_limits() -> None:
    docs = ["a\nbb\n" * 50, "x" * 25 + "\n\n", "tail without newline"]
    chunks = list(_chunks(docs, max_chunk_chars=12, max_bytes=None))
    assert "".join(chunks) == "".join(docs)
    assert all(0 < len(c) <= 12 for c in chunks)
    capped = list(_chunks(docs, max_chunk_chars=12, max_bytes=30))
    assert 30 <= sum(len(c) for c in capped) < 40


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bpe_tokenizer(tmp_path_factory.mktemp("hf_tok"))


def test_tokenizer_json_matches_the_tokenizers_library(hf_dir: Path) -> None:
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_file(str(hf_dir / HF_TOKENIZER_FILENAME))
    tok = load_tokenizer(hf_dir)
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == backend.get_vocab_size() == 400
    samples = [*CODE_SAMPLES, _read("tabnanny.py")]
    for text in samples:
        expected = backend.encode(text, add_special_tokens=False).ids
        assert tok.encode(text) == expected
        assert tok.decode(expected) == backend.decode(expected) == text  # byte-level: lossless
    assert tok.encode_batch(samples) == [tok.encode(t) for t in samples]


def test_tokenizer_json_special_ids(hf_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(hf_dir / HF_TOKENIZER_FILENAME)  # the file: its directory's specials
    assert tok.bos_id == tok._backend.token_to_id(BOS) == 0
    assert tok.eos_id == tok._backend.token_to_id(EOS) == 1
    assert tok.unk_id == -1 and tok.pad_id == -1  # byte-level BPE has neither
    assert tok.add_bos  # the post-processor prepends BOS
    assert tok.decode([tok.bos_id, *tok.encode("x = 1"), tok.eos_id]) == "x = 1"
    # config.json ids (an EOS list: its first), tokenizer_config.json's add_bos_token.
    other = tmp_path / "other"
    other.mkdir()
    (other / HF_TOKENIZER_FILENAME).write_bytes((hf_dir / HF_TOKENIZER_FILENAME).read_bytes())
    (other / "config.json").write_text('{"bos_token_id": 1, "eos_token_id": [0, 1]}')
    (other / "tokenizer_config.json").write_text('{"add_bos_token": false}')
    moved = load_tokenizer(other)
    assert (moved.bos_id, moved.eos_id, moved.add_bos) == (1, 0, False)
    assert moved.fingerprint != tok.fingerprint  # the special ids are part of it
    assert load_tokenizer(hf_dir).fingerprint == tok.fingerprint


def test_tokenizer_json_is_preferred_and_errors_are_clear(
    hf_dir: Path, trained: Tokenizer, tmp_path: Path
) -> None:
    both = tmp_path / "both"
    both.mkdir()
    (both / MODEL_FILENAME).write_bytes(trained.path.read_bytes())
    assert isinstance(load_tokenizer(both), SentencePieceTokenizer)
    (both / HF_TOKENIZER_FILENAME).write_bytes((hf_dir / HF_TOKENIZER_FILENAME).read_bytes())
    assert isinstance(load_tokenizer(both), HFTokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither tokenizer\.json nor tokenizer\.model"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_tokenizer(tmp_path / "bad.json")
    (both / "tokenizer_config.json").write_text('{"eos_token": "<|no_such_token|>"}')
    with pytest.raises(
        ValueError, match=re.escape("eos token '<|no_such_token|>' is not in the vocab")
    ):
        load_tokenizer(both)


def test_bos_prefix_follows_add_bos_and_needs_a_bos_token() -> None:
    @dataclasses.dataclass
    class Special:  # the two attributes the rule reads
        bos_id: int
        add_bos: bool

    with_bos = Special(bos_id=1, add_bos=True)
    assert bos_prefix(with_bos) == [1]  # type: ignore[arg-type]  # the tokenizer's convention
    assert bos_prefix(with_bos, add_bos=False) == []  # type: ignore[arg-type]
    assert bos_prefix(Special(bos_id=1, add_bos=False)) == []  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no BOS token"):
        bos_prefix(Special(bos_id=-1, add_bos=False), add_bos=True)  # type: ignore[arg-type]
