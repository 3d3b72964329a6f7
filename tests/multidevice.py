"""Runs a test body on fake CPU devices in fresh Python processes.

JAX fixes its device count when its backend starts, which the rest of the test session has
already done; `run_on_devices` therefore runs `module.function(*args)` in a subprocess that
asks for `n` CPU devices before anything starts JAX. `run_on_processes` runs it in several
processes joined by the JAX distributed runtime on localhost (a multi-host job in miniature:
CPU collectives over gloo).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).parent


def _command(module: str, function: str, n: int, setup: str = "") -> list[str]:
    code = (
        "import sys, jax\n"
        "jax.config.update('jax_platforms', 'cpu')\n"
        f"jax.config.update('jax_num_cpu_devices', {n})\n"
        f"{setup}"
        f"import {module}\n"
        f"{module}.{function}(*sys.argv[1:])\n"
    )
    return [sys.executable, "-c", code]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def run_on_devices(module: str, function: str, *args: str, n: int = 8, timeout: float = 300) -> str:
    """Calls `module.function(*args)` (a module in tests/) with `n` devices; returns its stdout.

    Fails the calling test, with the subprocess's output, if the call raises.
    """
    proc = subprocess.run(
        [*_command(module, function, n), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{module}.{function} on {n} devices failed:\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


def run_on_processes(
    module: str, function: str, *args: str, processes: int = 2, n: int = 2, timeout: float = 300
) -> list[str]:
    """Calls `module.function(*args)` in `processes` processes of `n` CPU devices each, joined
    by `jax.distributed.initialize` on localhost; returns their stdouts (process 0 first).

    When one process fails, the others (which would wait for it) are stopped.
    """
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    setup = (
        "jax.config.update('jax_cpu_collectives_implementation', 'gloo')\n"
        f"jax.distributed.initialize('localhost:{port}', {processes}, int(sys.argv.pop(1)))\n"
    )
    command = _command(module, function, n, setup)
    with tempfile.TemporaryDirectory() as logs:
        files = [(Path(logs) / f"{i}.out", Path(logs) / f"{i}.err") for i in range(processes)]
        running = []
        for i, (out, err) in enumerate(files):
            with out.open("w") as stdout, err.open("w") as stderr:
                proc = subprocess.Popen(
                    [*command, str(i), *args], env=_env(), stdout=stdout, stderr=stderr, text=True
                )
            running.append(proc)
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            if any(p.returncode for p in running):
                break
            time.sleep(0.2)
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for i, (proc, (_, err)) in enumerate(zip(running, files, strict=True)):
            assert proc.returncode == 0, (
                f"{module}.{function}, process {i} of {processes}, exited with "
                f"{proc.returncode}:\n{err.read_text()[-6000:]}"
            )
        return [out.read_text() for out, _ in files]
