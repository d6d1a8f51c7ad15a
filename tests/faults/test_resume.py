"""Interrupted runs resume: SIGKILL at several points, re-run with the same command, same outputs as an
uninterrupted run. And one run per results directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from tests.conftest import zarr_array_names
from tests.faults.conftest import (
    DATASET,
    clean_env,
    run_command,
    run_until,
    run_workflow,
    write_config,
)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The archive's top-level arrays by name (:func:`tests.conftest.zarr_array_names`)."""
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][...]) for name in zarr_array_names(path)}


def _manifest(results: Path) -> dict[str, str]:
    lines = (results / "provenance" / "checksums.sha256").read_text(encoding="utf-8").splitlines()
    return dict(reversed(line.split("  ", 1)) for line in lines)


def _assert_close(actual, expected, where: str) -> None:
    """Equal up to float32 round-off (numbers), below the work directory (paths), exactly otherwise;
    recursively."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6), where
    else:
        if isinstance(expected, str) and "work/" in expected:  # a path: same below the work directory
            actual, expected = actual[actual.index("work/") :], expected[expected.index("work/") :]
        assert actual == expected, where


def _assert_tables_equal(actual: pd.DataFrame, expected: pd.DataFrame, where: str) -> None:
    assert list(actual.columns) == list(expected.columns) and len(actual) == len(expected), where
    for column in expected.columns:
        if expected[column].dtype.kind == "f":
            scale = max(float(expected[column].abs().max()), 1.0)
            np.testing.assert_allclose(
                actual[column], expected[column], rtol=0, atol=1e-4 * scale, err_msg=where
            )
        else:
            assert actual[column].tolist() == expected[column].tolist(), f"{where}: {column}"


def assert_same_outputs(reference: Path, results: Path) -> None:
    """The same files as the reference run, with the same arrays, tables and registered positions.

    Numbers are compared to float32 round-off (arrays: 1e-5 of their largest value; table columns: 1e-4, for
    sums over a spot such as its mass), not bit for bit: FFTW picks its FFT algorithms by timing them
    (``FFTW_MEASURE``), so the deconvolution of two *uninterrupted* runs already differs at ~1e-7 relative.
    Lost, repeated or half-written work after a kill (a chunk of zeros, a missing timepoint, a track cut
    short) is orders of magnitude above that bound.
    """
    ref_files, files = _manifest(reference), _manifest(results)
    assert sorted(files) == sorted(ref_files)
    name = f"{DATASET}.ome.zarr"
    ref_arrays, arrays = _arrays(reference / name), _arrays(results / name)
    assert ref_arrays.keys() == arrays.keys() and ref_arrays
    for key, array in ref_arrays.items():
        assert arrays[key].shape == array.shape and arrays[key].dtype == array.dtype, key
        scale = float(np.abs(array).max())
        assert scale > 0, key
        np.testing.assert_allclose(arrays[key], array, rtol=0, atol=1e-5 * scale, err_msg=key)
    tables = sorted(p.relative_to(reference) for p in (reference / "tracks").glob("*.parquet"))
    assert tables
    for table in tables:
        _assert_tables_equal(pd.read_parquet(results / table), pd.read_parquet(reference / table), str(table))
        csv = table.with_suffix(".csv")
        _assert_tables_equal(pd.read_csv(results / csv), pd.read_csv(reference / csv), str(csv))
    transforms = "provenance/transforms.json"
    _assert_close(
        json.loads((results / transforms).read_text()),
        json.loads((reference / transforms).read_text()),
        "transforms",
    )
    # the raw inputs the archive's manifest vouches for: the very same files, bit for bit
    raw = {k: v for k, v in ref_files.items() if k.startswith("raw/")}
    assert raw and all(files[k] == v for k, v in raw.items())


def _exists(pattern_root: Path, pattern: str):
    return lambda: any(pattern_root.glob(pattern))


def _while_archiving(results: Path, log: Path, grace_s: float = 0.3):
    """True once the archive's temporary store exists, or ``grace_s`` after the archive job started (its log
    appeared): the archive step is short, and a poll may miss the moment its store is being written."""
    started = []

    def ready() -> bool:
        if any(results.glob(f".{DATASET}.ome.zarr.*.partial")):
            return True
        if log.exists() and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > grace_s

    return ready


def test_killed_three_times_then_resumed(reference_run, small_acquisition, tmp_path):
    """SIGKILL the whole process group (llsmflow, Snakemake, its jobs) after the first deconvolved volume
    appears (its timepoint's job has more to write: a job with some of its outputs), while fusing, while
    archiving; after each kill the same `llsmflow run` command goes on without
    any manual step, and the final outputs equal those of an uninterrupted run."""
    run_dir = tmp_path / "run"
    write_config(run_dir, small_acquisition)
    work, results = run_dir / "work" / DATASET, run_dir / "results" / DATASET
    kill_points = {
        "after the first deconvolved volume": _exists(work / "deconvolved", "*.ome.tif"),
        "while fusing": _exists(work / "fused", "*"),
        "while archiving": _while_archiving(results, work / "logs" / "archive.log"),
    }
    for point, ready in kill_points.items():
        assert run_until(run_dir, ready), f"the run ended before the kill point {point!r}"
        # what a SIGKILL leaves: our run lock, Snakemake's lock, and no finished run record
        assert (run_dir / "results" / f".llsmflow-{DATASET}.lock").exists(), point
        assert list((run_dir / ".snakemake" / "locks").glob("*.lock")), point
        assert not (results / "provenance" / "run-record.json").exists(), point
    result = run_workflow(run_dir)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "removed a stale Snakemake lock" in result.stderr
    assert_same_outputs(reference_run["run_dir"] / "results" / DATASET, results)
    leftovers = [p for p in run_dir.rglob("*.partial")]
    assert not leftovers, leftovers
    assert not (run_dir / "results" / f".llsmflow-{DATASET}.lock").exists()


def _start(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        run_command(run_dir),
        cwd=run_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        start_new_session=True,
    )


def test_second_run_on_same_results_refuses(small_acquisition, tmp_path):
    """While one run holds the results directory, a second one exits 2 naming the lock and its holder."""
    run_dir = tmp_path / "run"
    write_config(run_dir, small_acquisition)
    lock = run_dir / "results" / f".llsmflow-{DATASET}.lock"
    first = _start(run_dir)
    try:
        deadline = time.monotonic() + 120
        while not lock.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        second = run_workflow(run_dir, timeout=120)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if line.startswith("llsmflow run: error:")]
        assert len(errors) == 1, second.stderr
        assert str(lock) in errors[0] or lock.name in errors[0]
        assert f"pid {first.pid} on {socket.gethostname()}" in errors[0]
        assert "in use by another llsmflow run" in errors[0] and "expected one run at a time" in errors[0]
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_stale_lock_of_dead_run_is_cleared_but_not_a_remote_one(small_acquisition, tmp_path):
    """A lock left by a dead process on this host is cleared; one held on another host is respected."""
    run_dir = tmp_path / "run"
    write_config(run_dir, small_acquisition)
    lock = run_dir / "results" / f".llsmflow-{DATASET}.lock"
    lock.parent.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    result = run_workflow(run_dir, "--", "--dry-run", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not lock.exists()

    lock.write_text(json.dumps({"pid": 4242, "host": "node-elsewhere", "started": "earlier"}))
    result = run_workflow(run_dir, "--", "--dry-run", timeout=300)
    assert result.returncode == 2
    assert "pid 4242 on node-elsewhere" in result.stderr and lock.exists()


def test_only_this_datasets_snakemake_locks_and_partials_are_cleared(tmp_path):
    """Another dataset's run in the same directory keeps its Snakemake lock; only our dead run's goes, and
    only temporary outputs (``.<name>.<random>.partial``) are removed, never a finished output."""
    from llsmflow.run.lock import clear_stale_snakemake_locks, remove_partial_outputs

    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("raw/a.tif\n")
    (locks / "0.output.lock").write_text("work/small/deskewed/a.ome.tif\nresults/small/small.ome.zarr\n")
    (locks / "1.input.lock").write_text("raw/b.tif\n")
    (locks / "1.output.lock").write_text("work/other/deskewed/b.ome.tif\n")
    removed = clear_stale_snakemake_locks(tmp_path, ["results/small", "work/small"])
    assert sorted(p.name for p in removed) == ["0.input.lock", "0.output.lock"]
    assert sorted(p.name for p in locks.iterdir()) == ["1.input.lock", "1.output.lock"]

    work = tmp_path / "work" / "small"
    (work / "fused" / ".ch0-t0000.zarr.k2x9.partial" / "c").mkdir(parents=True)
    (work / "deskewed").mkdir()
    (work / "deskewed" / ".a.ome.tif.p0q1.partial").write_bytes(b"half")
    (work / "deskewed" / "a.ome.tif").write_bytes(b"done")
    (work / "deskewed" / "notes.partial").write_bytes(b"a user's file, not ours")
    removed = remove_partial_outputs([work, tmp_path / "results" / "small"])
    assert sorted(p.name for p in removed) == [".a.ome.tif.p0q1.partial", ".ch0-t0000.zarr.k2x9.partial"]
    assert sorted(p.name for p in (work / "deskewed").iterdir()) == ["a.ome.tif", "notes.partial"]
    assert not list((work / "fused").iterdir())
