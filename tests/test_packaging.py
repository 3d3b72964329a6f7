"""The wheel a plain `pip install .` builds: packages, configs, console scripts, license."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

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
