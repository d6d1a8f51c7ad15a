"""The workflow and the dask cluster on a real SLURM: a single-node controller and node started on localhost.

``tests/slurm/start_slurm.sh`` installs Debian's ``slurm-wlm`` daemons and ``munge`` when they are missing,
writes the configuration and starts the daemons; the session fixture stops, at the end, only the daemons
that it started. Needs root (package installation, daemons); skipped otherwise.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from llsmflow import hpc
from llsmflow.ingest import read_acquisition
from llsmflow.synth import generate

from .conftest import tiny_params

REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"
JOBCOMP = Path("/var/log/slurm/jobcomp.log")

pytestmark = pytest.mark.e2e


def _jobcomp_size() -> int:
    return JOBCOMP.stat().st_size if JOBCOMP.is_file() else 0


def _jobcomp(offset: int = 0) -> dict[str, dict[str, str]]:
    """Job id → fields of the jobs SLURM's job completion log (``JobCompType=jobcomp/filetxt``) recorded
    after byte ``offset``."""
    jobs = {}
    if JOBCOMP.is_file():
        with JOBCOMP.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
    return jobs


def _run(args, cwd, log_name, timeout=900):
    """Start ``llsmflow run``; SIGKILL follows SIGTERM, because Snakemake ignores SIGTERM while jobs run."""
    log = open(cwd / log_name, "w")  # noqa: SIM115 - closed by the caller through _wait
    command = ["timeout", "-k", "15", str(timeout), str(LLSMFLOW), "run", *args]
    return subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True), log


def _wait(proc_log, what):
    proc, log = proc_log
    proc.wait()
    log.close()
    if proc.returncode != 0:
        text = Path(log.name).read_text()
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{text[-6000:]}")


@pytest.fixture(scope="module")
def small_acquisition(tmp_path_factory) -> Path:
    """The tiny synthetic acquisition with one channel and three timepoints: 2 tiles × 3 stacks, 12 cluster
    jobs (the two-channel, five-timepoint one would make this test minutes longer: each job starts Snakemake
    and Python again inside its SLURM allocation)."""
    outdir = tmp_path_factory.mktemp("small_acquisition")
    generate(outdir, tiny_params(channels=1, timepoints=3))
    return outdir


@pytest.fixture(scope="module")
def slurm_and_local_runs(slurm_cluster, small_acquisition, tmp_path_factory):
    """The workflow on a tiny acquisition through profiles/slurm and, at the same time, locally."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(
        dataset="tiny", raw_dir=str(small_acquisition / "raw"), results_dir="results", work_dir="work"
    )
    config["deconvolution"]["iterations"] = 3  # fewer iterations: the test is about where jobs run
    dirs = {}
    for name in ("slurm", "local"):
        dirs[name] = tmp_path_factory.mktemp(f"run-{name}")
        (dirs[name] / "config.yaml").write_text(yaml.safe_dump(config))
    common = ["--configfile", "config.yaml", "--workflow-dir", str(REPO), "--cores", "2"]
    jobcomp_offset = _jobcomp_size()
    start = time.perf_counter()
    slurm = _run(
        [
            *common,
            "--profile",
            str(REPO / "profiles" / "slurm"),
            "--",
            # test-only speed-ups: first status poll after 5 s (production: 40 s), keep every job's SLURM log
            "--slurm-init-seconds-before-status-checks",
            "5",
            "--slurm-keep-successful-logs",
            "--latency-wait",
            "5",
        ],
        dirs["slurm"],
        "run.log",
    )
    local = _run(common, dirs["local"], "run.log")
    _wait(slurm, "workflow through SLURM")
    seconds = time.perf_counter() - start
    _wait(local, "local workflow")
    new_jobs = _jobcomp(jobcomp_offset)
    return dirs["slurm"], dirs["local"], config, new_jobs, seconds


def _steps(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "results/tiny/provenance/run-record.json").read_text())["steps"]


def test_jobs_went_through_sbatch(slurm_and_local_runs):
    slurm_dir, _, config, new_jobs, seconds = slurm_and_local_runs
    steps = _steps(slurm_dir)
    local_steps = {"ingest", "prepare_psf", "provenance"}
    for step in steps:
        if step["step"] in local_steps:
            assert step["slurm_job_id"] is None, step
        else:
            assert step["slurm_job_id"], step
    ids = {s["slurm_job_id"] for s in steps if s["slurm_job_id"]}
    # every job id is a SLURM job that completed, with its SLURM log kept by the executor plugin
    for job_id in ids:
        assert new_jobs[job_id]["JobState"] == "COMPLETED", new_jobs[job_id]
        assert list((slurm_dir / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log")), job_id
    # grouping: 12 jobs on the cluster (deskew_deconvolve: one per timepoint) in 7 submissions (profiles/slurm:
    # volumes=15, fusion=100, qc=50)
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    groups = dict(entry.split("=") for entry in profile["group-components"])
    sizes = hpc.volume_sizes(read_acquisition(config["raw_dir"]))
    resources = hpc.step_resources(sizes, config)
    expected = hpc.submissions(resources, {k: int(v) for k, v in groups.items()})
    cluster_jobs = sum(1 for s in steps if s["step"] not in local_steps)
    assert len(ids) == sum(expected.values()) == 7
    assert cluster_jobs == 12 and len(ids) < cluster_jobs
    our_submissions = [j for j in new_jobs.values() if j.get("Name") != "llsmflow-dask"]
    assert len(our_submissions) == len(ids), sorted(new_jobs)
    print(f"workflow through SLURM: {seconds:.0f} s, {cluster_jobs} jobs in {len(ids)} sbatch submissions")


def test_slurm_results_equal_local_results(slurm_and_local_runs):
    """Same tracks, positions and archive as the local run, up to FFT round-off: FFTW plans by timing
    (FFTW_MEASURE), so two runs of the same deconvolution may differ by a few float32 ulps."""
    import zarr

    slurm_dir, local_dir, *_ = slurm_and_local_runs
    a = pd.read_csv(slurm_dir / "results/tiny/tracks/ch0.csv")
    b = pd.read_csv(local_dir / "results/tiny/tracks/ch0.csv")
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a[["particle", "frame", "t_s"]], b[["particle", "frame", "t_s"]])
    np.testing.assert_allclose(a[["z_um", "y_um", "x_um"]], b[["z_um", "y_um", "x_um"]], atol=1e-4)
    np.testing.assert_allclose(a["mass"], b["mass"], rtol=1e-3)
    transforms = [
        json.loads((d / "results/tiny/provenance/transforms.json").read_text())
        for d in (slurm_dir, local_dir)
    ]
    assert transforms[0]["tiles"].keys() == transforms[1]["tiles"].keys()
    for key in transforms[0]["tiles"]:
        np.testing.assert_allclose(
            transforms[0]["tiles"][key]["origin_um"], transforms[1]["tiles"][key]["origin_um"], atol=1e-4
        )
    images = [
        zarr.open_array(str(d / "results/tiny/tiny.ome.zarr" / "s0"), mode="r")[:]
        for d in (slurm_dir, local_dir)
    ]
    assert images[0].shape == images[1].shape
    np.testing.assert_allclose(images[0], images[1], rtol=1e-5, atol=1e-5 * float(np.abs(images[1]).max()))


def test_dask_slurm_cluster(slurm_cluster, tiny_acquisition, tmp_path):
    """Fusion and chunked deconvolution on dask workers that are SLURM jobs; the jobs end with the step."""
    from llsmflow.decon import deconvolve
    from llsmflow.geometry import deskew
    from llsmflow.hpc.cluster import dask_cluster
    from llsmflow.io import read_volume, write_volume
    from llsmflow.stitch import Tile, fuse_to_zarr, read_fused

    acq = read_acquisition(tiny_acquisition / "raw")
    voxel = acq.deskewed_voxel_size_um
    tiles, positions = [], {}
    for row in acq.tiles.itertuples():
        raw = read_volume(acq.sample_path(row.tile, 0, 0))
        volume = deskew(raw.data, acq.dz_um, acq.dx_um, acq.angle_deg).data
        path = tmp_path / f"{row.tile}.ome.tif"
        write_volume(path, volume, voxel)
        tiles.append(Tile(row.tile, (row.z_um, row.y_um, row.x_um), volume.shape, path=str(path)))
        positions[row.tile] = (row.z_um, row.y_um, row.x_um)
    psf = read_volume(acq.psf_path(0))
    decon_args = (volume, psf.data, voxel, psf.voxel_size_um)
    decon_kwargs = {"iterations": 3, "backend": "cpu", "max_memory_gb": 0.02}
    here = deconvolve(*decon_args, **decon_kwargs)
    fuse_to_zarr(tiles, positions, voxel, tmp_path / "here.zarr", chunks=(16, 32, 64))

    settings = {
        "cluster": "slurm",
        "workers": 1,
        "cores": 1,
        "memory": "1GB",
        "walltime": "00:10:00",
        "interface": "lo",  # the scheduler and worker talk over 127.0.0.1 only
        "local_directory": str(tmp_path / "dask"),
        "log_directory": str(tmp_path / "dask-logs"),
        "timeout_s": 120,
    }
    with dask_cluster(settings) as client:
        job_ids = [job.job_id for job in client.cluster.workers.values()]
        assert len(job_ids) == 1 and job_ids[0]
        state = subprocess.run(
            ["squeue", "-h", "-j", job_ids[0], "-o", "%T %j"], capture_output=True, text=True
        )
        assert state.stdout.split() == ["RUNNING", "llsmflow-dask"], state.stdout + state.stderr
        worker_hosts = {w["host"] for w in client.scheduler_info()["workers"].values()}
        assert worker_hosts == {"127.0.0.1"}
        there = deconvolve(*decon_args, **decon_kwargs, client=client)
        fuse_to_zarr(tiles, positions, voxel, tmp_path / "there.zarr", chunks=(16, 32, 64), client=client)
    assert here.chunks == there.chunks > 1
    np.testing.assert_allclose(there.data, here.data, rtol=1e-5, atol=1e-5 * float(here.data.max()))
    np.testing.assert_array_equal(
        read_fused(tmp_path / "here.zarr")[0], read_fused(tmp_path / "there.zarr")[0]
    )
    assert any(job_ids[0] in p.name for p in (tmp_path / "dask-logs").iterdir())  # its SLURM output
    # closing the cluster cancelled the worker job
    for _ in range(50):
        state = subprocess.run(["squeue", "-h", "-j", job_ids[0], "-o", "%T"], capture_output=True, text=True)
        if state.stdout.strip() in ("", "CANCELLED", "COMPLETED"):
            break
        time.sleep(0.2)
    assert state.stdout.strip() in ("", "CANCELLED", "COMPLETED"), state.stdout


# ------------------------------------------------------------------ requests that the partition cannot meet


def _node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout
    return max(int("".join(c for c in line if c.isdigit())) for line in out.split())


def _profile_copy(tmp_path: Path, **changes) -> Path:
    """A copy of the shipped profiles/slurm with top-level ``changes`` (the shipped one stays unchanged)."""
    settings = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    settings.update(changes)
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    return profile


def _small_config(run_dir: Path, raw: Path) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(dataset="tiny", raw_dir=str(raw), results_dir="results", work_dir="work")
    config["deconvolution"]["iterations"] = 3
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir / "config.yaml"


def _one_error(result, command="run") -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"llsmflow {command}: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def test_shipped_profile_cores_capped_to_the_node(slurm_cluster, small_acquisition, tmp_path):
    """The shipped profile asks 8 cores per submission; on smaller nodes `estimate` and `run` cap them at the
    node's CPUs (a grouped submission would otherwise pend forever with reason PartitionConfig)."""
    cpus = _node_cpus()
    if cpus >= 8:
        pytest.skip(f"the local SLURM node has {cpus} CPUs, enough for the profile's 8 cores")
    raw = small_acquisition / "raw"
    estimate = subprocess.run(
        [str(LLSMFLOW), "estimate", str(raw), "--profile", str(REPO / "profiles" / "slurm")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert estimate.returncode == 0, estimate.stderr
    assert f"have {cpus} CPUs: capped at {cpus}" in estimate.stdout
    # what `llsmflow watch` applies before the first stack exists: the node's CPUs only
    from llsmflow.hpc.resources import cap_at_node_cpus

    capped, note = cap_at_node_cpus(REPO / "profiles" / "slurm", None)
    assert capped == cpus and "8 cores per submission requested, but the nodes" in note
    assert cap_at_node_cpus(REPO / "profiles" / "slurm", 1) == (1, None)
    config = _small_config(tmp_path, raw)
    dry = subprocess.run(
        [
            str(LLSMFLOW),
            "run",
            "--profile",
            "slurm",
            "--configfile",
            str(config),
            "--workflow-dir",
            str(REPO),
            "--",
            "--dry-run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "8 cores per submission requested, but the nodes of SLURM partition" in dry.stderr
    running = next(line for line in dry.stdout.splitlines() if line.startswith("running: "))
    assert f"--cores {cpus}" in running


def test_time_over_partition_limit_refused(slurm_cluster, small_acquisition, tmp_path):
    """A partition whose time limit is below a step's request: `run` and `estimate` refuse with one line
    naming the step, its request and the limit, and nothing is submitted."""
    name = "llsmflow_short"
    subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)
    made = subprocess.run(
        ["scontrol", "create", f"PartitionName={name}", "Nodes=ALL", "MaxTime=2", "State=UP"],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create a SLURM partition here: {made.stderr.strip()}")
    try:
        profile = _profile_copy(
            tmp_path, **{"default-resources": {"mem_mb": 1000, "runtime": 30, "slurm_partition": name}}
        )
        raw = small_acquisition / "raw"
        config = _small_config(tmp_path / "run", raw)
        run = subprocess.run(
            [
                str(LLSMFLOW),
                "run",
                "--profile",
                str(profile),
                "--configfile",
                str(config),
                "--workflow-dir",
                str(REPO),
            ],
            cwd=tmp_path / "run",
            capture_output=True,
            text=True,
            timeout=300,
        )
        line = _one_error(run)
        assert f"SLURM partition {name} allows 2 min" in line and "requests 5 min per job" in line
        assert "expected a partition with a longer time limit" in line
        assert not (tmp_path / "run" / ".snakemake").exists()
        estimate = subprocess.run(
            [str(LLSMFLOW), "estimate", str(raw), "--profile", str(profile)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert f"SLURM partition {name} allows 2 min" in _one_error(estimate, "estimate")
    finally:
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)


def test_job_pending_forever_stops_the_run(slurm_cluster, small_acquisition, tmp_path):
    """A job that SLURM keeps PENDING for a reason that cannot clear (here a site's `set-resources` asking more
    CPUs than a node has: PartitionConfig) stops the run with that reason instead of waiting forever, and
    the run's jobs are cancelled."""
    profile = _profile_copy(tmp_path, **{"set-resources": {"deskew_deconvolve": {"cpus_per_task": _node_cpus() + 6}}})
    config = _small_config(tmp_path / "run", small_acquisition / "raw")
    env = dict(os.environ, LLSMFLOW_PENDING_POLL_S="2")
    start = time.monotonic()
    run = subprocess.run(
        [
            str(LLSMFLOW),
            "run",
            "--profile",
            str(profile),
            "--configfile",
            str(config),
            "--workflow-dir",
            str(REPO),
        ],
        cwd=tmp_path / "run",
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 2, run.stderr[-4000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("llsmflow run: error:")]
    assert len(errors) == 1, run.stderr[-4000:]
    assert "is pending for reason PartitionConfig" in errors[0] and "expected requests that" in errors[0]
    assert time.monotonic() - start < 300
    left = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True).stdout
    assert str((tmp_path / "run").resolve()) not in left  # its jobs were cancelled
