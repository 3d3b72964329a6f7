"""Shared command-line plumbing: config names, absl's flags parser, and `run_main`, which reports
expected errors as one line."""

from __future__ import annotations

import contextlib
import importlib.resources
import runpy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags

from pass_jax.io.checkpoint import CheckpointError

CONFIG_FLAG = "--config"
CONFIGS_PACKAGE = "pass_jax.configs"
# A bad flag or config, a missing or damaged file (HeadMismatchError, tokenizer and HF load
# errors are ValueErrors): one line, not a traceback.
EXPECTED_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    CheckpointError,
    app.UsageError,
    flags.Error,
)
EXPECTED_ERROR_STATUS = 2


def resolve_config(value: str) -> str:
    """A `--config` value as a file path: `PATH[:ARG]` if PATH exists, else `NAME[:ARG]` with
    NAME a config shipped in `pass_jax.configs` (e.g. `tiny` -> its `tiny.py`)."""
    path, sep, arg = value.partition(":")
    if Path(path).exists() or path.endswith(".py"):  # absl reports a missing file itself
        return value
    try:
        packaged = importlib.resources.files(CONFIGS_PACKAGE) / f"{path}.py"
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"--config {value}: no such file (and no {CONFIGS_PACKAGE} installed)"
        ) from e
    if not packaged.is_file():
        names = sorted(
            p.name[:-3]
            for p in importlib.resources.files(CONFIGS_PACKAGE).iterdir()
            if p.name.endswith(".py") and not p.name.startswith("_")
        )
        raise FileNotFoundError(f"--config {value}: no such file, nor a packaged config in {names}")
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
    if value is not None and not Path(path).is_file():
        raise FileNotFoundError(f"--config {value}: no such file")
    if value is not None:
        get_config = runpy.run_path(path)["get_config"]
        config = get_config(arg) if arg else get_config()
        for flag in argv:
            if flag.startswith(CONFIG_FLAG + "."):
                key = flag[len(CONFIG_FLAG) + 1 :].split("=", 1)[0]
                if not _has_key(config, key):
                    raise ValueError(
                        f"unknown config key {key!r} in {flag}: {path} has no such key"
                    )
    remaining = flags.FLAGS(argv)
    if flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = -1
    return remaining


@contextlib.contextmanager
def _expected_errors_reported() -> Iterator[None]:
    """An `EXPECTED_ERRORS` error becomes one line on stderr, "error: <message>", and exit status
    `EXPECTED_ERROR_STATUS`; with `--verbosity=1` or more it propagates (its traceback)."""
    try:
        yield
    except EXPECTED_ERRORS as e:
        if flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1:
            raise
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message or type(e).__name__}", file=sys.stderr)
        sys.exit(EXPECTED_ERROR_STATUS)


def run_main(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)` with `flags_parser`; expected errors, in parsing flags or in `main`, are
    one line (`_expected_errors_reported`), others tracebacks."""

    def reported(argv: list[str]) -> Any:
        with _expected_errors_reported():  # app.run would print a UsageError with the usage
            return main(argv)

    with _expected_errors_reported():
        app.run(reported, flags_parser=flags_parser)
