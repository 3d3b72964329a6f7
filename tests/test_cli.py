"""The train.py and decode.py scripts, end to end in subprocesses, and config errors."""

import dataclasses
import json
import runpy
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model, tiny_run_flags
from hf_files import write_bpe_tokenizer, write_tiny_llama

from pass_jax.cli import commands
from pass_jax.cli import flags as cli_flags
from pass_jax.config import ModelConfig
from pass_jax.data.config import DataConfig
from pass_jax.experiment import (
    STAGES,
    DecodeConfig,
    EvalConfig,
    ExperimentConfig,
    MeshConfig,
    StageConfig,
    TokenizerConfig,
    TrainConfig,
    default_config,
)
from pass_jax.io.checkpoint import CheckpointStore, split_params
from pass_jax.io.workdir import load_model, stage_head

ROOT = Path(__file__).resolve().parents[1]


def _run(entry: list[str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, *entry, "--config", str(ROOT / "configs/tiny.py"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return _run([str(ROOT / name)], *args)


def _overrides() -> list[str]:
    return tiny_run_flags()


def test_bench_trains_then_measures_in_one_command(tmp_path):
    """`--train` runs the config's stages first, then the quick protocol on their checkpoints."""
    result = _run(
        ["-m", "pass_jax.bench"],
        f"--workdir={tmp_path}",
        "--train",
        "--quick",
        "--temperatures=0",
        "--stages=lookahead",
        "--config.stages=base,lookahead",
        *_overrides(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if r["event"] == "eval"] == ["base", "lookahead"]
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    (model,) = results["models"].values()
    assert {r["method"] for r in model["records"]} == {"ar", "pass_unk", "pass"}
    assert all(r["tau"] >= 1.0 for r in model["records"])


def test_a_corpus_too_small_for_the_held_out_set_names_the_fix(tmp_path):
    result = _script(
        "train.py", f"--workdir={tmp_path}", *_overrides(), "--config.eval.loss_sequences=4000000"
    )
    assert result.returncode != 0
    assert "held-out split 'validation' of the stdlib corpus" in result.stderr
    assert "lower config.eval.loss_sequences or point config.data at a larger" in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_load_model_loops_scanned_layers_and_takes_a_compute_dtype(tmp_path):
    trained = tiny_model(3, scan_layers=True, remat=True, matmul_dtype="bfloat16")
    store = CheckpointStore(tmp_path, async_save=False)
    store.save(7, split_params(trained), {"step": 7, "model": trained.config.to_dict()})
    store.close()
    tokens = jnp.asarray([[3, 1, 4, 1, 5]])
    loaded = load_model(tmp_path)
    assert not loaded.config.scan_layers and loaded.config.dtype == "float32"
    assert loaded.config.matmul_dtype == "bfloat16"
    np.testing.assert_allclose(loaded(tokens), trained(tokens), atol=1e-6)
    for dtype in ("bfloat16", "float32"):  # the compute dtype, and the matmuls' operands too
        other = load_model(tmp_path, dtype=dtype)
        assert other.config.dtype == dtype and other.config.matmul_dtype is None
        assert other.config.param_dtype == "float32"
        difference = np.abs(np.asarray(other(tokens)) - np.asarray(trained(tokens))).max()
        assert 1e-6 < difference < 0.05  # computed otherwise, from the same weights


def test_unknown_config_override_is_a_clear_error(tmp_path):
    result = _script("train.py", f"--workdir={tmp_path}", "--config.foo=1")
    assert result.returncode != 0
    assert "unknown config key 'foo' in --config.foo=1" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ("data", "sequence_len", r"unknown key\(s\) in config.data: \['sequence_len'\]"),
        ("model", "d_modle", r"unknown ModelConfig key\(s\) \['d_modle'\]"),
        ("joint", "lookahead_wieght", r"unknown key\(s\) in config.joint"),
    ],
)
def test_misspelt_config_file_key_is_a_clear_error(section, key, message):
    config = runpy.run_path(str(ROOT / "configs/tiny.py"))["get_config"]()
    config[section][key] = 1
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_config(config)


def test_held_out_set_must_fill_whole_batches():
    config = runpy.run_path(str(ROOT / "configs/tiny.py"))["get_config"]()
    config.eval.loss_sequences = 6  # tiny's batch is 8
    with pytest.raises(ValueError, match="loss_sequences=6 must be a multiple of"):
        ExperimentConfig.from_config(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.checkpoint_every": 0}, r"config.train.checkpoint_every=0 must be >= 1"),
        ({"train.log_every": 0}, r"config.train.log_every=0 must be >= 1"),
        ({"data.seq_len": 4096}, r"seq_len=4096 exceeds config.model.max_seq_len"),
        ({"stages": " , "}, r"config.stages names no stage"),
        ({"model.max_lookahead": 0}, r"\['lookahead', 'joint'\] train the lookahead"),
        ({"eval.max_new_tokens": 100_000}, r"positions exceed config.model.max_seq_len"),
    ],
)
def test_a_config_that_cannot_run_is_refused_before_any_work(overrides, message):
    config = runpy.run_path(str(ROOT / "configs/tiny.py"))["get_config"]()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_config(config)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))
)
def test_config_files_check_and_type_their_overrides(name):
    """Every shipped config passes the checks, and an override of a key that defaults to None
    is type-checked by its placeholder (a string where an int belongs is refused)."""
    config = runpy.run_path(str(ROOT / "configs" / name))["get_config"]()
    experiment = ExperimentConfig.from_config(config)
    assert experiment.model.vocab_size == config.tokenizer.vocab_size
    config.data.max_documents = 5
    assert ExperimentConfig.from_config(config).data.max_documents == 5
    with pytest.raises(TypeError):
        config.data.max_documents = "five"


def test_default_config_names_every_key_the_checks_know():
    config = default_config()
    sections = {
        "tokenizer": TokenizerConfig,
        "train": TrainConfig,
        "eval": EvalConfig,
        "mesh": MeshConfig,
        "decode": DecodeConfig,
        **{stage: StageConfig for stage in STAGES},
    }
    for section, cls in sections.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        assert set(config[section]) == fields, section
    assert set(config.data) == {f.name for f in dataclasses.fields(DataConfig)} - {
        "shard_index",
        "shard_count",
    }
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(config.model) == model_fields - {"vocab_size", "unk_id", "rope_scaling"}
    assert ExperimentConfig.from_config(config).stages[1].learning_rate == 1e-2


def test_train_a_head_from_an_hf_directory_then_decode_with_it(tmp_path):
    """configs/hf_head.py on a transformers-written LLaMA with a `tokenizers` tokenizer.json:
    no conversion step; the head (table and lookahead adapters) lands in heads/adapters and drafts
    losslessly."""
    hf_dir = write_bpe_tokenizer(tmp_path / "hf", vocab_size=300)
    write_tiny_llama(hf_dir, vocab_size=300)
    workdir = tmp_path / "run"
    overrides = {
        "hf_dir": hf_dir, "data.max_documents": 24, "data.seq_len": 32, "data.batch_size": 2,
        "adapters.steps": 3, "adapters.warmup_steps": 1, "adapters.generations": 2,
        "adapters.generation_prompt_len": 8, "eval.loss_sequences": 0,
        "eval.num_prompts": 0,  # no evaluation: the decode below measures the head
    }  # fmt: skip
    trained = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/hf_head.py"),
         f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    head = stage_head(workdir, "adapters")
    assert (head / "head.json").is_file()
    assert not (workdir / "tokenizer.model").exists()  # the HF directory's tokenizer

    def decode(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(ROOT / "decode.py"), f"--hf_dir={hf_dir}", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)

    decoded = decode(f"--head={head}", "--prompt=def f(x):", "--max_new_tokens=12", "--compare")
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    assert "--- completion (pass) ---" in decoded.stdout
    assert "same tokens: True" in decoded.stdout  # greedy PaSS = autoregressive
    assert "calls on 5+5 tokens per iteration; c(5) = " in decoded.stdout
    assert "projected speedup tau / c = " in decoded.stdout
    refused = decode("--method=pass", "--prompt=x", "--max_new_tokens=4")
    assert refused.returncode != 0 and "give --head" in refused.stderr


def test_config_names_resolve_to_packaged_configs(tmp_path, monkeypatch):
    package = tmp_path / "shipped_configs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_flags, "CONFIGS_PACKAGE", "shipped_configs")
    assert cli_flags.resolve_config("tiny") == str(package / "tiny.py")
    assert cli_flags.resolve_config("tiny:arg") == f"{package / 'tiny.py'}:arg"
    existing = str(ROOT / "configs/small.py")
    assert cli_flags.resolve_config(existing) == existing
    with pytest.raises(FileNotFoundError, match=r"nor a packaged config in \['tiny'\]"):
        cli_flags.resolve_config("tinny")


def test_parsing_a_config_imports_nothing_heavy_and_public_names_load_lazily():
    code = (
        "import runpy, sys\n"
        "import pass_jax.experiment\n"
        f"runpy.run_path({str(ROOT / 'configs/tiny.py')!r})['get_config']()\n"
        "print(sorted(m for m in ('grain', 'optax', 'pass_jax.model') if m in sys.modules))\n"
        "import pass_jax\n"  # its public names load lazily, on first use
        "print([getattr(pass_jax, name).__name__ for name in pass_jax.__all__])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    light, public = result.stdout.strip().splitlines()
    assert light == "[]"
    assert "'generate_text', 'load_head', 'load_hf_llama'" in public


# Runs a command line's `main` on several argvs in one process: each case in a forked child (absl
# parses flags once per process), so JAX is imported once. Prints one JSON [status, output].
_FORKED_MAINS = """
import json, os, sys, traceback
from pass_jax.cli import {module} as cli
for argv in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(write, 1), os.dup2(write, 2)
        sys.argv, code = argv, 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        output = f.read()
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), output]))
"""


def _forked_mains(module: str, cases: list[list[str]]) -> list[tuple[int, str]]:
    argvs = [[module, *case] for case in cases]
    command = [sys.executable, "-c", _FORKED_MAINS.format(module=module), json.dumps(argvs)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [tuple(json.loads(line)) for line in result.stdout.splitlines()]


def test_decode_checks_its_flags_first_and_reports_expected_errors_in_one_line(tmp_path):
    """Each refused before anything loads (the HF directory does not exist), as one line and
    exit status 2; `--verbosity=1` shows the traceback; an unexpected error stays one."""
    binary = tmp_path / "prompt.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    hf = [f"--hf_dir={tmp_path / 'no_model'}", "--prompt=x"]
    cases = {
        "temperature must be >= 0, got -1.0": [*hf, "--temperature=-1"],
        r"top_p must be in (0, 1], got 0.0": [*hf, "--top_p=0"],
        "max_new_tokens must be >= 1, got 0": [*hf, "--max_new_tokens=0"],
        "num_lookahead=99 is outside [0, 4]": [*hf, "--max_lookahead=4", "--num_lookahead=99"],
        "flag --top_k=1.5:": [*hf, "--top_k=1.5"],
        "tokenizer not found": hf,
        "missing.txt: no such file": [hf[0], f"--prompt_file={tmp_path / 'missing.txt'}"],
        "is not UTF-8 text": [hf[0], f"--prompt_file={binary}"],
        "no_config.py: no such file": ["--config=no_config.py", "--prompt=x"],
    }
    results = _forked_mains("decode", [*cases.values(), [*hf, "--top_p=0", "--verbosity=1"]])
    for (message, case), (status, output) in zip(cases.items(), results, strict=False):
        assert status == 2 and output.startswith("error: "), (case, output)
        assert output.count("\n") == 1 and message in output, (case, output)
    status, output = results[-1]
    assert status == 1 and "Traceback" in output and "top_p must be in (0, 1]" in output


def test_train_checks_the_config_and_workdir_first_and_reports_errors_in_one_line(tmp_path):
    """Refused before any work (no tokenizer trained, nothing written), as one line and exit
    status 2; `--dry_run` does not ask for a workdir."""
    file = tmp_path / "file"
    file.write_text("")
    workdir = tmp_path / "run"
    cases = {
        "checkpoint_every=0 must be >= 1": [
            f"--workdir={workdir}",
            "--config.train.checkpoint_every=0",
        ],
        "log_every=0 must be >= 1": ["--dry_run", "--config.train.log_every=0"],  # no workdir
        "--workdir is required (except with --dry_run)": [],
        f"{file} is not a directory": [f"--workdir={file / 'run'}"],
        "held-out split 'validation' of the stdlib corpus: at most": [
            f"--workdir={workdir}",
            *_overrides(),
            "--config.eval.loss_sequences=4000000",
        ],
        "unknown config key 'foo'": [f"--workdir={workdir}", "--config.foo=1"],
    }
    tiny = ["--config", str(ROOT / "configs/tiny.py")]
    results = _forked_mains("train", [[*tiny, *case] for case in cases.values()])
    results += _forked_mains("train", [["--config=missing.py", f"--workdir={workdir}"]])
    cases["--config missing.py: no such file"] = []
    for (message, case), (status, output) in zip(cases.items(), results, strict=True):
        assert status == 2 and output.startswith("error: "), (case, output)
        assert output.count("\n") == 1 and message in output, (case, output)
    assert not workdir.exists()


def test_a_dry_run_needs_no_workdir(monkeypatch):
    monkeypatch.setattr(commands, "use_fake_cpu_devices", lambda: None)
    monkeypatch.setattr(commands, "format_dry_run", lambda exp: f"sized {exp.model.d_model}")
    config = runpy.run_path(str(ROOT / "configs/tiny.py"))["get_config"]()
    assert commands.run_training(config, None, dry_run=True) == 0
