"""Cluster resources of each workflow step, and ``llsmflow estimate``.

One resource model serves the workflow (``workflow/rules/common.smk`` asks :func:`step_resources` for every
rule's memory, runtime and GPU memory) and the ``estimate`` command, so what ``llsmflow estimate`` prints is
what the jobs will request. Memory is computed from the volume sizes of the acquisition (read from its
metadata, or from the first raw stack's header) times each step's working-set factor; deconvolution uses the
engine's own working-set model (:func:`llsmflow.decon.estimate_memory`). Runtimes come from per-voxel costs
measured in ``bench/RESULTS.md`` on a 2-core machine, times a safety factor for slower nodes and shared file
systems; every request doubles on each retry of a job (Snakemake ``attempt``), so an underestimate costs one
resubmission, not a failed run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llsmflow.decon.backends import GPU_BACKENDS  # deskew_deconvolve requests a GPU only for these
from llsmflow.errors import LlsmflowError
from llsmflow.hpc.profiles import GROUPS

# Per-voxel costs, seconds, measured on the 2-core reference machine of bench/RESULTS.md (all cores):
# deskew: 9.8 ms for a (100, 256, 501) float32 output, plus reading the raw stack and writing the float32
# result, which dominate (taken as 50 MB/s of raw + result bytes, a slow shared file system);
_DESKEW_S_PER_BYTE = 1 / 50e6
# RL on the CPU: 112 ms per iteration for an (84, 280, 280) FFT window with 2 threads = 17 ns per padded voxel
# per iteration with 2 cores, i.e. 34 ns core-seconds; FFTW planning adds a few seconds per shape;
_DECON_CPU_CORE_S_PER_VOXEL_ITERATION = 34e-9
_DECON_PLANNING_S = 5.0
# RL on a GPU: not measured here (no GPU on the reference machine); cudaDecon and CuPy run RL about two
# orders of magnitude faster than one CPU core, taken as 1 ns per padded voxel per iteration (conservative),
# plus the transfer of the volume both ways;
_DECON_GPU_S_PER_VOXEL_ITERATION = 1e-9
# fusion: 120 MiB/s of float32 output with tiles read lazily from TIFF (the slowest fusion figure) = 32 ns;
_FUSE_S_PER_VOXEL = 32e-9
# tracking: 288 ms per frame of (40, 96, 226) voxels for detection = 330 ns per voxel per frame;
_TRACK_S_PER_VOXEL = 330e-9
# archive: 46 MB/s of float32 input with the pyramid = 87 ns per voxel.
_ARCHIVE_S_PER_VOXEL = 87e-9
# Requests are the estimate times this factor (slower nodes, contention, cold file caches) plus a start-up
# allowance (interpreter, imports, Snakemake inside the job), never below the floor.
_RUNTIME_SAFETY = 3.0
_STARTUP_S = 60.0
_RUNTIME_FLOOR_MIN = 5
# Resident memory of a job's interpreter with numpy, scipy, tifffile, zarr and llsmflow loaded.
_BASE_MB = 300


@dataclass(frozen=True)
class StepResources:
    """What one job of a workflow step requests.

    Attributes
    ----------
    step : str
        Rule name.
    jobs : int
        Number of jobs of this step for the dataset.
    threads : int
        CPU cores per job.
    mem_mb : int
        Host memory per job, MB (first attempt).
    runtime_min : int
        Wall-clock limit per job, minutes (first attempt).
    gpu : int
        GPUs per job (0 or 1).
    gpu_mem_mb : int
        GPU memory the job needs, MB (0 without a GPU).
    local : bool
        Runs on the submitting machine, not through the scheduler.
    """

    step: str
    jobs: int
    threads: int
    mem_mb: int
    runtime_min: int
    gpu: int = 0
    gpu_mem_mb: int = 0
    local: bool = False


def grow(value: float, attempt: int) -> int:
    """``value`` doubled for each retry: attempt 1 → value, 2 → 2·value, 3 → 4·value."""
    return int(math.ceil(value * 2 ** (max(int(attempt), 1) - 1)))


def _runtime_min(seconds: float) -> int:
    return max(_RUNTIME_FLOOR_MIN, int(math.ceil((_STARTUP_S + _RUNTIME_SAFETY * seconds) / 60)))


def _mb(nbytes: float) -> float:
    return nbytes / 1e6


@dataclass(frozen=True)
class VolumeSizes:
    """Sizes the resource model rests on (ZYX voxels)."""

    raw_shape: tuple[int, int, int]
    deskewed_shape: tuple[int, int, int]
    psf_shape: tuple[int, int, int]
    fused_shape: tuple[int, int, int]
    samples: int
    tiles: int
    channels: int
    timepoints: int

    @property
    def raw_mb(self) -> float:
        """One raw stack (uint16), MB."""
        return _mb(2 * math.prod(self.raw_shape))

    @property
    def deskewed_mb(self) -> float:
        """One deskewed volume (float32), MB."""
        return _mb(4 * math.prod(self.deskewed_shape))

    @property
    def fused_mb(self) -> float:
        """One fused channel and timepoint (float32), MB."""
        return _mb(4 * math.prod(self.fused_shape))


def _tiff_shape(path: Path) -> tuple[int, ...]:
    from llsmflow.io import open_tiff

    with open_tiff(path, expected="a TIFF stack") as tif:
        return tuple(int(n) for n in tif.series[0].shape)


def _prepared_psf_shape(
    acq, channel: int, voxel, rotate: bool, geometry: str, background: float | str
) -> tuple[int, int, int]:
    """Shape of a channel's PSF as the deconvolution uses it (the ``prepare_psf`` step's function: geometry
    resolved, resampled to ``voxel``, cropped to its support, with ``rotate`` rotated to the coverslip frame);
    if it cannot be prepared here, an upper bound: the stack's shape resampled to ``voxel``, with ``rotate`` the
    diagonal of the rotation's plane (Z and the scan axis) along both of its axes."""
    from llsmflow.decon.psf import prepare_psf_for_run
    from llsmflow.io import read_volume

    path = acq.psf_path(channel)
    psf_voxel = acq.channels[channel].get("psf_voxel_size_um")
    try:
        stack = read_volume(path)
        kernel, _, _ = prepare_psf_for_run(
            stack.data, psf_voxel or stack.voxel_size_um, voxel, background=background, geometry=geometry,
            angle_deg=acq.angle_deg, stage_step_um=acq.dz_um, scan_axis=acq.scan_axis, rotate=rotate,
        )  # fmt: skip
        return tuple(kernel.shape)
    except (LlsmflowError, OSError, ValueError):
        return _psf_shape_bound(_tiff_shape(path)[-3:], psf_voxel or voxel, voxel, rotate, acq.scan_axis)


def _psf_shape_bound(stack_shape, psf_voxel_um, voxel_um, rotate: bool, scan_axis: str) -> tuple[int, int, int]:
    """An upper bound of a prepared PSF kernel's shape (ZYX voxels) from its stack's: the stack resampled from
    ``psf_voxel_um`` to ``voxel_um`` (odd sizes), with ``rotate`` the diagonal of the rotation's plane along
    both of its axes (rotated about Y for scan axis x, about X for scan axis y: Z and the scan axis mix)."""
    bound = [max(1, math.ceil(n * p / v)) | 1 for n, p, v in zip(stack_shape, psf_voxel_um, voxel_um, strict=True)]
    if rotate:
        scan = 2 if scan_axis == "x" else 1
        bound[0] = bound[scan] = math.ceil(math.hypot(bound[0], bound[scan])) | 1
    return tuple(bound)


def cached_volume_sizes(
    acq, cache_path: Path, rotate: bool = False, psf_geometry: str = "auto", psf_background: float | str = "auto"
) -> VolumeSizes:
    """:func:`volume_sizes` of ``acq``, kept in the JSON file ``cache_path`` for the other parses of a workflow
    (each job parses it again; for raw data by URL the sizes read every PSF whole over the network). Computed
    again when the raw folder, the metadata, or a PSF's size or version (``stat``: a server's
    ``Last-Modified``) changed; a damaged or unwritable cache only costs the computation."""
    import hashlib
    import json
    from dataclasses import asdict

    from llsmflow.io import atomic_output

    psfs = [acq.psf_path(c) for c in range(len(acq.channels))]
    arguments = [rotate, psf_geometry, psf_background]
    key = json.dumps(
        [str(acq.raw_dir), acq.metadata, [vars(p.stat()) for p in psfs], arguments], sort_keys=True, default=str
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    try:
        kept = json.loads(Path(cache_path).read_text(encoding="utf-8"))
        if kept.get("key") == digest:
            return VolumeSizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in kept["sizes"].items()})
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # absent or damaged: computed again
    sizes = volume_sizes(acq, rotate, psf_geometry, psf_background)
    try:
        with atomic_output(cache_path) as tmp:
            tmp.write_text(json.dumps({"key": digest, "sizes": asdict(sizes)}), encoding="utf-8")
    except OSError:
        pass  # only a cache
    return sizes


def config_volume_sizes(acq, config: Mapping, cache_path: Path | None = None) -> VolumeSizes:
    """:func:`volume_sizes` for a run's ``config`` (``deskew.rotate``, ``deconvolution.psf_geometry`` and
    ``psf_background``: the volumes and PSF kernels its jobs make), kept in ``cache_path`` if given
    (:func:`cached_volume_sizes`). What the workflow sizes its jobs with, and ``llsmflow estimate`` prints."""
    decon = config["deconvolution"]
    arguments = (bool(config["deskew"]["rotate"]), decon["psf_geometry"], decon["psf_background"])
    if cache_path is not None:
        return cached_volume_sizes(acq, cache_path, *arguments)
    return volume_sizes(acq, *arguments)


def volume_sizes(
    acq, rotate: bool = False, psf_geometry: str = "auto", psf_background: float | str = "auto"
) -> VolumeSizes:
    """Sizes of the volumes of an acquisition (:class:`llsmflow.ingest.Acquisition`).

    The raw shape comes from the metadata's ``raw_shape_zyx`` or, without it, from the first raw stack's
    header; the deskewed shape from the geometry (``rotate``: config ``deskew.rotate``, the coverslip-frame
    volume on its isotropic grid, :func:`llsmflow.deskew.rotated_shape`); the PSF shape from the PSF stacks
    prepared as the deconvolution prepares them (config ``deconvolution.psf_geometry`` and ``psf_background``;
    with ``rotate`` rotated too; the largest over channels); the fused shape from the tiles' nominal positions.
    """
    from llsmflow.deskew.frames import deconvolved_grid
    from llsmflow.stitch.grid import fused_extent

    raw = acq.metadata.get("raw_shape_zyx")
    if raw is None:
        raw = _tiff_shape(acq.raw_dir / acq.samples["path"].iloc[0])[-3:]
    raw = tuple(int(n) for n in raw)
    deskewed, voxel = deconvolved_grid(raw, acq.dz_um, acq.dx_um, acq.dy_um, acq.angle_deg, acq.scan_axis, rotate)
    psf = (1, 1, 1)
    for c in range(len(acq.channels)):
        kernel = _prepared_psf_shape(acq, c, voxel, rotate, psf_geometry, psf_background)
        psf = tuple(max(a, b) for a, b in zip(psf, kernel, strict=True))
    # the tiles at their nominal positions, each the size of a deskewed volume
    positions = {t.tile: (t.z_um, t.y_um, t.x_um) for t in acq.tiles.itertuples()}
    _, fused = fused_extent(positions, dict.fromkeys(positions, deskewed), voxel)
    return VolumeSizes(
        raw_shape=raw,
        deskewed_shape=tuple(deskewed),
        psf_shape=psf,
        fused_shape=tuple(fused),
        samples=len(acq.samples),
        tiles=len(acq.tiles),
        channels=len(acq.channels),
        timepoints=len(acq.timepoints),
    )


def volumes_per_job(sizes: VolumeSizes, config: Mapping) -> int:
    """Volumes one ``deskew_deconvolve`` job takes (config ``jobs.unit``): a timepoint's tiles × channels, or 1."""
    return sizes.tiles * sizes.channels if config["jobs"]["unit"] == "timepoint" else 1


def _job_resources(sizes: VolumeSizes, config: Mapping, cores: int | None) -> StepResources:
    """One ``deskew_deconvolve`` job: N volumes one after the other (read, deskew, deconvolve, write), each
    freed before the next, so its memory is one volume's and its time N volumes' (FFTW planning once)."""
    decon = config["deconvolution"]
    from llsmflow.decon.backends import DEFAULT_ITERATIONS
    from llsmflow.decon.chunks import estimate_memory, reach_shape
    from llsmflow.decon.padding import padded_shape

    method = decon["method"]
    iterations = decon["iterations"] or DEFAULT_ITERATIONS[method]
    gpu = decon["backend"] in GPU_BACKENDS
    threads = int(decon["threads"])
    if gpu and cores:
        # one GPU job at a time per submission: it takes every core, so a grouped submission runs its GPU
        # deconvolutions one after the other on its one GPU (see docs/hpc.md, "GPUs")
        threads = max(threads, int(cores))
    working = estimate_memory(sizes.deskewed_shape, sizes.psf_shape, method=method)
    budget = decon["max_memory_gb"]
    if budget:
        working = min(working, float(budget) * 1e9)
    padded = math.prod(padded_shape(sizes.deskewed_shape, reach_shape(sizes.psf_shape, method)))
    # the raw stack, the deskewed volume and the result, whole in the job's memory (one volume at a time)
    io = sizes.raw_mb + 2 * sizes.deskewed_mb
    # reading the raw stack, deskewing, writing the deconvolved float32 volume (uncompressed scratch)
    io_seconds = (sizes.raw_mb + sizes.deskewed_mb) * 1e6 * _DESKEW_S_PER_BYTE
    if gpu:
        gpu_mem = _mb(working)
        host = _BASE_MB + io + sizes.deskewed_mb  # plus the host copy of the result on its way back
        seconds = iterations * padded * _DECON_GPU_S_PER_VOXEL_ITERATION + 4 * sizes.deskewed_mb / 1e3
        planning = 0.0
    else:
        gpu_mem = 0
        host = _BASE_MB + io + _mb(working)
        seconds = iterations * padded * _DECON_CPU_CORE_S_PER_VOXEL_ITERATION / threads
        planning = _DECON_PLANNING_S
    n = volumes_per_job(sizes, config)
    return StepResources(
        "deskew_deconvolve",
        math.ceil(sizes.samples / n),
        threads,
        int(math.ceil(1.25 * host)),
        _runtime_min(n * (seconds + io_seconds) + planning),
        gpu=1 if gpu else 0,
        gpu_mem_mb=int(math.ceil(gpu_mem)),
    )


def step_resources(sizes: VolumeSizes, config: Mapping, cores: int | None = None) -> dict[str, StepResources]:
    """Resources of one job of every workflow step, first attempt.

    Parameters
    ----------
    sizes : VolumeSizes
        From :func:`volume_sizes`.
    config : mapping
        The workflow config, validated, with the schema's defaults filled in (as Snakemake's ``validate`` and
        :func:`llsmflow.run.config.read_config` fill them).
    cores : int, optional
        Cores of one submission (Snakemake ``--cores`` with the SLURM executor); a GPU deconvolution takes
        them all, see :func:`_job_resources`.

    Returns
    -------
    dict
        Rule name → :class:`StepResources`, in workflow order.
    """
    stitch = config["stitch"]
    track_channels = config["track"]["channels"]
    n_track = sizes.channels if track_channels == "all" else len(track_channels)
    tiles_mb = sizes.deskewed_mb * sizes.tiles
    fused_voxels = math.prod(sizes.fused_shape)
    fuse_mem = _BASE_MB + 3 * tiles_mb
    if stitch["max_memory_gb"]:  # tiles read lazily, chunks in flight bounded by the budget
        fuse_mem = min(fuse_mem, _BASE_MB + 1e3 * float(stitch["max_memory_gb"]))
    steps = [
        StepResources("ingest", 1, 1, 0, 0, local=True),
        StepResources("prepare_psf", sizes.channels, 1, 0, 0, local=True),
        _job_resources(sizes, config, cores),
        StepResources(
            "register",
            1,
            1,
            int(math.ceil(_BASE_MB + 4 * tiles_mb)),
            _runtime_min(tiles_mb * 1e6 * _DESKEW_S_PER_BYTE + 10 * sizes.tiles),
        ),
        # one job per timepoint: its channels one after the other (one channel's memory, N channels' time)
        StepResources(
            "fuse",
            sizes.timepoints,
            2,
            int(math.ceil(fuse_mem)),
            _runtime_min(fused_voxels * sizes.channels * _FUSE_S_PER_VOXEL),
        ),
        StepResources(
            "archive",
            1,
            2,
            int(math.ceil(_BASE_MB + 2 * sizes.fused_mb * sizes.channels)),
            _runtime_min(fused_voxels * sizes.channels * sizes.timepoints * _ARCHIVE_S_PER_VOXEL),
        ),
        StepResources(
            "track",
            n_track,
            1,
            int(math.ceil(_BASE_MB + 4 * sizes.fused_mb)),
            _runtime_min(fused_voxels * sizes.timepoints * _TRACK_S_PER_VOXEL),
        ),
        StepResources(
            "qc_tile",
            sizes.tiles * sizes.channels,
            1,
            int(math.ceil(_BASE_MB + sizes.raw_mb + 2 * sizes.deskewed_mb)),
            _RUNTIME_FLOOR_MIN,
        ),
        StepResources(
            "qc_mosaic", 1, 1, int(math.ceil(_BASE_MB + sizes.fused_mb * sizes.channels)), _RUNTIME_FLOOR_MIN
        ),
        StepResources("qc_report", 1, 1, 0, 0, local=True),
        StepResources("provenance", 1, 1, 0, 0, local=True),
    ]
    return {s.step: s for s in steps}


# ------------------------------------------------------------------------------------ groups and submissions


def submissions(
    resources: Mapping[str, StepResources], group_sizes: Mapping[str, int] | None
) -> dict[str, int]:
    """Number of ``sbatch`` submissions per step (a group's submissions counted under its name).

    Grouped rules (:data:`GROUPS`) with a size ``n`` in ``group_sizes`` are submitted ``n`` connected
    components at a time (Snakemake ``--group-components``); each ``deskew_deconvolve`` job (a timepoint, or a
    volume) is one component.
    """
    group_sizes = dict(group_sizes or {})
    counts: dict[str, int] = {}
    for name, step in resources.items():
        if step.local:
            continue
        group = GROUPS.get(name)
        if group and group in group_sizes:
            components = max(resources[r].jobs for r, g in GROUPS.items() if g == group and r in resources)
            counts[group] = math.ceil(components / max(1, int(group_sizes[group])))
        else:
            counts[name] = step.jobs
    return counts


# ------------------------------------------------------------------------------------ fit to the partition


def fit_to_partition(
    sizes: VolumeSizes, config: Mapping, profile: str | Path | None, cores: int | None
) -> tuple[int | None, str | None]:
    """For a SLURM profile, check what the jobs will request against the partition's nodes (``sinfo``) before
    anything is submitted: a job that can never start would wait in the queue forever.

    Returns ``(cores, note)``: the cores of one submission (the profile's or ``cores``, capped at the node's
    CPUs) and a line saying what was capped (None if nothing). Outside SLURM (another executor, no ``sinfo``)
    ``cores`` is returned unchanged.

    Raises
    ------
    LlsmflowError
        A step requests more memory, GPUs or time than the partition offers (one line naming both).
    """
    from llsmflow.hpc.profiles import check_fit, partition_limits, profile_options, profile_settings

    options = profile_options(Path(profile) if profile else None)
    if options.get("executor") != "slurm":
        return cores, None
    wanted = cores or options.get("cores")
    limits = partition_limits(options.get("partition"))
    if limits is None:
        return cores, None
    gpu_partition = config["hpc"]["gpu_partition"]
    gpu_limits = None
    if gpu_partition and config["deconvolution"]["backend"] in GPU_BACKENDS:
        gpu_limits = partition_limits(gpu_partition)
    capped = min(wanted, limits.cpus) if wanted else limits.cpus
    groups = profile_settings(Path(profile))[1] if profile else {}
    capped = check_fit(step_resources(sizes, config, capped), capped, limits, gpu_limits, groups)
    return capped, _capped_note(wanted, capped, limits)


def cap_at_node_cpus(profile: str | Path | None, cores: int | None) -> tuple[int | None, str | None]:
    """For a SLURM profile, the cores of one submission (``cores``, else the profile's) capped at the CPUs of
    the partition's nodes, and a line saying so (None if nothing was capped); ``cores`` unchanged outside
    SLURM. What :func:`fit_to_partition` does before it knows the volumes' sizes (``llsmflow watch`` starts
    before the first stack is written): a job asking for more CPUs than a node has never starts."""
    from llsmflow.hpc.profiles import partition_limits, profile_options

    options = profile_options(Path(profile) if profile else None)
    if options.get("executor") != "slurm":
        return cores, None
    wanted = cores or options.get("cores")
    limits = partition_limits(options.get("partition"))
    if limits is None or not wanted or wanted <= limits.cpus:
        return cores, None
    return limits.cpus, _capped_note(wanted, limits.cpus, limits)


def _capped_note(wanted: int | None, capped: int, limits) -> str | None:
    if not wanted or capped >= wanted:
        return None
    return (
        f"{wanted} cores per submission requested, but the nodes of SLURM partition {limits.partition} "
        f"have {limits.cpus} CPUs: capped at {capped} (a job's threads, and the jobs a grouped submission "
        "runs side by side, follow)"
    )


# ------------------------------------------------------------------------------------------------- estimate


def format_estimate(
    sizes: VolumeSizes, resources: Mapping[str, StepResources], counts: Mapping[str, int]
) -> str:
    """The table ``llsmflow estimate`` prints."""
    lines = [
        f"dataset: {sizes.samples} raw stacks ({sizes.tiles} tiles × {sizes.channels} channels × "
        f"{sizes.timepoints} timepoints) of {sizes.raw_shape} voxels",
        f"  raw stack {sizes.raw_mb:.1f} MB (uint16), deskewed volume {sizes.deskewed_shape} "
        f"{sizes.deskewed_mb:.1f} MB (float32), fused volume {sizes.fused_shape} {sizes.fused_mb:.1f} MB",
        "",
        f"{'step':<18}{'jobs':>7}{'cores':>7}{'memory MB':>11}{'GPU':>5}{'GPU mem MB':>12}{'time min':>10}"
        f"{'core-h':>9}",
    ]
    core_hours = 0.0
    gpu_hours = 0.0
    for step in resources.values():
        if step.local:
            lines.append(f"{step.step:<18}{step.jobs:>7}   (runs on the submitting machine)")
            continue
        hours = step.jobs * step.threads * step.runtime_min / 60
        core_hours += hours
        gpu_hours += step.jobs * step.gpu * step.runtime_min / 60
        lines.append(
            f"{step.step:<18}{step.jobs:>7}{step.threads:>7}{step.mem_mb:>11}{step.gpu:>5}"
            f"{step.gpu_mem_mb:>12}{step.runtime_min:>10}{hours:>9.1f}"
        )
    lines += [
        "",
        f"upper bound of the time requested: {core_hours:.1f} core-hours, {gpu_hours:.1f} GPU-hours "
        "(first attempt; each retry doubles a job's memory and time)",
        f"sbatch submissions: {sum(counts.values())} ("
        + ", ".join(f"{name} {n}" for name, n in counts.items())
        + ")",
    ]
    return "\n".join(lines)


def estimate(
    raw_dir: str | Path | None,
    configfile: str | Path | None = None,
    profile: str | Path | None = None,
    cores: int | None = None,
    backend: str | None = None,
    group_sizes: Mapping[str, int] | None = None,
) -> str:
    """The table of ``llsmflow estimate``: what every step of a dataset's run will request.

    Parameters
    ----------
    raw_dir : path, optional
        Raw data directory (default: the config's ``raw_dir``).
    configfile : path, optional
        Workflow config; without it, the schema's defaults.
    profile : path, optional
        Snakemake profile directory: its ``cores`` and group sizes (:func:`llsmflow.hpc.profiles.profile_settings`).
    cores : int, optional
        Cores of one submission (default: the profile's).
    backend : str, optional
        Deconvolution backend, instead of the config's.
    group_sizes : mapping, optional
        Group name -> jobs per submission, instead of the profile's.
    """
    from llsmflow.hpc.profiles import profile_settings
    from llsmflow.run.config import config_acquisition, read_config

    config = read_config(configfile)
    if configfile is not None:
        raw_dir = raw_dir or config.get("raw_dir")
    if raw_dir is None:
        raise LlsmflowError("no raw data given; expected RAW_DIR or --configfile with raw_dir")
    if backend:
        config["deconvolution"]["backend"] = backend
    acq = config_acquisition(config, raw_dir)
    profile_cores, groups = profile_settings(Path(profile) if profile else None)
    groups.update(group_sizes or {})
    sizes = config_volume_sizes(acq, config)
    cores, note = fit_to_partition(sizes, config, profile, cores or profile_cores)
    resources = step_resources(sizes, config, cores or profile_cores)
    table = format_estimate(sizes, resources, submissions(resources, groups))
    return table + (f"\nnote: {note}" if note else "")
