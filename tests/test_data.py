"""Tests for pass_jax.data: sources, splits, packing, shuffling, sharding, resume, prompts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from pass_jax.data.batches import (
    BatchIterator,
    build_dataset,
    concat_rows,
    iterate_tokens,
    make_iterator,
    spread_batches,
)
from pass_jax.data.config import DEFAULT_SPLIT_FRACTIONS, SPLITS, DataConfig
from pass_jax.data.prompts import config_prompts, sample_prompts
from pass_jax.data.sources import (
    JsonlSource,
    TextFileSource,
    TfdsSource,
    make_source,
    split_for_key,
    stdlib_source,
)
from pass_jax.data.tokens import load_token_stream, tokenize_documents
from pass_jax.tokenizer import Tokenizer, train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_FILES = [
    "shlex.py",
    "fnmatch.py",
    "textwrap.py",
    "tabnanny.py",
    "bisect.py",
    "colorsys.py",
    "keyword.py",
    "stat.py",
    "glob.py",
    "copy.py",
    "heapq.py",
    "queue.py",
]
SEQ_LEN = 64


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = [(STDLIB / n).read_text(encoding="utf-8") for n in ("os.py", "argparse.py")]
    return train_tokenizer(
        texts, vocab_size=800, output_path=tmp_path_factory.mktemp("tok") / "t.model"
    )


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small text_dir corpus: stdlib modules (trimmed) in nested dirs, plus noise files."""
    root = tmp_path_factory.mktemp("corpus")
    for i, name in enumerate(CORPUS_FILES):
        sub = root / ("pkg" if i % 2 else "") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        text = (STDLIB / name).read_text(encoding="utf-8")[:6000]
        (sub / f"{Path(name).stem}.txt").write_text(text, encoding="utf-8")
    (root / "not_utf8.txt").write_bytes(b"caf\xe9 latin-1\n")
    (root / "ignored.md").write_text("not matched by the pattern\n")
    return root


def _expected_stream(tok: Tokenizer, docs: list[str], add_bos: bool = False) -> np.ndarray:
    out: list[int] = []
    for d in docs:
        out += ([tok.bos_id] if add_bos else []) + tok.encode(d) + [tok.eos_id]
    return np.asarray(out, np.int32)


def _text_config(corpus_dir: Path, **kw: object) -> DataConfig:
    base = dict(
        source="text_dir",
        path=str(corpus_dir),
        split="all",
        seq_len=SEQ_LEN,
        batch_size=4,
        shard_index=0,
        shard_count=1,
    )
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- splits


def test_split_for_key_is_the_sha1_rule() -> None:
    fractions = (0.90, 0.05, 0.05)
    for key in ["os.py", "json/decoder.py", "test/test_os.py", "ünïcode/ключ.py"]:
        u = int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 16**16
        expected = "train" if u < 0.90 else "validation" if u < 0.95 else "test"
        assert split_for_key(key, fractions) == expected
        assert split_for_key(key, fractions) == split_for_key(key, fractions)
    assert split_for_key("anything", (1.0, 0.0, 0.0)) == "train"
    assert split_for_key("anything", (0.0, 0.0, 1.0)) == "test"
    with pytest.raises(ValueError):
        split_for_key("x", (0.5, 0.5, 0.5))


def test_stdlib_splits_stable_disjoint_covering() -> None:
    splits = {s: stdlib_source(s) for s in SPLITS}
    keys = {s: set(src.keys) for s, src in splits.items()}
    assert all(keys.values())
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    every = set(splits["train"].all_keys)
    skipped = {k for src in splits.values() for k in src.skipped}
    assert keys["train"] | keys["validation"] | keys["test"] | skipped == every
    assert not any(k.startswith(("site-packages/", "dist-packages/")) for k in every)
    assert all(k.endswith(".py") and "__pycache__" not in k for k in every)
    n = len(every) - len(skipped)
    assert 0.85 < len(keys["train"]) / n < 0.95
    for s in ("validation", "test"):
        assert 0.02 < len(keys[s]) / n < 0.08
    # Stable: recomputing gives the same assignment and fingerprint, and each file lands in
    # the split given by the sha1 of its stdlib-relative path.
    again = stdlib_source("validation")
    assert again.keys == splits["validation"].keys
    assert again.fingerprint == splits["validation"].fingerprint
    for key in ["os.py", "json/decoder.py", "asyncio/tasks.py"]:
        want = split_for_key(key, DEFAULT_SPLIT_FRACTIONS)
        assert key in keys[want]
    # Documents are the file contents.
    src = splits["validation"]
    assert src[0] == (STDLIB / src.keys[0]).read_text(encoding="utf-8")


def test_stdlib_skips_undecodable_files(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_bytes(b"s = '\xff\xfe'\n")
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "third_party.py").write_text("y = 2\n")
    src = stdlib_source("all", root=tmp_path)
    assert src.keys == ["good.py"] and src.skipped == ["bad.py"]
    assert list(src) == ["x = 1\n"]


# ------------------------------------------------------------------------------------ sources


def test_text_dir_source(corpus_dir: Path) -> None:
    src = TextFileSource(corpus_dir, pattern="*.txt")
    assert len(src) == len(CORPUS_FILES)
    assert src.skipped == ["not_utf8.txt"]
    assert src.keys == sorted(src.keys) and any("/" in k for k in src.keys)
    assert all(k.endswith(".txt") for k in src.keys)
    for i, key in enumerate(src.keys):
        assert src[i] == (corpus_dir / key).read_text(encoding="utf-8")
    with pytest.raises(IndexError):
        src[len(src)]
    only_deep = TextFileSource(corpus_dir, pattern="deep/*.txt")
    assert only_deep.keys and all(k.startswith("deep/") for k in only_deep.keys)
    # Hash splits of a directory partition it (an empty split is an error).
    fractions = (0.5, 0.25, 0.25)
    union: list[str] = []
    for split in SPLITS:
        want = [k for k in src.keys if split_for_key(k, fractions) == split]
        if want:
            part = TextFileSource(corpus_dir, split=split, split_fractions=fractions)
            assert part.keys == want
            union += part.keys
        else:
            with pytest.raises(ValueError, match="no documents"):
                TextFileSource(corpus_dir, split=split, split_fractions=fractions)
    assert sorted(union) == src.keys


def test_jsonl_source(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    texts = [f"def f{i}():\n    return {i}\n" for i in range(40)]
    lines = [json.dumps({"content": t, "id": i}) for i, t in enumerate(texts)]
    path.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n")
    src = JsonlSource(path, text_field="content")
    assert list(src) == texts
    split_docs = {
        s: list(JsonlSource(path, text_field="content", split=s, split_fractions=(0.6, 0.2, 0.2)))
        for s in SPLITS
    }
    assert sorted(t for docs in split_docs.values() for t in docs) == sorted(texts)
    for s, docs in split_docs.items():
        assert all(split_for_key(t, (0.6, 0.2, 0.2)) == s for t in docs)
    with pytest.raises(ValueError, match="'text'"):
        JsonlSource(path)  # default field missing
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        JsonlSource(tmp_path / "broken.jsonl")


def test_missing_corpora_fail_early(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        make_source(DataConfig(source="text_dir", path=str(tmp_path / "no_such_dir")))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        make_source(DataConfig(source="jsonl", path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="no files matching"):
        TextFileSource(tmp_path, pattern="*.nothing")
    with pytest.raises(FileNotFoundError, match="no_tfds_dir"):
        make_source(DataConfig(source="tfds", path=str(tmp_path / "no_tfds_dir")))
    with pytest.raises(ValueError, match="not a prepared TFDS dataset"):
        make_source(DataConfig(source="tfds", path=str(tmp_path)))
    with pytest.raises(ValueError, match="definitely_not_a_dataset_xyz"):
        make_source(
            DataConfig(
                source="tfds", tfds_name="definitely_not_a_dataset_xyz", tfds_data_dir=str(tmp_path)
            )
        )
    with pytest.raises(ValueError, match="needs"):
        make_source(DataConfig(source="jsonl"))
    with pytest.raises(ValueError):
        DataConfig(source="hdfs")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DataConfig(shard_index=2, shard_count=2)


# -------------------------------------------------------------------------------------- TFDS

TFDS_DOCS = {
    "train": [f"def train_{i}(x):\n\treturn x * {i}  # ü\n\n" for i in range(24)],
    "test": ["print('held out')\n", "class T:\n    pass\n"],
}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepares a tiny array_record TFDS dataset locally (no network)."""
    import tensorflow_datasets as tfds

    class PassJaxTinyCode(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self) -> tfds.core.DatasetInfo:
            features = tfds.features.FeaturesDict({"code": tfds.features.Text(), "idx": np.int32})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(docs) for s, docs in TFDS_DOCS.items()}

        def _generate_examples(self, docs):
            for i, d in enumerate(docs):
                yield i, {"code": d, "idx": i}

    data_dir = tmp_path_factory.mktemp("tfds")
    builder = PassJaxTinyCode(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return data_dir


def test_tfds_sources(tfds_dir: Path, tok: Tokenizer) -> None:
    ds_dir = tfds_dir / "pass_jax_tiny_code" / "1.0.0"
    assert any(p.name.endswith(".array_record-00000-of-00001") for p in ds_dir.iterdir())
    by_dir = TfdsSource(directory=ds_dir, split="train", text_key="code")
    by_name = TfdsSource(
        name="pass_jax_tiny_code", data_dir=tfds_dir, split="train", text_key="code"
    )
    assert sorted(by_dir) == sorted(TFDS_DOCS["train"])
    assert list(by_name) == list(by_dir)
    assert sorted(TfdsSource(directory=ds_dir, split="test", text_key="code")) == sorted(
        TFDS_DOCS["test"]
    )
    with pytest.raises(ValueError, match="features"):
        TfdsSource(directory=ds_dir, split="train", text_key="text")
    with pytest.raises(ValueError, match="validation"):
        TfdsSource(directory=ds_dir, split="validation", text_key="code")

    # The same pipeline reads it: unshuffled, packed in source order.
    cfg = DataConfig(
        source="tfds",
        path=str(ds_dir),
        split="train",
        text_key="code",
        seq_len=16,
        batch_size=2,
        shuffle=False,
        num_epochs=1,
        shard_index=0,
        shard_count=1,
    )
    batches = list(make_iterator(cfg, tok))
    expected = _expected_stream(tok, list(by_dir))
    got = np.concatenate([b.reshape(-1) for b in batches])
    n_batches = expected.size // 16 // 2
    assert len(batches) == n_batches > 0
    np.testing.assert_array_equal(got, expected[: n_batches * 2 * 16])


# ------------------------------------------------------------------------- packing & batches


def test_tokenize_documents_appends_eos(tok: Tokenizer) -> None:
    docs = ["a = 1\n", "", "  b\n\n"]
    stream = tokenize_documents(docs, tok)
    assert stream.dtype == np.int32
    np.testing.assert_array_equal(stream, _expected_stream(tok, docs))
    with_bos = tokenize_documents(docs, tok, add_bos=True, max_documents=2)
    np.testing.assert_array_equal(with_bos, _expected_stream(tok, docs[:2], add_bos=True))


def test_packing_unshuffled_is_the_document_stream(corpus_dir: Path, tok: Tokenizer) -> None:
    cfg = _text_config(corpus_dir, shuffle=False, num_epochs=1)
    src = make_source(cfg)
    expected = _expected_stream(tok, list(src))
    batches = list(make_iterator(cfg, tok, src))
    n_seq = expected.size // SEQ_LEN
    assert len(batches) == n_seq // 4
    for b in batches:
        assert b.shape == (4, SEQ_LEN) and b.dtype == np.int32
    got = np.concatenate([b.reshape(-1) for b in batches])
    np.testing.assert_array_equal(got, expected[: got.size])
    # Decoding the packed stream gives the documents back, EOS-separated, in order.
    first_doc_len = len(tok.encode(src[0]))
    assert tok.decode(got[:first_doc_len]) == src[0]
    assert got[first_doc_len] == tok.eos_id


def _take(it: BatchIterator, n: int) -> list[np.ndarray]:
    return [next(it) for _ in range(n)]


def test_shuffle_deterministic_per_seed(corpus_dir: Path, tok: Tokenizer) -> None:
    src = make_source(_text_config(corpus_dir))
    stream = _expected_stream(tok, list(src))
    n_seq = stream.size // SEQ_LEN
    windows = {tuple(stream[i * SEQ_LEN : (i + 1) * SEQ_LEN]) for i in range(n_seq)}
    n = 2 * (n_seq // 4)  # about two epochs of batches

    a = _take(make_iterator(_text_config(corpus_dir, seed=1), tok, src), n)
    b = _take(make_iterator(_text_config(corpus_dir, seed=1), tok, src), n)
    c = _take(make_iterator(_text_config(corpus_dir, seed=2), tok, src), n)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    for batch in a:
        assert batch.shape == (4, SEQ_LEN) and batch.dtype == np.int32
        # Every row is a full, aligned window of the in-order document stream.
        assert all(tuple(r) in windows for r in batch)


def test_shuffle_is_a_fresh_permutation_each_epoch() -> None:
    n_seq, seq_len = 32, 8
    tokens = np.arange(n_seq * seq_len + 5, dtype=np.int32)  # 5 tail tokens are dropped
    ds = build_dataset(tokens, seq_len=seq_len, batch_size=4, seed=0, shard_index=0, shard_count=1)
    rows = np.concatenate([ds[i] for i in range(3 * n_seq // 4)])  # 3 epochs, [3 * n_seq, T]
    assert rows.dtype == np.int32
    starts = rows[:, 0]
    np.testing.assert_array_equal(
        rows - starts[:, None], np.arange(seq_len)[None].repeat(len(rows), 0)
    )
    assert (starts % seq_len == 0).all() and starts.max() < n_seq * seq_len
    epochs = starts.reshape(3, n_seq) // seq_len
    for e in epochs:
        assert sorted(e) == list(range(n_seq))  # a permutation of all sequences
    assert list(epochs[0]) != list(range(n_seq))  # shuffled
    assert list(epochs[0]) != list(epochs[1]) != list(epochs[2])  # reshuffled per epoch
    unshuffled = build_dataset(
        tokens, seq_len=seq_len, batch_size=4, shuffle=False, shard_index=0, shard_count=1
    )
    np.testing.assert_array_equal(unshuffled[1], tokens[4 * seq_len : 8 * seq_len].reshape(4, -1))


def test_sharding_partitions_sequences(corpus_dir: Path, tok: Tokenizer) -> None:
    src = make_source(_text_config(corpus_dir))
    stream = _expected_stream(tok, list(src))
    seen = []
    for shard in range(3):
        cfg = _text_config(corpus_dir, batch_size=2, num_epochs=1, shard_index=shard, shard_count=3)
        seen.append([tuple(r) for b in make_iterator(cfg, tok, src) for r in b])
    assert len({len(s) for s in seen}) == 1  # equal batch counts on every host
    flat = [r for s in seen for r in s]
    assert len(set(flat)) == len(flat)  # disjoint
    per_shard = (stream.size // SEQ_LEN) // 3
    assert len(flat) == 3 * (per_shard // 2 * 2)


def test_default_shard_uses_jax_process(corpus_dir: Path, tok: Tokenizer) -> None:
    cfg = DataConfig(source="text_dir", path=str(corpus_dir), split="all", seq_len=SEQ_LEN)
    explicit = _text_config(corpus_dir, batch_size=8)
    x = next(make_iterator(cfg, tok))
    y = next(make_iterator(explicit, tok))
    np.testing.assert_array_equal(x, y)


def test_resume_mid_stream(corpus_dir: Path, tok: Tokenizer) -> None:
    cfg = _text_config(corpus_dir, seed=7)
    src = make_source(cfg)
    it = make_iterator(cfg, tok, src)
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    assert state["step"] == 5
    reference = _take(it, 20)  # crosses an epoch boundary

    fresh = make_iterator(cfg, tok, src)
    first = next(fresh)
    fresh.set_state(state)
    resumed = _take(fresh, 20)
    assert all(np.array_equal(x, y) for x, y in zip(reference, resumed, strict=True))
    assert not np.array_equal(first, resumed[0])

    other = make_iterator(_text_config(corpus_dir, seed=8), tok, src)
    with pytest.raises(ValueError, match="different data stream"):
        other.set_state(state)
    with pytest.raises(ValueError):
        fresh.set_state({"step": -1})


def test_concat_rows_stacks_the_parts_and_resumes_them_together() -> None:
    stream = np.arange(400, dtype=np.int32)
    config = DataConfig(seq_len=8, batch_size=2, shard_index=0, shard_count=1)
    one = dataclasses.replace(config, batch_size=1, seed=1)

    def parts() -> list[BatchIterator]:
        return [iterate_tokens(stream, "a", config), iterate_tokens(-stream, "b", one)]

    mixed = concat_rows(parts())
    expected = [_take(part, 4) for part in parts()]
    for i, batch in enumerate(_take(mixed, 4)):
        np.testing.assert_array_equal(batch, np.concatenate([expected[0][i], expected[1][i]]))
    resumed = concat_rows(parts())
    resumed.set_state(json.loads(json.dumps(mixed.get_state())))
    np.testing.assert_array_equal(next(resumed), next(mixed))
    other = concat_rows(parts()[::-1])
    with pytest.raises(ValueError, match="different data stream"):
        other.set_state(mixed.get_state())
    started = parts()
    next(started[0])
    with pytest.raises(ValueError, match="each at step 0"):
        concat_rows(started)


def test_token_cache(corpus_dir: Path, tok: Tokenizer, tmp_path: Path) -> None:
    cfg = _text_config(corpus_dir, cache_dir=str(tmp_path / "cache"))
    tokens, key = load_token_stream(cfg, tok)
    files = list((tmp_path / "cache").glob("tokens-*.npy"))
    assert len(files) == 1 and key[:24] in files[0].name
    cached, key2 = load_token_stream(cfg, tok)
    assert key2 == key and isinstance(cached, np.memmap)
    np.testing.assert_array_equal(cached, tokens)
    _, key3 = load_token_stream(_text_config(corpus_dir, add_bos=True), tok)
    assert key3 != key
    it_cached = make_iterator(cfg, tok)
    it_plain = make_iterator(_text_config(corpus_dir), tok)
    np.testing.assert_array_equal(next(it_cached), next(it_plain))


def test_too_small_corpus_is_an_error(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="fewer than batch_size"):
        build_dataset(
            np.arange(100, dtype=np.int32), seq_len=50, batch_size=4, shard_index=0, shard_count=1
        )


def test_spread_batches_sample_the_whole_stream_the_same_for_any_batching() -> None:
    tokens = np.arange(1000, dtype=np.int32)  # 100 windows of 10: window i starts at 10 i
    spread = spread_batches(
        tokens, seq_len=10, num_sequences=12, batch_size=4, shard_index=0, shard_count=1
    )
    assert [b.shape for b in spread] == [(4, 10)] * 3 and spread[0].dtype == np.int32
    starts = np.concatenate(spread)[:, 0] // 10
    assert starts[0] == 0 and starts[-1] == 99  # the first and the last window
    assert np.all(np.diff(starts) >= 8) and np.all(np.diff(starts) <= 10)  # evenly spread
    one_batch = spread_batches(
        tokens, seq_len=10, num_sequences=12, batch_size=12, shard_index=0, shard_count=1
    )
    np.testing.assert_array_equal(np.concatenate(one_batch), np.concatenate(spread))
    shards = [
        np.concatenate(
            spread_batches(
                tokens, seq_len=10, num_sequences=12, batch_size=2, shard_index=i, shard_count=3
            )
        )
        for i in range(3)
    ]
    assert sorted(np.concatenate(shards)[:, 0].tolist()) == sorted((starts * 10).tolist())


def test_spread_batches_errors() -> None:
    tokens = np.arange(100, dtype=np.int32)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        spread_batches(tokens, seq_len=10, num_sequences=6, batch_size=4, shard_count=1,
                            shard_index=0)  # fmt: skip
    with pytest.raises(ValueError, match="fewer than the 12"):
        spread_batches(tokens, seq_len=10, num_sequences=12, batch_size=4, shard_count=1,
                            shard_index=0)  # fmt: skip


# ------------------------------------------------------------------------------------ prompts


def test_sample_prompts(corpus_dir: Path, tok: Tokenizer) -> None:
    src = TextFileSource(corpus_dir)
    prompts = sample_prompts(src, tok, num_prompts=5, prompt_len=32, seed=3, add_bos=False)
    assert prompts.shape == (5, 32) and prompts.dtype == np.int32
    firsts = {tuple(tok.encode(d)[:32]) for d in src}
    assert all(tuple(p) in firsts for p in prompts)
    assert len({tuple(p) for p in prompts}) == 5
    again = sample_prompts(src, tok, num_prompts=5, prompt_len=32, seed=3, add_bos=False)
    np.testing.assert_array_equal(prompts, again)
    ordered = sample_prompts(src, tok, num_prompts=2, prompt_len=8, seed=None, add_bos=True)
    assert ordered.shape == (2, 9) and (ordered[:, 0] == tok.bos_id).all()
    assert list(ordered[0, 1:]) == tok.encode(src[0])[:8]
    with pytest.raises(ValueError, match="prompts requested"):
        sample_prompts(["tiny"], tok, num_prompts=1, prompt_len=32, add_bos=False)


@pytest.mark.parametrize("add_bos", [False, True])
def test_config_prompts_start_like_training_documents(
    corpus_dir: Path, tok: Tokenizer, add_bos: bool
) -> None:
    # Prompts follow DataConfig.add_bos as the training stream does: each prompt is the start
    # of one document's segment of the token stream.
    cfg = _text_config(corpus_dir, add_bos=add_bos, seed=5)
    prompts = config_prompts(cfg, tok, num_prompts=3, prompt_len=6)
    assert prompts.shape == (3, 6 + add_bos)
    assert (prompts[:, 0] == tok.bos_id).all() == add_bos
    starts = {
        tuple(tokenize_documents([d], tok, add_bos=add_bos)[: prompts.shape[1]])
        for d in make_source(cfg)
    }
    assert all(tuple(p) in starts for p in prompts)
