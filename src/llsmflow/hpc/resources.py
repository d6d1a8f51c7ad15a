"""Cluster resources of each workflow step, ``llsmflow estimate`` and ``llsmflow profile init``.

One resource model serves the workflow (``workflow/rules/common.smk`` asks :func:`step_resources` for every
rule's memory, runtime and GPU memory) and the ``estimate`` command, so what ``llsmflow estimate`` prints is
what the jobs will request. Memory is computed from the volume sizes of the acquisition (read from its
metadata, or from the first raw stack's header) times each step's working-set factor; deconvolution uses the
engine's own working-set model (:func:`llsmflow.decon.estimate_memory`). Runtimes come from per-voxel costs
measured in ``bench/RESULTS.md`` on a 2-core machine, times a safety factor for slower nodes and shared file
systems; every request doubles on each retry of a job (Snakemake ``attempt``), so an underestimate costs one
resubmission, not a failed run.

``profile init`` writes a Snakemake profile for the SLURM executor plugin by filling in a template (a few
lines of YAML, no template engine needed): the site's partitions, account and QOS, the cores of one
submission and the group sizes that batch small jobs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from llsmflow.decon import GPU_BACKENDS  # noqa: F401  (the deconvolve rule requests a GPU only for these)
from llsmflow.errors import LlsmflowError

# Per-voxel costs, seconds, measured on the 2-core reference machine of bench/RESULTS.md (all cores):
# deskew: 9.8 ms for a (100, 256, 501) float32 output, plus reading the raw stack and writing the float32
# OME-TIFF, which dominate (taken as 50 MB/s of raw + deskewed bytes, a slow shared file system);
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


def _prepared_psf_shape(acq, channel: int, voxel) -> tuple[int, int, int]:
    """Shape of a channel's PSF as the deconvolution uses it (prepared: resampled, cropped to its support);
    if it cannot be prepared here, the stack's shape resampled to ``voxel`` (an upper bound)."""
    from llsmflow.decon import prepare_psf
    from llsmflow.io import read_volume

    path = acq.psf_path(channel)
    psf_voxel = acq.channels[channel].get("psf_voxel_size_um")
    try:
        stack = read_volume(path)
        return tuple(prepare_psf(stack.data, psf_voxel or stack.voxel_size_um, voxel).shape)
    except (LlsmflowError, OSError, ValueError):
        shape = _tiff_shape(path)[-3:]
        psf_voxel = psf_voxel or voxel
        return tuple(
            max(1, math.ceil(n * p / v)) | 1 for n, p, v in zip(shape, psf_voxel, voxel, strict=True)
        )


def volume_sizes(acq) -> VolumeSizes:
    """Sizes of the volumes of an acquisition (:class:`llsmflow.ingest.Acquisition`).

    The raw shape comes from the metadata's ``raw_shape_zyx`` or, without it, from the first raw stack's
    header; the deskewed shape from the geometry; the PSF shape from the PSF stacks prepared as the
    deconvolution prepares them (the largest over channels); the fused shape from the tiles' nominal positions.
    """
    from llsmflow.geometry import deskewed_shape

    raw = acq.metadata.get("raw_shape_zyx")
    if raw is None:
        raw = _tiff_shape(acq.raw_dir / acq.samples["path"].iloc[0])[-3:]
    raw = tuple(int(n) for n in raw)
    deskewed = deskewed_shape(raw, acq.dz_um, acq.dx_um, acq.angle_deg, acq.scan_axis)
    voxel = acq.deskewed_voxel_size_um
    psf = (1, 1, 1)
    for c in range(len(acq.channels)):
        psf = tuple(max(a, b) for a, b in zip(psf, _prepared_psf_shape(acq, c, voxel), strict=True))
    # the grid of llsmflow.stitch.fused_extent (not imported: dask and scikit-image would add seconds to every
    # Snakemake start, and each cluster job starts one)
    origins = acq.tiles[["z_um", "y_um", "x_um"]].to_numpy(dtype=float)
    span = origins.max(axis=0) - origins.min(axis=0)
    fused = tuple(int(math.floor(s / v + 1e-6)) + n for s, v, n in zip(span, voxel, deskewed, strict=True))
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


def _decon_resources(sizes: VolumeSizes, decon: Mapping, cores: int | None) -> StepResources:
    from llsmflow.decon import DEFAULT_ITERATIONS, estimate_memory, padded_shape, reach_shape

    method = decon.get("method", "rl")
    iterations = decon.get("iterations") or DEFAULT_ITERATIONS.get(method, 10)
    gpu = decon.get("backend", "cpu") in GPU_BACKENDS
    threads = int(decon.get("threads") or 1)
    if gpu and cores:
        # one GPU job at a time per submission: it takes every core, so a grouped submission runs its GPU
        # deconvolutions one after the other on its one GPU (see docs/hpc.md, "GPUs")
        threads = max(threads, int(cores))
    working = estimate_memory(sizes.deskewed_shape, sizes.psf_shape, method=method)
    budget = decon.get("max_memory_gb")
    if budget:
        working = min(working, float(budget) * 1e9)
    padded = math.prod(padded_shape(sizes.deskewed_shape, reach_shape(sizes.psf_shape, method)))
    io = 2 * sizes.deskewed_mb  # the volume read and the result, both whole in the job's memory
    if gpu:
        gpu_mem = _mb(working)
        host = _BASE_MB + io + sizes.deskewed_mb  # plus the host copy of the result on its way back
        seconds = iterations * padded * _DECON_GPU_S_PER_VOXEL_ITERATION + 4 * sizes.deskewed_mb / 1e3
    else:
        gpu_mem = 0
        host = _BASE_MB + io + _mb(working)
        seconds = iterations * padded * _DECON_CPU_CORE_S_PER_VOXEL_ITERATION / threads + _DECON_PLANNING_S
    return StepResources(
        "deconvolve",
        sizes.samples,
        threads,
        int(math.ceil(1.25 * host)),
        _runtime_min(seconds),
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
        The workflow config (``config/config.yaml``, validated).
    cores : int, optional
        Cores of one submission (Snakemake ``--cores`` with the SLURM executor); a GPU deconvolution takes
        them all, see :func:`_decon_resources`.

    Returns
    -------
    dict
        Rule name → :class:`StepResources`, in workflow order.
    """
    stitch = config.get("stitch", {})
    track_channels = config.get("track", {}).get("channels", "all")
    n_track = sizes.channels if track_channels == "all" else len(track_channels)
    tiles_mb = sizes.deskewed_mb * sizes.tiles
    fused_voxels = math.prod(sizes.fused_shape)
    fuse_mem = _BASE_MB + 3 * tiles_mb
    if stitch.get("max_memory_gb"):  # tiles read lazily, chunks in flight bounded by the budget
        fuse_mem = min(fuse_mem, _BASE_MB + 1e3 * float(stitch["max_memory_gb"]))
    steps = [
        StepResources("ingest", 1, 1, 0, 0, local=True),
        StepResources(
            "deskew",
            sizes.samples,
            1,
            int(math.ceil(_BASE_MB + sizes.raw_mb + 3 * sizes.deskewed_mb)),
            _runtime_min((sizes.raw_mb + sizes.deskewed_mb) * 1e6 * _DESKEW_S_PER_BYTE),
        ),
        StepResources("prepare_psf", sizes.channels, 1, 0, 0, local=True),
        _decon_resources(sizes, config.get("deconvolution", {}), cores),
        StepResources(
            "register",
            1,
            1,
            int(math.ceil(_BASE_MB + 4 * tiles_mb)),
            _runtime_min(tiles_mb * 1e6 * _DESKEW_S_PER_BYTE + 10 * sizes.tiles),
        ),
        StepResources(
            "fuse",
            sizes.channels * sizes.timepoints,
            2,
            int(math.ceil(fuse_mem)),
            _runtime_min(fused_voxels * _FUSE_S_PER_VOXEL),
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

#: Profile groups: rules whose many small jobs are batched (``groups`` in profiles/slurm/config.yaml).
GROUPS = {"deskew": "volumes", "deconvolve": "volumes", "fuse": "fusion", "qc_tile": "qc"}


def submissions(
    resources: Mapping[str, StepResources], group_sizes: Mapping[str, int] | None
) -> dict[str, int]:
    """Number of ``sbatch`` submissions per step (a group's submissions counted under its name).

    Grouped rules (:data:`GROUPS`) with a size ``n`` in ``group_sizes`` are submitted ``n`` connected
    components at a time (Snakemake ``--group-components``); deskew and deconvolve of one volume form one
    component.
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


# ------------------------------------------------------------------------------------------------- estimate


def _read_config(configfile: Path) -> dict:
    import yaml

    if not configfile.is_file():
        raise LlsmflowError("config file not found", configfile)
    config = yaml.safe_load(configfile.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise LlsmflowError("config file is not a YAML mapping; expected keys such as raw_dir", configfile)
    defaults_path = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
    # in a source checkout, fill in what the file leaves out, as the schema's defaults do
    if defaults_path.is_file():
        defaults = yaml.safe_load(defaults_path.read_text(encoding="utf-8")) or {}
        for key, value in defaults.items():
            if isinstance(value, dict):
                config[key] = value | (config.get(key) or {})
            else:
                config.setdefault(key, value)
    return config


def _profile_settings(profile: Path | None) -> tuple[int | None, dict[str, int]]:
    """``cores`` and ``group-components`` of a Snakemake profile directory (or none)."""
    import yaml

    if profile is None:
        return None, {}
    path = profile / "config.yaml"
    if not path.is_file():
        raise LlsmflowError("profile has no config.yaml; expected a Snakemake profile directory", profile)
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    groups = {}
    for entry in settings.get("group-components") or []:
        name, _, size = str(entry).partition("=")
        groups[name.strip()] = int(size)
    cores = settings.get("cores")
    return (int(cores) if isinstance(cores, int) else None), groups


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
        f"{'step':<12}{'jobs':>7}{'cores':>7}{'memory MB':>11}{'GPU':>5}{'GPU mem MB':>12}{'time min':>10}"
        f"{'core-h':>9}",
    ]
    core_hours = 0.0
    gpu_hours = 0.0
    for step in resources.values():
        if step.local:
            lines.append(f"{step.step:<12}{step.jobs:>7}   (runs on the submitting machine)")
            continue
        hours = step.jobs * step.threads * step.runtime_min / 60
        core_hours += hours
        gpu_hours += step.jobs * step.gpu * step.runtime_min / 60
        lines.append(
            f"{step.step:<12}{step.jobs:>7}{step.threads:>7}{step.mem_mb:>11}{step.gpu:>5}"
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


def cmd_estimate(args) -> int:
    from llsmflow.ingest import read_acquisition

    if args.configfile is not None:
        config = _read_config(Path(args.configfile))
        raw_dir = args.raw_dir or config.get("raw_dir")
    else:
        defaults = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
        config = _read_config(defaults) if defaults.is_file() else {}
        raw_dir = args.raw_dir
    if raw_dir is None:
        raise LlsmflowError("no raw data given; expected RAW_DIR or --configfile with raw_dir")
    if args.backend:
        config.setdefault("deconvolution", {})["backend"] = args.backend
    acq = read_acquisition(raw_dir, config.get("metadata"), config.get("overrides") or {})
    cores, groups = _profile_settings(Path(args.profile) if args.profile else None)
    cores = args.cores or cores
    for entry in args.group_size or []:
        groups.update(_parse_group_sizes([entry]))
    sizes = volume_sizes(acq)
    resources = step_resources(sizes, config, cores)
    print(format_estimate(sizes, resources, submissions(resources, groups)))
    return 0


# --------------------------------------------------------------------------------------------- profile init


@dataclass
class SiteAnswers:
    """What ``profile init`` asks: where and how jobs run at a site."""

    partition: str | None = None
    gpu_partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cores: int = 8
    jobs: int = 100
    volumes_group: int = 20
    fusion_group: int = 10
    qc_group: int = 50
    status_command: str = "squeue"


_QUESTIONS = (
    ("partition", "SLURM partition for CPU jobs (empty: the cluster's default)"),
    ("gpu_partition", "SLURM partition for GPU deconvolution (empty: none, deconvolve on CPUs)"),
    ("account", "SLURM account to charge (empty: your default)"),
    ("qos", "quality of service, QOS (empty: the default)"),
)


def _yaml_scalar(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def render_profile(answers: SiteAnswers) -> str:
    """The text of a site profile's ``config.yaml`` (see profiles/slurm/config.yaml for the meaning of each key)."""
    default_resources = []
    if answers.partition:
        default_resources.append(f"  slurm_partition: {_yaml_scalar(answers.partition)}")
    if answers.account:
        default_resources.append(f"  slurm_account: {_yaml_scalar(answers.account)}")
    if answers.qos:
        default_resources.append(f"  qos: {_yaml_scalar(answers.qos)}")
    default_resources += ["  mem_mb: 1000", "  runtime: 30"]
    lines = [
        "# Snakemake profile for llsmflow on a SLURM cluster, written by `llsmflow profile init`.",
        "# Use it with: llsmflow run --profile <this directory> --configfile <your config.yaml>",
        "# Keys: docs/hpc.md. Per-rule memory and time come from the workflow (llsmflow estimate shows them).",
        "executor: slurm",
        f"jobs: {int(answers.jobs)}",
        "# cores of one submission: a grouped submission runs this many single-core jobs side by side",
        f"cores: {int(answers.cores)}",
        "retries: 2  # memory and time double on each retry",
        "latency-wait: 60  # shared file systems show a job's outputs late",
        "rerun-incomplete: true",
        "keep-going: true",
        "printshellcmds: true",
        "show-failed-logs: true",
        "max-jobs-per-second: 5",
        "# without slurmdbd `sacct` fails and Snakemake never learns that jobs ended: squeue works everywhere",
        f"slurm-status-command: {answers.status_command}",
        "default-resources:",
        *default_resources,
        "# batch many small jobs into fewer submissions: N connected jobs per sbatch",
        "groups:",
        *(f"  - {rule}={group}" for rule, group in GROUPS.items()),
        "group-components:",
        f"  - volumes={int(answers.volumes_group)}",
        f"  - fusion={int(answers.fusion_group)}",
        f"  - qc={int(answers.qc_group)}",
    ]
    if answers.gpu_partition:
        lines += [
            "# the deconvolve rule requests a GPU when deconvolution.backend is cupy or pycudadecon; it then",
            "# goes to this partition (a CPU backend keeps it on the CPU partition)",
            "config:",
            f"  - {_yaml_scalar(f'hpc={{gpu_partition: {_yaml_scalar(answers.gpu_partition)}}}')}",
        ]
    return "\n".join(lines) + "\n"


def _ask(prompt: str, default) -> str | None:
    shown = "" if default in (None, "") else f" [{default}]"
    answer = input(f"{prompt}{shown}: ").strip()
    return answer or default


def _parse_group_sizes(entries) -> dict[str, int]:
    sizes = {}
    for entry in entries:
        name, sep, value = str(entry).partition("=")
        if not sep or name not in ("volumes", "fusion", "qc"):
            raise LlsmflowError(f"group size {entry!r} is invalid; expected volumes=N, fusion=N or qc=N")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise LlsmflowError(
                f"group size {entry!r} is invalid; expected a whole number after '='"
            ) from None
        if sizes[name] < 1:
            raise LlsmflowError(f"group size {entry!r} is invalid; expected at least 1")
    return sizes


def cmd_profile_init(args) -> int:
    from llsmflow.io import atomic_output

    answers = SiteAnswers(
        partition=args.partition,
        gpu_partition=args.gpu_partition,
        account=args.account,
        qos=args.qos,
        status_command=args.status_command,
    )
    if args.cores is not None:
        answers.cores = args.cores
    if args.jobs is not None:
        answers.jobs = args.jobs
    for name, size in _parse_group_sizes(args.group_size or []).items():
        setattr(answers, f"{name}_group", size)
    interactive = not args.no_input and sys.stdin.isatty()
    if interactive:
        for key, prompt in _QUESTIONS:
            if getattr(answers, key) is None:
                setattr(answers, key, _ask(prompt, None))
        if args.cores is None:
            answers.cores = int(_ask("cores of one submission (a node's cores, or fewer)", answers.cores))
    if answers.cores < 1 or answers.jobs < 1:
        raise LlsmflowError(f"cores {answers.cores} and jobs {answers.jobs} must be at least 1")
    outdir = Path(args.outdir)
    target = outdir / "config.yaml"
    if target.exists() and not args.force:
        raise LlsmflowError("profile exists; expected a new directory or --force", target)
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        Path(tmp).write_text(render_profile(answers), encoding="utf-8")
    print(f"wrote {target}")
    print(f"  answers: {', '.join(f'{k}={v}' for k, v in asdict(answers).items() if v is not None)}")
    print(f"  run with: llsmflow run --profile {outdir} --configfile config/config.yaml")
    return 0


def register_hpc_commands(sub) -> None:
    """Add ``estimate`` and ``profile init`` to the ``llsmflow`` subcommands."""
    p = sub.add_parser(
        "estimate", help="jobs, memory, GPU memory and time each workflow step will request for a dataset"
    )
    p.add_argument(
        "raw_dir", nargs="?", default=None, help="raw data directory (default: the config's raw_dir)"
    )
    p.add_argument("--configfile", default=None, help="workflow config (default: config/config.yaml values)")
    p.add_argument("--profile", default=None, help="Snakemake profile directory: its cores and group sizes")
    p.add_argument("--cores", type=int, default=None, help="cores of one submission (default: the profile's)")
    p.add_argument("--backend", choices=("auto", "cpu", "cupy", "pycudadecon"), default=None)
    p.add_argument("--group-size", action="append", metavar="GROUP=N", help="volumes=N, fusion=N or qc=N")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("profile", help="Snakemake profiles for clusters")
    profile_sub = p.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    q = profile_sub.add_parser(
        "init", help="write a SLURM profile for a site (asks for what the flags do not give)"
    )
    q.add_argument("outdir", type=Path, help="profile directory to create, e.g. profiles/mysite")
    q.add_argument("--partition", default=None, help="partition for CPU jobs")
    q.add_argument("--gpu-partition", default=None, help="partition for GPU deconvolution jobs")
    q.add_argument("--account", default=None, help="account to charge (sbatch -A)")
    q.add_argument("--qos", default=None, help="quality of service (sbatch --qos)")
    q.add_argument("--cores", type=int, default=None, help="cores of one submission (default 8)")
    q.add_argument("--jobs", type=int, default=None, help="submissions in the queue at once (default 100)")
    q.add_argument(
        "--group-size",
        action="append",
        metavar="GROUP=N",
        help="jobs batched per submission: volumes=N (deskew+deconvolve, default 20), fusion=N (10), qc=N (50)",
    )
    q.add_argument(
        "--status-command",
        choices=("squeue", "sacct"),
        default="squeue",
        help="how job states are polled (sacct needs slurmdbd; default squeue)",
    )
    q.add_argument("--no-input", action="store_true", help="never prompt, even on a terminal")
    q.add_argument("--force", action="store_true", help="overwrite an existing profile")
    q.set_defaults(func=cmd_profile_init)
