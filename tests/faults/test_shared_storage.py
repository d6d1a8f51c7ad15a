"""Nothing lost, nothing stray: raw data untouched, odd file names work, outputs follow the umask, nothing is
written outside the run's results/, work/ and .snakemake/ directories.

All checks look at one real run (``reference_run``: umask 0027, a fresh $HOME, spaces and non-ASCII letters
in the raw directory's, the stacks' and the run directory's names).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.faults.conftest import DATASET, STACK_PREFIX, run_workflow, sha256, write_config


def test_odd_file_names_run_end_to_end(reference_run, small_acquisition):
    """Spaces and non-ASCII letters in the raw directory and in every stack name work end to end."""
    run_dir = reference_run["run_dir"]
    assert " " in str(small_acquisition) and not str(small_acquisition).isascii()
    record = json.loads(
        (run_dir / f"results/{DATASET}/provenance/run-record.json").read_text(encoding="utf-8")
    )
    inputs = {Path(e["path"]).name for e in record["inputs"]}
    stacks = sorted(p.name for p in small_acquisition.glob(f"{STACK_PREFIX}*.tif"))
    assert len(stacks) == 6 and set(stacks) <= inputs
    assert (run_dir / f"results/{DATASET}/{DATASET}.ome.zarr/zarr.json").is_file()


def test_raw_data_untouched(reference_run, small_acquisition):
    """Checksums and modification times of every raw file are the same after the run; no file was added."""
    after = {p.name: (sha256(p), p.stat().st_mtime_ns) for p in small_acquisition.iterdir()}
    assert after == reference_run["raw_before"]


def _created(run_dir: Path):
    for top in ("results", "work"):
        root = run_dir / top
        yield root
        yield from root.rglob("*")


def test_outputs_follow_the_umask(reference_run):
    """Under umask 0027 every file and directory under results/ and work/ is group-readable and gives
    others no access at all (atomic_output's temporary files must not keep mkstemp's 0600)."""
    run_dir = reference_run["run_dir"]
    paths = list(_created(run_dir))
    assert len(paths) > 50
    for path in paths:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o007 == 0, f"{path}: mode {oct(mode)} gives others access under umask 0027"
        assert mode & 0o040, f"{path}: mode {oct(mode)} is not group-readable under umask 0027"
        if path.is_dir():
            assert mode & 0o010, f"{path}: directory mode {oct(mode)} is not group-searchable"


def test_nothing_written_outside_results_and_work(reference_run):
    """The run created nothing in $HOME, and nothing in the run directory but results/, work/, .snakemake/."""
    home = reference_run["home"]
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == reference_run["home_before"]
    run_dir = reference_run["run_dir"]
    created = sorted(set(p.name for p in run_dir.iterdir()) - set(reference_run["run_dir_before"]))
    assert created == [".snakemake", "results", "work"]
    # and the run lock is gone once the run is over
    assert not list((run_dir / "results").glob(".llsmflow-*.lock"))


def test_world_writable_never(small_acquisition, tmp_path):
    """With a umask that would allow it (0000), `llsmflow run` still creates nothing writable by others.

    A dry run is enough to exercise what `llsmflow run` creates itself (the run lock, Snakemake's
    bookkeeping); the outputs of steps inherit the same umask from it.
    """
    run_dir = tmp_path / "run"
    write_config(run_dir, small_acquisition)
    result = run_workflow(run_dir, "--", "--until", "ingest", umask=0, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [p for p in run_dir.rglob("*") if p.name != "config.yaml"]
    assert any(p.name == "samples.tsv" for p in paths)
    for path in paths:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o002, f"{path}: mode {oct(mode)} is world-writable"


def test_atomic_output_applies_the_umask(tmp_path):
    """Files and Zarr-like directories written through atomic_output get the umask's modes, not the 0600 of
    a private temporary file."""
    import numpy as np

    from llsmflow.io import atomic_output, write_volume

    previous = os.umask(0o027)
    try:
        volume = write_volume(tmp_path / "v.ome.tif", np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0))
        with atomic_output(tmp_path / "store.zarr") as tmp:
            (tmp / "c").mkdir(parents=True)
            (tmp / "c" / "0").write_bytes(b"chunk")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(volume.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "store.zarr").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "store.zarr" / "c" / "0").stat().st_mode) == 0o640
