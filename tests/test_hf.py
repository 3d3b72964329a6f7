"""HF LLaMA loading: parity with transformers on tiny random models built here (no download)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from pass_jax.io.hf import (
    HFCheckpoint,
    check_tensors,
    config_from_hf,
    iter_params,
    load_hf_llama,
    param_specs,
)
from pass_jax.io.safetensors import read_raw_tensor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, D_MODEL, HEAD_DIM, D_FF, N_LAYERS = 97, 48, 12, 100, 3
# head_dim 12 at rope_theta 100: wavelengths 6.3, 13.5, 29, 63, 135, 292. With an original
# context of 64 and factors 1 / 4 these fall in all three llama3 bands (high < 16 <= medium
# <= 64 < low), and positions up to ~100 exercise them all.
ROPE_THETA = 100.0
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
LINEAR = {"rope_type": "linear", "factor": 2.5}
ATTENTION = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}  # (heads, kv heads)


def hf_model(
    *,
    attention: str = "gqa",
    tied: bool = False,
    rope: dict | None = None,
    head_dim: int = HEAD_DIM,
    seed: int = 0,
):
    """A tiny random LlamaForCausalLM, with weights (norms included) large enough to matter."""
    n_heads, n_kv = ATTENTION[attention]
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_FF,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": ROPE_THETA, **(rope or {"rope_type": "default"})},
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,  # greedy generate never stops early
        pad_token_id=0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def save(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def hf_logits(model, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(),
            position_ids=torch.from_numpy(positions).long(),
        )
    return out.logits.float().numpy()


def our_logits(model, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.asarray(model(jnp.asarray(tokens), positions=jnp.asarray(positions)))


def inputs(seq_len: int = 48, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two rows: positions 0.. and 50.., so positions reach ~100 (past the original context)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (2, seq_len)).astype(np.int32)
    positions = np.stack([np.arange(seq_len), 50 + np.arange(seq_len)]).astype(np.int32)
    return tokens, positions


# ---------------------------------------------------------------------------------------------
# Logit parity

GRID = [
    # (attention, tied, rope): every attention kind meets every rope kind, tied and untied
    ("mha", False, None),
    ("mha", True, LLAMA3),
    ("mha", False, LINEAR),
    ("gqa", True, None),
    ("gqa", False, LLAMA3),
    ("gqa", True, LINEAR),
    ("mqa", False, LLAMA3),
    ("mqa", True, LINEAR),
    ("mqa", True, None),
]


@pytest.mark.parametrize(
    "attention,tied,rope",
    GRID,
    ids=[f"{a}-{'tied' if t else 'untied'}-{r['rope_type'] if r else 'none'}" for a, t, r in GRID],
)
def test_logits_match_transformers(tmp_path, attention, tied, rope):
    model = hf_model(attention=attention, tied=tied, rope=rope)
    path = save(model, tmp_path)
    tokens, positions = inputs()
    expected = hf_logits(model, tokens, positions)
    assert np.abs(expected).max() > 1.0  # logits far from uniform: the comparison has teeth
    for scan_layers in (False, True):
        ours = load_hf_llama(path, scan_layers=scan_layers)
        assert ours.config.tie_embeddings == tied
        assert (ours.config.n_heads, ours.config.n_kv_heads) == ATTENTION[attention]
        diff = float(np.abs(our_logits(ours, tokens, positions) - expected).max())
        assert diff < 1e-4, f"scan_layers={scan_layers}: max |logit diff| {diff}"


def test_head_dim_not_d_model_over_heads(tmp_path):
    """HF allows head_dim * n_heads != d_model (here 4 x 10 != 48)."""
    model = hf_model(attention="gqa", rope=LLAMA3, head_dim=10)
    ours = load_hf_llama(save(model, tmp_path))
    assert ours.config.head_dim == 10
    tokens, positions = inputs()
    diff = np.abs(our_logits(ours, tokens, positions) - hf_logits(model, tokens, positions))
    assert diff.max() < 1e-4


def test_sharded_checkpoint_loads_identically(tmp_path):
    model = hf_model(rope=LLAMA3)
    single = load_hf_llama(save(model, tmp_path / "single"))
    sharded_dir = save(model, tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    assert len(list(sharded_dir.glob("model-*.safetensors"))) > 2
    for scan_layers in (False, True):
        sharded = load_hf_llama(sharded_dir, scan_layers=scan_layers)
        ref = single if not scan_layers else load_hf_llama(tmp_path / "single", scan_layers=True)
        assert_states_equal(nnx.state(sharded), nnx.state(ref))


def assert_states_equal(a, b) -> None:
    flat_a, flat_b = dict(nnx.to_flat_state(a)), dict(nnx.to_flat_state(b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        va, vb = flat_a[key], flat_b[key]
        va = va.get_value() if isinstance(va, nnx.Variable) else va
        vb = vb.get_value() if isinstance(vb, nnx.Variable) else vb
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=str(key))


def test_layer_layouts_hold_the_same_weights(tmp_path):
    path = save(hf_model(), tmp_path)
    listed = nnx.state(load_hf_llama(path, scan_layers=False))
    stacked = nnx.state(load_hf_llama(path, scan_layers=True))
    for i in range(N_LAYERS):
        for module, name in [
            ("attn", "wq"),
            ("attn", "wo"),
            ("mlp", "w_down"),
            ("mlp_norm", "scale"),
        ]:
            np.testing.assert_array_equal(
                np.asarray(listed["layers"][i][module][name][...]),
                np.asarray(stacked["layers"][module][name][...][i]),
            )


def test_weight_layout_against_hf_tensors(tmp_path):
    """Each of our params equals the HF tensor under the documented layout change."""
    model = hf_model(attention="gqa")
    state = nnx.state(load_hf_llama(save(model, tmp_path)))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    n_heads, n_kv = ATTENTION["gqa"]
    layer = state["layers"][1]
    hf = "model.layers.1."
    q = sd[hf + "self_attn.q_proj.weight"].reshape(n_heads, HEAD_DIM, D_MODEL)
    np.testing.assert_array_equal(layer["attn"]["wq"][...], q.transpose(2, 0, 1))
    k = sd[hf + "self_attn.k_proj.weight"].reshape(n_kv, HEAD_DIM, D_MODEL)
    np.testing.assert_array_equal(layer["attn"]["wk"][...], k.transpose(2, 0, 1))
    o = sd[hf + "self_attn.o_proj.weight"].reshape(D_MODEL, n_heads, HEAD_DIM)
    np.testing.assert_array_equal(layer["attn"]["wo"][...], o.transpose(1, 2, 0))
    np.testing.assert_array_equal(layer["mlp"]["w_gate"][...], sd[hf + "mlp.gate_proj.weight"].T)
    np.testing.assert_array_equal(layer["mlp"]["w_down"][...], sd[hf + "mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(
        layer["attn_norm"]["scale"][...], sd[hf + "input_layernorm.weight"]
    )
    np.testing.assert_array_equal(state["lm_head"][...], sd["lm_head.weight"].T)
    np.testing.assert_array_equal(state["embed"][...], sd["model.embed_tokens.weight"])


def test_lookahead_table_starts_at_unk_embedding(tmp_path):
    path = save(hf_model(), tmp_path)
    model = load_hf_llama(path, max_lookahead=5)
    embed = np.asarray(model.embed[...])
    assert model.config.unk_id == 0
    np.testing.assert_array_equal(np.asarray(model.lookahead[...]), np.tile(embed[0], (5, 1)))
    model = load_hf_llama(path, max_lookahead=3, unk_id=7)
    np.testing.assert_array_equal(np.asarray(model.lookahead[...]), np.tile(embed[7], (3, 1)))
    config = json.loads((path / "config.json").read_text())
    assert config_from_hf({**config, "unk_token_id": 11}).unk_id == 11
    assert not hasattr(load_hf_llama(path, max_lookahead=0), "lookahead")


# ---------------------------------------------------------------------------------------------
# bfloat16


def test_bf16_checkpoint_loads_exact_values(tmp_path):
    model = hf_model(rope=LINEAR).to(torch.bfloat16)
    path = save(model, tmp_path)
    with safe_open(path / "model.safetensors", framework="numpy") as f:
        name = "model.layers.2.mlp.up_proj.weight"
        assert f.get_slice(name).get_dtype() == "BF16"
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    expected_up = sd["model.layers.2.mlp.up_proj.weight"].T
    for param_dtype in ("float32", "bfloat16"):
        ours = load_hf_llama(path, param_dtype=param_dtype, scan_layers=True)
        up = ours.layers.mlp.w_up[...][2]
        assert up.dtype == jnp.dtype(param_dtype)
        np.testing.assert_array_equal(np.asarray(up, np.float32), expected_up)
        np.testing.assert_array_equal(
            np.asarray(ours.embed[...], np.float32), sd["model.embed_tokens.weight"]
        )
    # The bf16 weights upcast to float32 compute the same logits as HF in float32 (HF reloaded:
    # `model.float()` would keep the rotary frequencies rounded to bf16).
    reloaded = transformers.LlamaForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    tokens, positions = inputs()
    expected = hf_logits(reloaded.eval(), tokens, positions)
    assert np.abs(our_logits(load_hf_llama(path), tokens, positions) - expected).max() < 1e-4


def test_raw_reader_matches_safetensors_and_is_the_fallback(tmp_path, monkeypatch):
    """The byte-level reader (used when safetensors cannot give numpy a dtype) is exact."""
    model = hf_model().to(torch.bfloat16)
    path = save(model, tmp_path)
    file = path / "model.safetensors"
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    with safe_open(file, framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118
            raw = read_raw_tensor(file, name)
            assert raw.dtype == ml_dtypes.bfloat16
            np.testing.assert_array_equal(raw.astype(np.float32), sd[name])
    reference = nnx.state(load_hf_llama(path))

    class OldSafeOpen:  # safetensors versions whose numpy framework rejects bf16
        def __init__(self, *args, **kwargs):
            pass

        def get_tensor(self, name):
            raise TypeError("data type 'bfloat16' not understood")

    monkeypatch.setattr("safetensors.safe_open", OldSafeOpen)
    assert_states_equal(nnx.state(load_hf_llama(path)), reference)


def test_streaming_iterator_yields_our_layout(tmp_path):
    path = save(hf_model(tied=True), tmp_path)
    checkpoint = HFCheckpoint(path)
    config = config_from_hf(checkpoint.hf_config)
    specs = check_tensors(checkpoint, config)
    assert specs == param_specs(config)
    seen = []
    for spec, array in iter_params(checkpoint, specs, np.float32):
        assert array.shape == spec.shape and array.flags.c_contiguous
        seen.append(spec.hf_name)
    assert len(seen) == len(set(seen)) == 2 + N_LAYERS * 9  # embed, final norm; no lm_head


# ---------------------------------------------------------------------------------------------
# Greedy generation


@pytest.mark.parametrize("method", ["ar", "pass"])
def test_greedy_generation_matches_transformers(tmp_path, method):
    decode = pytest.importorskip("pass_jax.decode.generation")
    model = hf_model(attention="gqa", rope=LLAMA3, seed=3)
    ours = load_hf_llama(save(model, tmp_path), max_lookahead=4)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in (3, 9, 17)]
    max_new = 24
    result = decode.generate(ours, prompts, max_new_tokens=max_new, method=method, temperature=0.0)
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=0,
            )
        expected = out[0, len(prompt) :].tolist()
        assert len(expected) == max_new
        assert result.tokens[row] == expected, f"row {row} (prompt length {len(prompt)})"


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return save(hf_model(tied=False), tmp_path_factory.mktemp("base"))


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    with safe_open(file, framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "MistralForCausalLM"),
        ({"architectures": None, "model_type": "gpt2"}, "model_type 'gpt2'"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"mlp_bias": True}, "mlp_bias=True"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
        ({"rope_parameters": None, "rope_scaling": {"type": "dynamic"}}, "rope_type='dynamic'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "missing 'low_freq_factor'"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
        ({"num_key_value_heads": 3}, "num_key_value_heads=3 does not divide"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
        ({"head_dim": None, "hidden_size": 50}, "hidden_size=50 is not a multiple"),
        ({"vocab_size": None}, "'vocab_size'"),
    ],
)
def test_unsupported_config_is_rejected(tmp_path, checkpoint_dir, changes, match):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    edit_config(path, **changes)
    with pytest.raises(ValueError, match=match):
        load_hf_llama(path)


def test_old_style_rope_scaling_config():
    """transformers < 5 wrote `rope_scaling` (with `type`) and a top-level `rope_theta`."""
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 4}
    base |= {"num_hidden_layers": 1, "num_attention_heads": 2}
    new = config_from_hf({**base, "rope_parameters": {"rope_theta": 5e5, **LLAMA3}})
    old_scaling = {k: v for k, v in LLAMA3.items() if k != "rope_type"} | {"type": "llama3"}
    old = config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": old_scaling})
    assert old == new
    assert new.rope_theta == 5e5 and new.rope_scaling.original_max_position_embeddings == 64
    plain = config_from_hf({**base, "rope_theta": 3.0, "rope_scaling": None})
    assert plain.rope_theta == 3.0 and plain.rope_scaling is None
    assert plain.n_kv_heads == 2 and plain.head_dim == 4 and not plain.tie_embeddings
    # pretraining_tp only sliced matmuls (same math); transformers 5 no longer reads it.
    assert config_from_hf({**base, "pretraining_tp": 2}) == config_from_hf(base)


def test_missing_config(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_hf_llama(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_llama(tmp_path / "nowhere")


def test_corrupt_config_json(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    (path / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        load_hf_llama(path)


def test_missing_weights(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights .*model\.safetensors"):
        load_hf_llama(path)
    (path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        load_hf_llama(path)


def test_corrupt_safetensors(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_hf_llama(path)
    data = (checkpoint_dir / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="past the end of the file"):
        load_hf_llama(path)


def test_missing_tensor(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    rewrite_weights(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_llama(path)


def test_missing_lm_head_when_untied(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    rewrite_weights(path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"missing tensor lm_head\.weight"):
        load_hf_llama(path)


def test_wrong_shaped_tensor(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")
    name = "model.layers.0.self_attn.k_proj.weight"

    def edit(tensors):
        tensors[name] = np.zeros((12, D_MODEL), np.float32)

    rewrite_weights(path, edit)
    n_kv = ATTENTION["gqa"][1]
    expected = rf"{name} has shape \[12, {D_MODEL}\], expected \[{n_kv * HEAD_DIM}, {D_MODEL}\]"
    with pytest.raises(ValueError, match=expected):
        load_hf_llama(path)


def test_unexpected_tensor(tmp_path, checkpoint_dir):
    path = copy_checkpoint(checkpoint_dir, tmp_path / "ckpt")

    def edit(tensors):
        tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros((48,), np.float32)
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones((6,), np.float32)

    rewrite_weights(path, edit)
    with pytest.raises(ValueError, match=r"unexpected tensor model\.layers\.0\.self_attn\.q_proj"):
        load_hf_llama(path)
    rewrite_weights(path, lambda t: t.pop("model.layers.0.self_attn.q_proj.bias"))
    load_hf_llama(path)  # old rotary buffers are ignored


def test_tied_checkpoint_with_redundant_lm_head(tmp_path):
    """Some tied checkpoints also store lm_head.weight: tolerated (unused) if its shape fits."""
    model = hf_model(tied=True)
    path = save(model, tmp_path / "ckpt")
    reference = nnx.state(load_hf_llama(path))

    def add_head(tensors):
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()

    rewrite_weights(path, add_head)
    assert_states_equal(nnx.state(load_hf_llama(path)), reference)

    def bad_head(tensors):
        tensors["lm_head.weight"] = np.zeros((VOCAB, 8), np.float32)

    rewrite_weights(path, bad_head)
    with pytest.raises(ValueError, match=r"lm_head\.weight has shape \[97, 8\]"):
        load_hf_llama(path)


def test_sharded_checkpoint_errors(tmp_path):
    model = hf_model()
    path = save(model, tmp_path / "ckpt", max_shard_size="40KB")
    shards = sorted(path.glob("model-*.safetensors"))
    load_hf_llama(path)
    index = path / "model.safetensors.index.json"
    text = index.read_text()
    index.write_text(text[:-10])
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json is not valid JSON"):
        load_hf_llama(path)
    index.write_text(text)
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=f"shard {shards[1].name} .* is missing"):
        load_hf_llama(path)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_an_hf_directory_tokenizer_loads(tmp_path):
    tokenizer_module = pytest.importorskip("pass_jax.tokenizer")
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        tokenizer_module.load_tokenizer(tmp_path)
    texts = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(200)]
    trained = tokenizer_module.train_tokenizer(
        texts, vocab_size=300, output_path=tmp_path / "tokenizer.model"
    )
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": true}')  # LLaMA-2's
    loaded = tokenizer_module.load_tokenizer(tmp_path)
    assert isinstance(loaded, tokenizer_module.SentencePieceTokenizer) and loaded.add_bos
    assert loaded.encode("return x * 3") == trained.encode("return x * 3")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden_size": "abc"}, r"'hidden_size' is 'abc': expected an integer"),
        ({"num_hidden_layers": 2.5}, r"'num_hidden_layers' is 2.5: expected an integer"),
        ({"num_key_value_heads": True}, r"'num_key_value_heads' is True: expected an integer"),
        ({"rms_norm_eps": "1e-5"}, r"'rms_norm_eps' is '1e-5': expected a number"),
        ({"tie_word_embeddings": "false"}, r"'tie_word_embeddings' is 'false': expected a boolean"),
        ({"rope_parameters": {**LLAMA3, "factor": "8"}}, r"'rope_parameters.factor' is '8'"),
    ],
)
def test_a_config_value_of_the_wrong_type_names_the_field(changes, match):
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 4}
    base |= {"num_hidden_layers": 1, "num_attention_heads": 2}
    assert config_from_hf({**base, "hidden_size": 8.0}).d_model == 8  # integer-valued: fine
    with pytest.raises(ValueError, match=match):
        config_from_hf(base | changes)
