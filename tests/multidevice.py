"""Runs a test body on fake CPU devices in a fresh Python process.

JAX fixes its device count when its backend starts, which the rest of the test session has
already done; `run_on_devices` therefore runs `module.function(*args)` in a subprocess that
asks for `n` CPU devices before anything starts JAX.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def run_on_devices(module: str, function: str, *args: str, n: int = 8, timeout: float = 300) -> str:
    """Calls `module.function(*args)` (a module in tests/) with `n` devices; returns its stdout.

    Fails the calling test, with the subprocess's output, if the call raises.
    """
    code = (
        "import sys, jax\n"
        "jax.config.update('jax_platforms', 'cpu')\n"
        f"jax.config.update('jax_num_cpu_devices', {n})\n"
        f"import {module}\n"
        f"{module}.{function}(*sys.argv[1:])\n"
    )
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{module}.{function} on {n} devices failed:\n{proc.stderr[-6000:]}"
    )
    return proc.stdout
