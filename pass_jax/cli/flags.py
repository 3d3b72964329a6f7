"""Shared command-line plumbing: config names and absl's flags parser."""

from __future__ import annotations

import importlib.resources
import runpy
import sys
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags

CONFIG_FLAG = "--config"
CONFIGS_PACKAGE = "pass_jax.configs"


def resolve_config(value: str) -> str:
    """A `--config` value as a file path: `PATH[:ARG]` if PATH exists, else `NAME[:ARG]` with
    NAME a config shipped in `pass_jax.configs` (e.g. `tiny` -> its `tiny.py`)."""
    path, sep, arg = value.partition(":")
    if Path(path).exists() or path.endswith(".py"):  # absl reports a missing file itself
        return value
    try:
        packaged = importlib.resources.files(CONFIGS_PACKAGE) / f"{path}.py"
    except ModuleNotFoundError:
        sys.exit(f"FATAL: --config {value}: no such file (and no {CONFIGS_PACKAGE} installed)")
    if not packaged.is_file():
        names = sorted(
            p.name[:-3]
            for p in importlib.resources.files(CONFIGS_PACKAGE).iterdir()
            if p.name.endswith(".py") and not p.name.startswith("_")
        )
        sys.exit(f"FATAL: --config {value}: no such file, nor a packaged config in {names}")
    return f"{packaged}{sep}{arg}"


def _resolve_config_arg(argv: list[str]) -> tuple[list[str], str | None]:
    """argv with the `--config` value resolved (`resolve_config`), and that value."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith(CONFIG_FLAG + "="):
            argv[i] = f"{CONFIG_FLAG}={resolve_config(arg.split('=', 1)[1])}"
            return argv, argv[i].split("=", 1)[1]
        if arg == CONFIG_FLAG and i + 1 < len(argv):
            argv[i + 1] = resolve_config(argv[i + 1])
            return argv, argv[i + 1]
    return argv, None


def _has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def flags_parser(argv: list[str]) -> list[str]:
    """absl's flags parser, with `--config` taking a packaged config's name too, and a clear
    error for a `--config.<key>` override of a missing key.

    Logging defaults to WARNING (absl would raise it to INFO, where orbax logs every save);
    `--verbosity=0` restores INFO.
    """
    argv, value = _resolve_config_arg(argv)
    path, _, arg = (value or "").partition(":")
    if Path(path).is_file():
        get_config = runpy.run_path(path)["get_config"]
        config = get_config(arg) if arg else get_config()
        for flag in argv:
            if flag.startswith(CONFIG_FLAG + "."):
                key = flag[len(CONFIG_FLAG) + 1 :].split("=", 1)[0]
                if not _has_key(config, key):
                    sys.exit(f"FATAL: unknown config key {key!r} in {flag}: {path} has no such key")
    remaining = app.parse_flags_with_usage(argv)
    if flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = -1
    return remaining
