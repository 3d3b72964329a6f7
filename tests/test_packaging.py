"""The wheel a plain `pip install .` builds (packages, configs, console scripts, license), and
the quickstart run from it in a fresh virtual environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import tiny_run_flags

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "pass_jax", "configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the sources (no build files left in the repo)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp)]
    subprocess.run(build, check=True, cwd=tmp)
    (built,) = tmp.glob("pass_jax-*.whl")
    return built


def test_wheel_ships_every_package_the_configs_scripts_and_license(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("__init__.py")}
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pass_jax").rglob("__init__.py")
    }
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert packages == on_disk | {"pass_jax.configs"} == set(listed)
    assert {"pass_jax/configs/tiny.py", "pass_jax/configs/quickstart.py"} <= set(names)
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "pass-jax-train = pass_jax.cli.train:main" in scripts
    assert "pass-jax-decode = pass_jax.cli.decode:main" in scripts
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()


def test_installed_wheel_imports_its_configs_and_cli(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "-q", "install", "--no-deps", "--target", str(target)]
    subprocess.run([*install, str(wheel)], check=True, cwd=tmp_path)
    check = (
        "import importlib, importlib.resources as r, importlib.util\n"
        "import pass_jax.cli.train  # defines the absl flags that cli.decode defines too\n"
        "assert importlib.util.find_spec('pass_jax.cli.decode')\n"
        f"assert pass_jax.__file__.startswith({str(target)!r}), pass_jax.__file__\n"
        "files = {f.name for f in r.files('pass_jax.configs').iterdir()}\n"
        "assert {'tiny.py', 'quickstart.py'} <= files, files\n"
        "importlib.import_module('pass_jax.configs.quickstart').get_config()\n"
    )
    # Outside the repo, with the installed copy first on the path.
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed by a plain `pip install` (not
    editable). Its dependencies come from this environment's site-packages through a `.pth`
    line, which puts them on the path without running their `.pth` files, so this checkout's
    editable install stays out of it."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [str(python), "-m", "pip", "-q", "install", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True)
    return venv


def _console(venv: Path, script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(venv / "bin" / script), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_installed_quickstart_trains_and_decodes(fresh_venv: Path, tmp_path: Path):
    """`pass-jax-train --config quickstart` then `pass-jax-decode --compare`, from the installed
    wheel in the fresh environment, outside the repository (shrunk to seconds by overrides)."""
    where = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", "import pass_jax; print(pass_jax.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(fresh_venv)), where.stdout + where.stderr
    workdir = tmp_path / "qs"
    train = ("pass-jax-train", "--config", "quickstart", f"--workdir={workdir}", *tiny_run_flags())

    trained = _console(fresh_venv, *train, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "[joint] greedy pass: acceptance by position" in trained.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["stage"] for r in records if r["event"] == "eval"]
    assert evaluated == ["base", "lookahead", "joint"]
    for record in (r for r in records if r["event"] == "eval"):
        assert 1.0 < record["bytes_per_token"] < 8.0  # BPE pieces of code
        assert record["lm_loss_per_byte"] == pytest.approx(
            record["lm_loss"] / record["bytes_per_token"]
        )
    assert "nats/byte" in trained.stdout
    assert {"loss", "tokens_per_s", "lr"} <= set(records[0])
    assert (workdir / "heads" / "joint" / "head.json").is_file()

    decode = ("--config", "quickstart", f"--workdir={workdir}", *tiny_run_flags())
    decoded = _console(
        fresh_venv,
        "pass-jax-decode",
        *decode,
        "--prompt=def ",
        "--max_new_tokens=8",
        "--compare",
        cwd=tmp_path,
    )
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    assert "tau" in decoded.stdout
    assert "wall-clock ratio (ar / pass, per token)" in decoded.stdout
    assert "same tokens: True" in decoded.stdout  # greedy PaSS is lossless
    assert "calls on 5+5 tokens per iteration; c(5) = " in decoded.stdout  # L_max = 4
