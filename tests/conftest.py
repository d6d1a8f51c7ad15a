"""Shared fixtures: a tiny synthetic acquisition, generated once per test session."""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"


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


def workflow_command(config_path, *extra: str, cores: int | None = 2) -> list[str]:
    """``llsmflow run --configfile CONFIG --workflow-dir REPO [--cores N] EXTRA...`` as a user types it."""
    command = [str(LLSMFLOW), "run", "--configfile", str(config_path), "--workflow-dir", str(REPO)]
    if cores is not None:
        command += ["--cores", str(cores)]
    return command + list(extra)


def run_workflow(
    run_dir,
    config_path="config.yaml",
    *extra: str,
    env=None,
    cores: int | None = 2,
    timeout: float = 900,
    umask: int | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``llsmflow run`` in ``run_dir`` as a user would and return the CompletedProcess.

    Parameters
    ----------
    run_dir : path
        Working directory of the run (relative ``results_dir``/``work_dir`` of the config resolve here).
    config_path : path
        The config file (relative to ``run_dir`` or absolute).
    *extra : str
        Further arguments, e.g. ``"--", "--dry-run"`` for Snakemake.
    env : dict, optional
        The run's whole environment (default: this process's).
    cores : int or None
        ``--cores``; None leaves it to the profile.
    timeout : float
        Seconds before the run is killed and the test fails.
    umask : int, optional
        The run's umask (default: inherited).
    check : bool
        Fail the test, with the tails of stdout and stderr, when the run exits non-zero.
    """
    preexec = None if umask is None else (lambda: os.umask(umask))
    result = subprocess.run(
        workflow_command(config_path, *extra, cores=cores),
        cwd=run_dir,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"workflow in {run_dir} failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def workflow_config(dataset: str, raw_dir, **changes) -> dict:
    """The default config (``config/config.yaml``) for ``dataset`` on ``raw_dir``, outputs under the run
    directory (``results``, ``work``), top-level ``changes`` applied."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(dataset=dataset, raw_dir=str(raw_dir), results_dir="results", work_dir="work")
    config.update(changes)
    return config


def write_workflow_config(run_dir: Path, config: dict) -> Path:
    """``run_dir/config.yaml`` holding ``config`` (``run_dir`` is created)."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def zarr_array_names(path) -> list[str]:
    """Names of a Zarr group's top-level arrays (an archive's resolution levels), from the folder's Zarr nodes
    (``zarr.json``, or ``.zarray`` for zarr v2) rather than by ``group.arrays()``, which in zarr 3 warns about
    each non-Zarr entry of an archive (``tables``, ``checksums.sha256``); any other warning still shows."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    nodes = sorted(p.name for p in Path(path).iterdir() if (p / "zarr.json").is_file() or (p / ".zarray").is_file())
    return [name for name in nodes if isinstance(group[name], zarr.Array)]


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One fast whole-workflow run through `llsmflow run`, shared by the report, status and summary tests.
    Treat its directory as read-only: a test that needs to change something works on a copy (or puts it back
    as it was).

    2 tiles × 2 channels × 3 timepoints of the tiny acquisition, 3 Richardson–Lucy iterations. Returns a
    namespace with ``run_dir``, ``config_path``, ``config``, ``acquisition`` (the synth directory), ``stdout``.
    """
    run_dir = tmp_path_factory.mktemp("tiny_run")
    acquisition = run_dir / "acquisition"
    generate(acquisition, tiny_params(timepoints=3))
    config = workflow_config("tiny", acquisition / "raw")
    config["deconvolution"]["iterations"] = 3
    config_path = write_workflow_config(run_dir, config)
    result = run_workflow(run_dir, config_path)
    return SimpleNamespace(
        run_dir=run_dir,
        config_path=config_path,
        config=config,
        acquisition=acquisition,
        repo=REPO,
        stdout=result.stdout,
    )


SECRET_TOKEN = "fake-secret-value-8d2e1"
"""Planted in the environment of :func:`full_run` (``LLSMFLOW_TEST_TOKEN``): must appear in no output."""
SECRET_PASSWORD = "pw-do-not-record-55"
"""The password in the container reference planted in :func:`full_run`: must appear in no output."""


@pytest.fixture(scope="session")
def full_run(tiny_acquisition, tmp_path_factory):
    """The whole workflow once, default config, on a private copy of the full tiny acquisition (5 timepoints),
    with secrets planted in its environment; shared by the end-to-end and reproduce tests.

    Treat it as read-only: a test that changes the run directory, the crate or the raw copy works on a copy
    or restores what it changed (bytes and modification time), so the tests pass in any order.

    Returns a namespace with ``run_dir``, ``config_path``, ``config``, ``raw_dir`` (the private copy the run
    read), ``raw_before`` (``{name: sha256}`` of ``raw_dir`` taken before the run), ``crate``
    (``results/tiny/provenance``) and ``stdout``.
    """
    base = tmp_path_factory.mktemp("full_run")
    raw_dir = base / "raw"
    shutil.copytree(tiny_acquisition / "raw", raw_dir)
    raw_before = {p.name: sha256(p) for p in raw_dir.iterdir()}
    run_dir = base / "run"
    config = workflow_config("tiny", raw_dir)
    config_path = write_workflow_config(run_dir, config)
    env = dict(
        os.environ,
        LLSMFLOW_TEST_TOKEN=SECRET_TOKEN,
        LLSMFLOW_CONTAINER_IMAGE=f"docker://reviewer:{SECRET_PASSWORD}@ghcr.io/lab/llsmflow@sha256:{'c' * 64}",
    )
    result = run_workflow(run_dir, config_path, env=env)
    return SimpleNamespace(
        run_dir=run_dir,
        config_path=config_path,
        config=config,
        raw_dir=raw_dir,
        raw_before=raw_before,
        crate=run_dir / "results" / "tiny" / "provenance",
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


# ------------------------------------------------------------------ a real SLURM on localhost (tests/slurm/)

START_SLURM = REPO / "tests" / "slurm" / "start_slurm.sh"


def _daemons_running() -> set[str]:
    result = subprocess.run(["bash", str(START_SLURM), "started"], capture_output=True, text=True, timeout=60)
    return set(result.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (partition ``main``); stops the daemons this fixture started."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (apt-get install slurm-wlm munge, daemons)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("slurmctld is not installed and apt-get is not available to install it")
    before = _daemons_running()
    result = subprocess.run(["bash", str(START_SLURM)], capture_output=True, text=True, timeout=900)
    ours = sorted(_daemons_running() - before)
    try:
        if result.returncode != 0:
            pytest.fail(f"start_slurm.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        yield
    finally:
        if ours:  # `stop` with no names would stop every daemon, including ones we did not start
            subprocess.run(["bash", str(START_SLURM), "stop", *ours], capture_output=True, text=True, timeout=120)
