"""Issue 17, cases 3, 4, 8 and 9 (the run's part): secrets never leave the config, one lock per dataset covers
its results and work directories with the effective config, and outputs that cannot or must not be written
are refused before any job runs.

One real run (with planted secrets, its work directory shared) serves the lock tests while it runs and the
secret check once it has finished.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest

from tests.conftest import workflow_config, write_workflow_config
from tests.faults.conftest import DATASET, clean_env, run_command, run_workflow, write_config

PASSWORD = "pw-in-container-url-93f1"
DIRECTIVE_SECRET = "token-in-directive-7c2a"
CONTAINER = f"docker://reviewer:{PASSWORD}@ghcr.io/lab/llsmflow@sha256:{'c' * 64}"


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llsmflow run: error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def secret_run(small_acquisition, tmp_path_factory):
    """A real run from ``a/`` with secrets planted in its config and its work directory in ``shared work/``
    (absolute), started in the background; the fixture waits until it holds its locks."""
    base = tmp_path_factory.mktemp("secret_run")
    shared_work = base / "shared work"
    run_dir = base / "a"
    config = write_config(
        run_dir,
        small_acquisition,
        work_dir=str(shared_work),
        containers={"cpu": CONTAINER, "require_digest": True},
        dask={"cluster": "local", "job_extra_directives": [f"--export=ALL,LAB_API_TOKEN={DIRECTIVE_SECRET}"]},
    )
    assert PASSWORD in config.read_text(encoding="utf-8")
    stdout, stderr = (base / "stdout.txt").open("wb"), (base / "stderr.txt").open("wb")
    process = subprocess.Popen(
        run_command(run_dir),
        cwd=run_dir,
        stdout=stdout,
        stderr=stderr,
        env=clean_env(),
        start_new_session=True,
    )
    locks = [run_dir / "results" / f".llsmflow-{DATASET}.lock", shared_work / f".llsmflow-{DATASET}.lock"]
    try:
        deadline = time.monotonic() + 180
        while not all(lock.exists() for lock in locks):
            assert process.poll() is None, (base / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never took its locks"
            time.sleep(0.05)
        yield SimpleNamespace(
            base=base,
            run_dir=run_dir,
            work=shared_work,
            process=process,
            locks=locks,
            small=small_acquisition,
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stdout.close()
        stderr.close()


def test_lock_covers_work_dir_and_config_overrides(secret_run):
    """Case 4, with real concurrent runs: another directory sharing ``work_dir`` (other ``results_dir``) is
    refused; so is ``llsmflow run -- --config dataset=small`` with a config naming another dataset."""
    assert secret_run.process.poll() is None
    other = secret_run.base / "b"
    write_config(other, secret_run.small, work_dir=str(secret_run.work))
    line = one_error(run_workflow(other, timeout=120))
    assert str(secret_run.locks[1]) in line
    assert f"pid {secret_run.process.pid}" in line and "in use by another llsmflow run" in line
    assert "expected one run at a time" in line
    assert not (other / ".snakemake").exists()  # Snakemake never started

    # the same directory, a config for another dataset, the locked one given on the command line
    overridden = secret_run.base / "c"
    write_workflow_config(
        overridden,
        workflow_config("other", secret_run.small, results_dir=str(secret_run.run_dir / "results")),
    )
    line = one_error(run_workflow(overridden, "--", "--config", f"dataset={DATASET}", timeout=120))
    assert str(secret_run.locks[0]) in line and "in use by another llsmflow run" in line
    assert not (overridden / ".snakemake").exists()
    assert secret_run.process.poll() is None  # the first run goes on undisturbed


def _files_holding_secrets(roots, skip=()) -> tuple[int, list[str]]:
    checked, found = 0, []
    for root in roots:
        files = (
            [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        )
        for path in files:
            if path in skip:
                continue
            data = path.read_bytes()
            checked += 1
            found += [f"{path}: {s}" for s in (PASSWORD, DIRECTIVE_SECRET) if s.encode() in data]
    return checked, found


def test_no_secret_in_snakemake_metadata_work_or_logs(secret_run):
    """Case 3: the planted container password and directive token appear in no file Snakemake or the jobs
    write outside the results: .snakemake/ (metadata: params and container reference; logs; scripts), the work
    directory, the run's output; and the container password in no file at all."""
    assert secret_run.process.wait(timeout=900) == 0, (secret_run.base / "stderr.txt").read_text()[-4000:]
    run_dir = secret_run.run_dir
    metadata = list((run_dir / ".snakemake" / "metadata").iterdir())
    assert len(metadata) > 20  # Snakemake recorded the jobs (params, container reference, ...)
    assert (run_dir / "results" / DATASET / "provenance" / "ro-crate-metadata.json").is_file()
    roots = [
        run_dir / ".snakemake",
        secret_run.work,
        secret_run.base / "stdout.txt",
        secret_run.base / "stderr.txt",
    ]
    checked, found = _files_holding_secrets(roots)
    assert checked > 50 and not found, found
    everything = [p for p in run_dir.rglob("*") if p.is_file() and p != run_dir / "config.yaml"]
    assert not [p for p in everything if PASSWORD.encode() in p.read_bytes()]


def test_no_secret_in_results(secret_run):
    """Case 3, results/: the crate's config and the QC report hold neither planted secret."""
    assert secret_run.process.wait(timeout=900) == 0
    checked, found = _files_holding_secrets([secret_run.run_dir / "results"])
    assert checked > 50 and not found, found


def test_secret_named_key_refused(small_acquisition, tmp_path):
    """A key the schema does not know (e.g. a token) is refused before anything runs, so it cannot be
    recorded."""
    write_config(tmp_path, small_acquisition, api_token="tok-never-recorded")
    line = one_error(run_workflow(tmp_path, timeout=120))
    assert "api_token" in line and "expected only the keys documented in config/README.md" in line
    assert not (tmp_path / "results").exists() and not (tmp_path / ".snakemake").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only file system (a real ro tmpfs mount where allowed; else mode 0555 for a user
    who is not root)."""
    path = tmp_path / "ro"
    path.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = (
            subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)]).returncode == 0
        )
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root cannot mount a read-only file system here")
        path.chmod(0o555)
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)
        else:
            path.chmod(0o755)


def test_read_only_results_refused(small_acquisition, tmp_path, read_only_dir):
    """Case 8: a read-only results directory → one line naming it, exit 2, before any job runs."""
    run_dir = tmp_path / "run"
    write_config(run_dir, small_acquisition, results_dir=str(read_only_dir))
    line = one_error(run_workflow(run_dir, timeout=120))
    assert str(read_only_dir / DATASET) in line and "expected a writable results directory" in line
    assert "Errno" not in line
    assert not (run_dir / "work").exists() and not (run_dir / ".snakemake").exists()


def test_long_dataset_name_refused(small_acquisition, tmp_path):
    """Case 8: a 240-character dataset name → one line naming the limit, exit 2, nothing written."""
    run_dir = tmp_path / "run"
    name = "d" * 240
    write_workflow_config(run_dir, workflow_config(name, small_acquisition))
    line = one_error(run_workflow(run_dir, timeout=120))
    assert "dataset name of 240 characters" in line and "expected a dataset name of at most" in line
    assert "Errno" not in line
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("key", ["results_dir", "work_dir"])
def test_outputs_inside_raw_dir_refused(small_acquisition, tmp_path, key):
    """Case 9: results or work directories inside raw_dir are refused; nothing is written into the raw data."""
    raw = shutil.copytree(small_acquisition, tmp_path / "raw")
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    run_dir = tmp_path / "run"
    write_config(run_dir, raw, **{key: str(raw / "out")})
    line = one_error(run_workflow(run_dir, timeout=120))
    what = key.split("_")[0]
    assert f"lies inside raw_dir {raw}" in line and f"expected {key} outside the raw data" in line
    assert f"the {what} directory" in line
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before
