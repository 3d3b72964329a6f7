"""Several hosts, one program: starting the JAX distributed runtime, and what only process 0 does.

Every host runs the same `train.py` command. With more than one host, `jax.distributed.initialize`
must run first, before anything starts a JAX backend. `initialize` does so when asked
(`train.py --distributed`) or when the environment names a multi-process job:

- `JAX_COORDINATOR_ADDRESS` (`host:port` of process 0), with `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID` (read here and passed on; JAX itself only reads the address): any cluster,
  e.g. several GPU hosts;
- `TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES` listing more than one host (multi-host TPU
  slices on GKE; on TPU VMs, pass `--distributed` and JAX asks the metadata server);
- `MEGASCALE_COORDINATOR_ADDRESS` (multislice TPU);
- SLURM (`SLURM_NTASKS` > 1) or Open MPI (`OMPI_COMM_WORLD_SIZE` > 1) jobs.

`jax.distributed.initialize()` then finds the rest itself (cluster auto-detection). After it,
`jax.devices()` lists every host's devices and `jax.process_index()` numbers the hosts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from jax.experimental import multihost_utils

_COUNT_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
_HOST_LIST_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")
_ADDRESS_VARS = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def multi_process_environment(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment describes a job of several processes (see the module doc)."""
    if any(env.get(name) for name in _ADDRESS_VARS):
        return True
    if any(len(env.get(name, "").split(",")) > 1 for name in _HOST_LIST_VARS):
        return True
    return any(int(env.get(name, "1") or 1) > 1 for name in _COUNT_VARS)


def initialize(requested: bool = False, env: Mapping[str, str] = os.environ) -> bool:
    """Starts the distributed runtime if `requested` or the environment asks for it; returns
    whether it did. Call before any JAX computation."""
    if not (requested or multi_process_environment(env)):
        return False
    if not jax.distributed.is_initialized():
        num, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
        jax.distributed.initialize(
            num_processes=None if num is None else int(num),
            process_id=None if index is None else int(index),
        )
    return True


def is_main() -> bool:
    """Whether this is process 0: the one that writes logs, metrics and the tokenizer."""
    return jax.process_index() == 0


def main_print(*values: object) -> None:
    """`print` on process 0 only."""
    if is_main():
        print(*values, flush=True)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
