"""How many CPUs this process may use, and how many threads a dask client offers: shared by deskew,
deconvolution and fusion.

It sits at the bottom of the house (beside :mod:`llsmflow.io`) because the processing packages size their
thread pools and batches of chunks from it, and they may not import the HPC layer that creates the client
(:mod:`llsmflow.hpc`).

:func:`available_cpus` is written here rather than taken from dask (``dask.system.CPU_COUNT`` does the same)
because importing dask costs a fuse job 0.1 s of its start-up, and the standard library's ``os.cpu_count`` /
``os.sched_getaffinity`` do not read a container's CPU quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# cgroup v2 and v1 files that hold a container's CPU quota (Docker --cpus, Kubernetes limits, JupyterHub)
_CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cpu_quota() -> int | None:
    """CPUs a cgroup CPU quota allows (rounded up), or None without a quota (or where none can be read)."""
    try:
        quota, period = _CGROUP_V2_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = _CGROUP_V1_QUOTA.read_text().strip(), _CGROUP_V1_PERIOD.read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = float(quota), float(period)  # "max" (no quota) raises here
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 writes -1 for no quota
        return None
    return max(1, math.ceil(quota_us / period_us))


def available_cpus() -> int:
    """CPUs this process may run on, at least 1: its CPU affinity (a SLURM job's cpuset), bounded by a cgroup
    CPU quota if one is set (a container's ``--cpus``), as ``dask.system.CPU_COUNT`` counts them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def client_threads(client) -> int:
    """Threads of all the client's ``distributed`` workers now (at least 1)."""
    return max(1, sum(client.nthreads().values()))
