"""Fixtures for the reliability tests: a small acquisition, workflow runs driven as a user drives them.

The acquisition is smaller than ``tiny_acquisition`` (1 channel, 3 timepoints, 2 tiles: 23 workflow jobs) so that
the several runs these tests need (a reference run, a run killed at three points and resumed, a run on a full
disk) stay within a few minutes on two cores. Its raw directory and stack names contain spaces and non-ASCII
characters, so every run also checks that such names work end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from llsmflow.synth import generate
from tests.conftest import run_workflow as run_llsmflow
from tests.conftest import (
    sha256,
    tiny_params,
    workflow_command,
    workflow_config,
    write_workflow_config,
)

RAW_NAME = "raw data ü"  # a space and a non-ASCII letter in the raw directory's name
STACK_PREFIX = "Scan Iter é"  # ... and in every stack's and PSF's name
DATASET = "small"


def rename_with_odd_characters(raw: Path) -> None:
    """Rename every stack and PSF of a synthetic acquisition to names with spaces and non-ASCII letters."""
    meta_path = raw / "acquisition.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for channel in meta["channels"]:
        new = f"PSF é {channel['psf']}"
        (raw / channel["psf"]).rename(raw / new)
        channel["psf"] = new
    for stack in raw.glob("Scan_Iter_*.tif"):
        stack.rename(raw / stack.name.replace("Scan_Iter", STACK_PREFIX, 1))
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="session")
def small_acquisition(tmp_path_factory) -> Path:
    """Raw directory (named with a space and a non-ASCII letter) of a 1-channel, 3-timepoint, 2-tile
    acquisition whose file names contain spaces and non-ASCII letters. Treat as read-only."""
    outdir = tmp_path_factory.mktemp("small acquisition")
    generate(outdir, tiny_params(channels=1, timepoints=3))
    raw = outdir / RAW_NAME
    (outdir / "raw").rename(raw)
    rename_with_odd_characters(raw)
    return raw


def copy_acquisition(raw: Path, destination: Path) -> Path:
    """A writable copy of a raw directory (to damage in a test)."""
    shutil.copytree(raw, destination)
    return destination


def write_config(run_dir: Path, raw_dir: Path, **changes) -> Path:
    """``run_dir/config.yaml``: the default config for dataset ``small`` on ``raw_dir``, with ``changes``."""
    return write_workflow_config(run_dir, workflow_config(DATASET, raw_dir, **changes))


def run_command(run_dir: Path, *extra: str) -> list[str]:
    """``llsmflow run`` with ``run_dir/config.yaml`` on 2 cores, then ``extra``."""
    return workflow_command(run_dir / "config.yaml", *extra)


def clean_env(home: Path | None = None) -> dict[str, str]:
    """The test process's environment without cache locations, optionally with another $HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "MPLCONFIGDIR")}
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_workflow(run_dir: Path, *extra: str, env=None, umask: int | None = None, timeout: int = 900):
    """Run ``llsmflow run`` with ``run_dir/config.yaml`` in ``run_dir`` as a user would (environment
    :func:`clean_env` unless given); return the CompletedProcess, whatever its exit status."""
    return run_llsmflow(
        run_dir,
        run_dir / "config.yaml",
        *extra,
        env=env or clean_env(),
        umask=umask,
        timeout=timeout,
        check=False,
    )


def run_until(run_dir: Path, ready, timeout: float = 600, env=None) -> bool:
    """Start ``llsmflow run`` in its own process group, SIGKILL the whole group once ``ready()`` is true.

    Returns True if it was killed, False if the run ended first.
    """
    process = subprocess.Popen(
        run_command(run_dir),
        cwd=run_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env or clean_env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if ready():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.02)
        raise AssertionError(f"the kill point was not reached within {timeout} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def reference_run(small_acquisition, tmp_path_factory):
    """One uninterrupted run of the small acquisition, shared by the tests that compare with it.

    It runs as a facility user on shared storage would: umask 0027 and a fresh $HOME, from a run directory
    whose name has a space and a non-ASCII letter. Returns a dict with the run directory, the process result,
    and what was recorded before the run (raw checksums and modification times, the listings of $HOME and
    of the run directory).
    """
    base = tmp_path_factory.mktemp("reference")
    run_dir = base / "run ß"
    write_config(run_dir, small_acquisition)
    home = base / "home"
    home.mkdir()
    raw_before = {p.name: (sha256(p), p.stat().st_mtime_ns) for p in small_acquisition.iterdir()}
    home_before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    run_dir_before = sorted(p.name for p in run_dir.iterdir())
    started = time.time()
    result = run_llsmflow(run_dir, run_dir / "config.yaml", env=clean_env(home), umask=0o027)
    return {
        "run_dir": run_dir,
        "home": home,
        "result": result,
        "started": started,
        "raw_before": raw_before,
        "home_before": home_before,
        "run_dir_before": run_dir_before,
    }
