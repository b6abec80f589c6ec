"""Threads for `python -m train`: never more compute threads than this process's share of the
cores, and OpenMP threads that sleep rather than spin while they wait.

    quiet_openmp_waits()               # before torch is imported (train/__main__.py does it first)
    torch.set_num_threads(resolve_threads(cfg.num_threads))

Stdlib only: it must run before torch loads OpenMP, which reads its settings once, at load.
"""
from __future__ import annotations

import os
from pathlib import Path


def quiet_openmp_waits() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the user set a wait policy or GOMP_SPINCOUNT: a waiting
    OpenMP thread otherwise spins on a core for a while, and with a second busy process on the box
    the spinning threads take the cores the working ones need (a 30x slowdown on 2 cores, see
    README "Threads")."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def resolve_threads(requested: int) -> int:
    """num_threads > 0 as given; else $OMP_NUM_THREADS when set (torchrun sets 1 per process when
    it is unset); else usable cores // processes on this node (torchrun's LOCAL_WORLD_SIZE)."""
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
