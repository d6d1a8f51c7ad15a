"""Fixtures for the reliability tests: a small acquisition, workflow runs driven as a user drives them.

The acquisition is smaller than ``tiny_acquisition`` (1 channel, 3 timepoints, 2 tiles: 23 workflow jobs) so that
the several runs these tests need (a reference run, a run killed at three points and resumed, a run on a full
disk) stay within a few minutes on two cores. Its raw directory and stack names contain spaces and non-ASCII
characters, so every run also checks that such names work end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llsmflow.synth import generate
from tests.conftest import tiny_params

REPO = Path(__file__).resolve().parents[2]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"
RAW_NAME = "raw data ü"  # a space and a non-ASCII letter in the raw directory's name
STACK_PREFIX = "Scan Iter é"  # ... and in every stack's and PSF's name
DATASET = "small"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(dataset=DATASET, raw_dir=str(raw_dir), results_dir="results", work_dir="work")
    config.update(changes)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def run_command(run_dir: Path, *extra: str) -> list[str]:
    return [
        str(LLSMFLOW),
        "run",
        "--configfile",
        str(run_dir / "config.yaml"),
        "--workflow-dir",
        str(REPO),
        "--cores",
        "2",
        *extra,
    ]


def clean_env(home: Path | None = None) -> dict[str, str]:
    """The test process's environment without cache locations, optionally with another $HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "MPLCONFIGDIR")}
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_workflow(run_dir: Path, *extra: str, env=None, umask: int | None = None, timeout: int = 900):
    """Run ``llsmflow run`` in ``run_dir`` as a user would; return the CompletedProcess."""
    preexec = None if umask is None else (lambda: os.umask(umask))
    return subprocess.run(
        run_command(run_dir, *extra),
        cwd=run_dir,
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
        preexec_fn=preexec,
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
    result = run_workflow(run_dir, env=clean_env(home), umask=0o027)
    if result.returncode != 0:
        pytest.fail(f"reference run failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return {
        "run_dir": run_dir,
        "home": home,
        "result": result,
        "started": started,
        "raw_before": raw_before,
        "home_before": home_before,
        "run_dir_before": run_dir_before,
    }
