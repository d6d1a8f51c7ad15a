"""CPUs a process may use (llsmflow.parallel.available_cpus): its affinity, bounded by a container's CPU quota.

The quota files are the kernel's formats (cgroup v2 ``cpu.max``: "<quota> <period>" or "max <period>"; v1
``cpu.cfs_quota_us`` = -1 without a quota), written to temporary files the function reads instead of /sys.
"""

from __future__ import annotations

import os

import pytest

from llsmflow import parallel


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us"
    monkeypatch.setattr(parallel, "_CGROUP_V2_MAX", v2)
    monkeypatch.setattr(parallel, "_CGROUP_V1_QUOTA", quota)
    monkeypatch.setattr(parallel, "_CGROUP_V1_PERIOD", period)
    return v2, quota, period


def test_without_a_quota_the_affinity_counts(cgroup):
    v2, _, _ = cgroup
    affinity = len(os.sched_getaffinity(0))
    assert parallel.available_cpus() == affinity  # no cgroup files at all
    v2.write_text("max 100000\n")
    assert parallel.available_cpus() == affinity


def test_a_quota_bounds_the_cpus(cgroup, monkeypatch):
    v2, quota, period = cgroup
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a 64-core host
    v2.write_text("150000 100000\n")  # docker run --cpus 1.5
    assert parallel.available_cpus() == 2
    v2.write_text("400000 100000\n")
    assert parallel.available_cpus() == 4
    v2.unlink()
    quota.write_text("-1\n")  # cgroup v1 without a quota
    period.write_text("100000\n")
    assert parallel.available_cpus() == 64
    quota.write_text("300000\n")
    assert parallel.available_cpus() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a cpuset smaller than the quota
    assert parallel.available_cpus() == 2
