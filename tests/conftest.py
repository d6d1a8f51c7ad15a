"""Shared fixtures: a tiny synthetic acquisition, generated once per test session."""

import os
import time
from pathlib import Path

import pytest

from llsmflow.synth import SynthParams, generate


def _find_real_data() -> Path:
    """The shared real LLSM samples: $LLSMFLOW_REAL_DATA, else ../shared/data/real beside the checkout."""
    candidates = [
        os.environ.get("LLSMFLOW_REAL_DATA"),
        Path(__file__).resolve().parents[2] / "shared/data/real",
        "/work/shared/data/real",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


REAL_DATA = _find_real_data()


def tiny_params(**overrides) -> SynthParams:
    """Small but complete: 2 tiles × 2 channels × 5 timepoints of 32×64×96 raw stacks."""
    params = SynthParams(raw_shape_zyx=(32, 64, 96), particles_per_tile=6)
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


@pytest.fixture(scope="session")
def tiny_acquisition(tmp_path_factory) -> Path:
    """Directory holding raw/ and truth/ of the tiny synthetic acquisition (treat as read-only)."""
    outdir = tmp_path_factory.mktemp("tiny_acquisition")
    generate(outdir, tiny_params())
    return outdir


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real LLSM sample data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless Chromium (Debian's ``chromium``); apt-installed when absent and we are root (CI)."""
    import shutil
    import subprocess

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            env=env,
            capture_output=True,
            timeout=1200,
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium not found (Debian: apt-get install chromium); needed to render the QC report")
    return found


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One fast whole-workflow run through `llsmflow run`, shared by the report, status and summary tests.

    2 tiles × 2 channels × 3 timepoints of the tiny acquisition, 3 Richardson–Lucy iterations. Returns a
    namespace with ``run_dir``, ``config_path``, ``config``, ``acquisition`` (the synth directory), ``stdout``.
    """
    import subprocess
    import sys
    from types import SimpleNamespace

    import yaml

    repo = Path(__file__).resolve().parents[1]
    run_dir = tmp_path_factory.mktemp("tiny_run")
    acquisition = run_dir / "acquisition"
    generate(acquisition, tiny_params(timepoints=3))
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    config.update(dataset="tiny", raw_dir=str(acquisition / "raw"), results_dir="results", work_dir="work")
    config["deconvolution"]["iterations"] = 3
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "llsmflow"),
            "run",
            "--configfile",
            str(config_path),
            "--workflow-dir",
            str(repo),
            "--cores",
            "2",
        ],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(f"workflow failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return SimpleNamespace(
        run_dir=run_dir,
        config_path=config_path,
        config=config,
        acquisition=acquisition,
        repo=repo,
        stdout=result.stdout,
    )


_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    """Name the artifacts this session kept (e.g. the QC report screenshot) at the end of the test output."""
    artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
    kept = [p for p in sorted(artifacts.glob("*")) if p.is_file() and p.stat().st_mtime >= _SESSION_START]
    if kept:
        terminalreporter.write_sep("-", "test artifacts kept")
        for path in kept:
            terminalreporter.write_line(str(path))
