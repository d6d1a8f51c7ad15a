"""Cluster resources, `llsmflow estimate`, `llsmflow profile init` and the dask client paths (no SLURM needed)."""

import math
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml

from llsmflow import hpc
from llsmflow.errors import LlsmflowError
from llsmflow.hpc import resources as resource_model
from llsmflow.hpc.cluster import dask_cluster, settings_from, slurm_cluster_kwargs
from llsmflow.ingest import read_acquisition
from llsmflow.io import read_volume

REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def _config(**changes) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key] = config[key] | value
        else:
            config[key] = value
    return config


@pytest.fixture(scope="module")
def acquisition(tiny_acquisition):
    return read_acquisition(tiny_acquisition / "raw")


@pytest.fixture(scope="module")
def deskewed_tile(acquisition, tmp_path_factory):
    """One raw stack of the tiny acquisition deskewed as the workflow does, and its prepared PSF."""
    from llsmflow.decon import prepare_psf
    from llsmflow.geometry import deskew

    raw = read_volume(acquisition.sample_path(acquisition.tiles["tile"][0], 0, 0))
    result = deskew(raw.data, acquisition.dz_um, acquisition.dx_um, acquisition.angle_deg)
    shapes = []
    for channel in range(len(acquisition.channels)):
        psf = read_volume(acquisition.psf_path(channel))
        shapes.append(prepare_psf(psf.data, psf.voxel_size_um, acquisition.deskewed_voxel_size_um).shape)
    return raw.data, result.data, tuple(int(n) for n in np.max(shapes, axis=0))


def test_volume_sizes_match_the_real_volumes(acquisition, deskewed_tile, tiny_acquisition):
    raw, deskewed, psf_shape = deskewed_tile
    sizes = hpc.volume_sizes(acquisition)
    assert sizes.raw_shape == raw.shape
    assert sizes.raw_mb == pytest.approx(raw.nbytes / 1e6)
    assert sizes.deskewed_shape == deskewed.shape
    assert sizes.deskewed_mb == pytest.approx(deskewed.astype(np.float32).nbytes / 1e6)
    assert sizes.psf_shape == psf_shape  # the largest prepared PSF over the channels
    assert (sizes.samples, sizes.tiles, sizes.channels, sizes.timepoints) == (20, 2, 2, 5)
    from llsmflow.stitch import fused_extent

    positions = {row.tile: (row.z_um, row.y_um, row.x_um) for row in acquisition.tiles.itertuples()}
    shapes = dict.fromkeys(positions, deskewed.shape)
    assert sizes.fused_shape == fused_extent(positions, shapes, acquisition.deskewed_voxel_size_um)[1]
    # deskew.rotate: the coverslip-frame volume, larger than the objective-frame one, on a grid of dx
    from llsmflow.deskew.rotate import deskew_rotate

    rotated, voxel, _ = deskew_rotate(raw, acquisition.dz_um, acquisition.dx_um, acquisition.angle_deg)
    assert hpc.volume_sizes(acquisition, rotate=True).deskewed_shape == rotated.shape
    assert math.prod(rotated.shape) > math.prod(deskewed.shape) and voxel == (acquisition.dx_um,) * 3
    # and the PSF kernel as the prepare_psf step makes it for rotated data (rotated on the grid of dx); the
    # bound used when a PSF cannot be prepared at parse time holds it
    from llsmflow.decon.psf import prepare_psf_for_run

    kernels = []
    for c, channel in enumerate(acquisition.channels):
        stack = read_volume(acquisition.psf_path(c)).data
        kernel, _, _ = prepare_psf_for_run(
            stack, channel["psf_voxel_size_um"], voxel, angle_deg=acquisition.angle_deg,
            stage_step_um=acquisition.dz_um, rotate=True,
        )  # fmt: skip
        kernels.append(kernel.shape)
        bound = resource_model._psf_shape_bound(stack.shape, channel["psf_voxel_size_um"], voxel, True, "x")
        assert all(k <= b for k, b in zip(kernel.shape, bound, strict=True)), (kernel.shape, bound)
    assert hpc.volume_sizes(acquisition, rotate=True).psf_shape == tuple(np.max(kernels, axis=0))
    # without raw_shape_zyx in the metadata the first stack's header gives the same shape
    acquisition.metadata.pop("raw_shape_zyx")
    try:
        assert hpc.volume_sizes(acquisition).raw_shape == raw.shape
    finally:
        acquisition.metadata["raw_shape_zyx"] = list(raw.shape)


def test_deconvolution_requests_cover_the_measured_working_set(acquisition, deskewed_tile):
    """The memory request of a CPU deskew_deconvolve job covers what deconvolving a real tiny volume
    allocates; a job of a timepoint (4 volumes, one at a time) requests one volume's memory, not four."""
    from llsmflow.decon import deconvolve, estimate_memory

    raw, deskewed, psf_shape = deskewed_tile
    sizes = hpc.volume_sizes(acquisition)
    cpu = hpc.step_resources(sizes, _config())["deskew_deconvolve"]
    psf = read_volume(acquisition.psf_path(0))
    tracemalloc.start()
    try:
        deconvolve(deskewed, psf.data, acquisition.deskewed_voxel_size_um, psf.voxel_size_um, backend="cpu")
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert cpu.mem_mb >= peak_mb + resource_model._BASE_MB, (cpu.mem_mb, peak_mb)
    assert (cpu.gpu, cpu.gpu_mem_mb) == (0, 0)
    assert cpu.jobs == 5 and cpu.threads == 2  # a job per timepoint
    single = hpc.step_resources(sizes, _config(jobs={"unit": "volume"}))["deskew_deconvolve"]
    assert single.jobs == 20 and single.mem_mb == cpu.mem_mb and single.runtime_min <= cpu.runtime_min
    gpu = hpc.step_resources(sizes, _config(deconvolution={"backend": "cupy"}), cores=8)["deskew_deconvolve"]
    assert gpu.gpu == 1
    assert gpu.threads == 8  # a GPU job takes the whole submission: one GPU deconvolution at a time
    working_mb = estimate_memory(deskewed.shape, psf_shape) / 1e6
    assert working_mb <= gpu.gpu_mem_mb <= working_mb + 1
    budget = hpc.step_resources(sizes, _config(deconvolution={"backend": "cupy", "max_memory_gb": 0.001}))
    assert budget["deskew_deconvolve"].gpu_mem_mb == 1


def test_runtime_and_memory_grow_on_retry():
    assert [hpc.grow(30, a) for a in (1, 2, 3)] == [30, 60, 120]
    assert hpc.grow(10.2, 1) == 11
    assert resource_model._runtime_min(0) == resource_model._RUNTIME_FLOOR_MIN
    # 1 h of measured work: the request is the safety factor times it, plus start-up
    assert resource_model._runtime_min(3600) == math.ceil((60 + 3 * 3600) / 60)


def test_submissions_with_groups(acquisition):
    resources = hpc.step_resources(hpc.volume_sizes(acquisition), _config())
    ungrouped = hpc.submissions(resources, {})
    # deskew_deconvolve and fuse: a job per timepoint
    assert sum(ungrouped.values()) == 5 + 1 + 5 + 1 + 2 + 4 + 1
    grouped = hpc.submissions(resources, {"volumes": 20, "fusion": 10, "qc": 50})
    assert grouped == {
        "volumes": 1,
        "register": 1,
        "fusion": 1,
        "archive": 1,
        "track": 2,
        "qc": 1,
        "qc_mosaic": 1,
    }
    assert hpc.submissions(resources, {"volumes": 3})["volumes"] == 2


def test_estimate_command(tiny_acquisition):
    result = subprocess.run(
        [
            str(LLSMFLOW),
            "estimate",
            str(tiny_acquisition / "raw"),
            "--profile",
            str(REPO / "profiles" / "slurm"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "20 raw stacks (2 tiles × 2 channels × 5 timepoints) of (32, 64, 96) voxels" in out
    rows = {
        line.split()[0]: line.split() for line in out.splitlines() if re.match(r"^[a-z_]+\s+\d+\s+\d", line)
    }
    sizes = hpc.volume_sizes(read_acquisition(tiny_acquisition / "raw"))
    expected = hpc.step_resources(sizes, _config(), cores=8)
    for name in ("deskew_deconvolve", "register", "fuse", "archive", "track", "qc_tile", "qc_mosaic"):
        jobs, cores, mem, gpu, gpu_mem, minutes = (int(v) for v in rows[name][1:7])
        step = expected[name]
        assert (jobs, cores, mem, gpu, gpu_mem, minutes) == (
            step.jobs,
            step.threads,
            step.mem_mb,
            step.gpu,
            step.gpu_mem_mb,
            step.runtime_min,
        )
    assert "sbatch submissions: 8 (" in out  # the profile's groups: 26 jobs in 8 submissions
    gpu = subprocess.run(
        [str(LLSMFLOW), "estimate", str(tiny_acquisition / "raw"), "--backend", "cupy", "--cores", "4"],
        capture_output=True,
        text=True,
    )
    assert gpu.returncode == 0, gpu.stderr
    row = next(line.split() for line in gpu.stdout.splitlines() if line.startswith("deskew_deconvolve"))
    assert row[2] == "4" and row[4] == "1" and int(row[5]) > 0
    missing = subprocess.run([str(LLSMFLOW), "estimate", "/nonexistent/raw"], capture_output=True, text=True)
    assert missing.returncode == 2 and "/nonexistent/raw" in missing.stderr


def _dry_run(config: dict, run_dir: Path, profile: Path) -> str:
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            str(SNAKEMAKE),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(config_path),
            "--profile",
            str(profile),
            "--dry-run",
            "--cores",
            "4",
        ],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _rule_resources(output: str, rule: str) -> list[str]:
    blocks = re.findall(rf"rule {rule}:\n(.*?)\n\n", output, flags=re.S)
    return [re.search(r"resources: (.*)", b).group(1) for b in blocks]


def test_profile_init_flags_and_snakemake_accepts_it(tmp_path, tiny_acquisition):
    outdir = tmp_path / "profiles" / "mysite"
    result = subprocess.run(
        [
            str(LLSMFLOW),
            "profile",
            "init",
            str(outdir),
            "--partition",
            "cpu-short",
            "--gpu-partition",
            "gpu",
            "--account",
            "proj42",
            "--qos",
            "normal",
            "--cores",
            "4",
            "--group-size",
            "volumes=5",
            "--no-input",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    profile = yaml.safe_load((outdir / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"
    assert profile["cores"] == 4
    assert profile["default-resources"]["slurm_partition"] == "cpu-short"
    assert profile["default-resources"]["slurm_account"] == "proj42"
    assert profile["default-resources"]["qos"] == "normal"
    assert "volumes=5" in profile["group-components"] and "deskew_deconvolve=volumes" in profile["groups"]
    again = subprocess.run(
        [str(LLSMFLOW), "profile", "init", str(outdir), "--no-input"], capture_output=True, text=True
    )
    assert again.returncode == 2 and "--force" in again.stderr

    # Snakemake reads it; with a GPU backend the deconvolutions ask for a GPU on the GPU partition, with the
    # CPU backend they stay on the CPU partition without a GPU
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    base = _config(dataset="tiny", raw_dir=str(tiny_acquisition / "raw"))
    gpu_out = _dry_run(base | {"deconvolution": base["deconvolution"] | {"backend": "cupy"}}, run_dir, outdir)
    decon = _rule_resources(gpu_out, "deskew_deconvolve")
    assert len(decon) == 5  # a job per timepoint
    assert all("gpu=1" in r and "slurm_partition=gpu" in r for r in decon), decon[0]
    qc = _rule_resources(gpu_out, "qc_tile")
    assert all("slurm_partition=cpu-short" in r and "gpu=" not in r for r in qc), qc[0]
    cpu_out = _dry_run(base, run_dir, outdir)
    decon = _rule_resources(cpu_out, "deskew_deconvolve")
    assert all("gpu=" not in r and "slurm_partition=cpu-short" in r for r in decon), decon[0]
    sizes = hpc.volume_sizes(read_acquisition(tiny_acquisition / "raw"))
    expected = hpc.step_resources(sizes, base, cores=4)["deskew_deconvolve"]
    assert all(
        f"mem_mb={max(expected.mem_mb, 500)}," in r and f"runtime={expected.runtime_min}" in r for r in decon
    )
    # deskew.rotate: the jobs are sized for the rotated volumes and the rotated PSF kernel (here 1.5 times the
    # objective frame's voxels), as `llsmflow estimate` sizes them
    rotated = base | {"deskew": base["deskew"] | {"rotate": True}}
    decon = _rule_resources(_dry_run(rotated, run_dir, outdir), "deskew_deconvolve")
    rotated_sizes = resource_model.config_volume_sizes(read_acquisition(tiny_acquisition / "raw"), rotated)
    assert math.prod(rotated_sizes.deskewed_shape) > 1.5 * math.prod(sizes.deskewed_shape)
    expected_rotated = hpc.step_resources(rotated_sizes, rotated, cores=4)["deskew_deconvolve"]
    assert expected_rotated.mem_mb > expected.mem_mb
    assert all(f"mem_mb={max(expected_rotated.mem_mb, 500)}," in r for r in decon), decon[0]


def test_profile_init_asks_on_a_terminal(tmp_path):
    """Without flags, on a terminal, the answers come from prompts."""
    import pty
    import select

    outdir = tmp_path / "site"
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [str(LLSMFLOW), "profile", "init", str(outdir)],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        close_fds=True,
    )
    os.close(secondary)
    answers = iter(["compute\n", "\n", "acct7\n", "\n", "16\n"])
    seen = b""
    try:
        while proc.poll() is None:
            ready, _, _ = select.select([main], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(main, 1024)
            except OSError:
                break
            seen += chunk
            if chunk.rstrip().endswith(b":") or chunk.rstrip().endswith(b"]:"):
                os.write(main, next(answers).encode())
        proc.wait(timeout=30)
    finally:
        os.close(main)
    assert proc.returncode == 0, seen.decode(errors="replace")
    assert b"SLURM partition for CPU jobs" in seen
    profile = yaml.safe_load((outdir / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_partition"] == "compute"
    assert profile["default-resources"]["slurm_account"] == "acct7"
    assert "qos" not in profile["default-resources"] and "config" not in profile
    assert profile["cores"] == 16


def test_cluster_settings():
    settings = settings_from({"cluster": "slurm", "partition": "p1", "interface": "lo", "memory": "2GB"})
    kwargs = slurm_cluster_kwargs(settings)
    assert kwargs["queue"] == "p1" and kwargs["interface"] == "lo" and kwargs["memory"] == "2GB"
    assert kwargs["python"] == sys.executable and "account" not in kwargs
    with pytest.raises(LlsmflowError, match="expected one of local, slurm"):
        settings_from({"cluster": "kubernetes"})
    with pytest.raises(LlsmflowError, match="workers 0"):
        settings_from({"workers": 0})
    with dask_cluster(None) as client:
        assert client is None


@pytest.fixture(scope="module")
def local_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as lc:
        with distributed.Client(lc) as client:
            yield client


def test_fusion_on_a_client_equals_in_process(local_client, tmp_path):
    from llsmflow.io import write_volume
    from llsmflow.stitch import Tile, fuse_to_zarr, read_fused

    rng = np.random.default_rng(1)
    voxel = (0.2, 0.1, 0.1)
    tiles = []
    for key in ("a", "b"):  # read lazily from files, as the workers of a cluster do
        path = tmp_path / f"{key}.ome.tif"
        write_volume(path, rng.random((12, 40, 50), dtype=np.float32), voxel)
        tiles.append(Tile(key, (0.0, 0.0, 0.0), (12, 40, 50), path=str(path)))
    positions = {"a": (0.0, 0.0, 0.0), "b": (0.0, 3.0, 0.5)}
    done = []
    fuse_to_zarr(tiles, positions, voxel, tmp_path / "here.zarr", chunks=(8, 16, 16))
    fuse_to_zarr(
        tiles,
        positions,
        voxel,
        tmp_path / "there.zarr",
        chunks=(8, 16, 16),
        client=local_client,
        progress=lambda d, n: done.append((d, n)),
    )
    here, there = read_fused(tmp_path / "here.zarr"), read_fused(tmp_path / "there.zarr")
    np.testing.assert_array_equal(here[0], there[0])
    assert here[1:] == there[1:]
    assert done[-1][0] == done[-1][1] == len(done) > 1


def test_chunked_deconvolution_on_a_client_equals_in_process(local_client, deskewed_tile, acquisition):
    from llsmflow.decon import deconvolve

    _, deskewed, _ = deskewed_tile
    psf = read_volume(acquisition.psf_path(0))
    args = (deskewed, psf.data, acquisition.deskewed_voxel_size_um, psf.voxel_size_um)
    budget = 0.02  # GB: a few chunks for a (32, 64, 200) volume
    here = deconvolve(*args, iterations=3, backend="cpu", max_memory_gb=budget)
    steps = []
    there = deconvolve(
        *args,
        iterations=3,
        backend="cpu",
        max_memory_gb=budget,
        client=local_client,
        progress=lambda k, n: steps.append((k, n)),
    )
    assert here.chunks == there.chunks > 1
    np.testing.assert_allclose(there.data, here.data, rtol=1e-5, atol=1e-5 * float(here.data.max()))
    assert steps[-1] == (3 * here.chunks, 3 * here.chunks)
