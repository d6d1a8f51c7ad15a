"""Disk full while writing: the step fails cleanly, and the next run (with room) resumes to the same outputs.

The full disk is real: a size-limited tmpfs holding the results and work directories (mounting needs root
or CAP_SYS_ADMIN; without it the test is skipped and says so).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llsmflow.io import read_volume
from tests.faults.conftest import DATASET, run_workflow, write_config
from tests.faults.test_resume import assert_same_outputs

SMALL_DISK = "4m"  # the small run needs about 10 MB at its peak


def _mount(point: Path, size: str) -> None:
    point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({result.stderr.strip()}); needs root")


@pytest.fixture
def small_disk(tmp_path):
    point = tmp_path / "disk"
    _mount(point, SMALL_DISK)
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def test_disk_full_fails_cleanly_then_resumes(reference_run, small_acquisition, small_disk, tmp_path):
    run_dir = tmp_path / "run"
    write_config(
        run_dir, small_acquisition, results_dir=str(small_disk / "results"), work_dir=str(small_disk / "work")
    )
    results, work = small_disk / "results" / DATASET, small_disk / "work" / DATASET

    failed = run_workflow(run_dir)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("llsmflow run: error:")]
    assert len(errors) == 1, failed.stderr[-4000:]
    assert "no space left on the device (step " in errors[0] and str(small_disk) in errors[0]
    assert "run again" in errors[0]
    # nothing that looks complete: no run record, no temporary output left, every volume kept is readable
    assert not (results / "provenance" / "run-record.json").exists()
    assert not list(small_disk.rglob("*.partial"))
    kept = list(work.rglob("*.ome.tif"))
    for volume in kept:
        read_volume(volume)

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_workflow(run_dir)
    assert resumed.returncode == 0, f"{resumed.stdout[-3000:]}\n{resumed.stderr[-5000:]}"
    assert_same_outputs(reference_run["run_dir"] / "results" / DATASET, results)
