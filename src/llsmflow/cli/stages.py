"""The ``llsmflow`` command line: one subcommand per stage, plus ``run`` for the whole workflow.

Every subcommand takes physical units (µm, s), prints one clear line and exits non-zero on bad input, and
writes its outputs atomically. See ``llsmflow <command> --help``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from llsmflow import __version__
from llsmflow.container import register_container_commands
from llsmflow.errors import LlsmflowError, located
from llsmflow.hpc import register_hpc_commands

log = logging.getLogger("llsmflow")


def _parse_tiles(text: str) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile grid {text!r} is invalid; expected NYxNX, e.g. 2x1") from None
    if ny < 1 or nx < 1:
        raise argparse.ArgumentTypeError(f"tile grid {text!r} is invalid; expected at least 1x1")
    return ny, nx


def _background(text: str):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"background {text!r} is invalid; expected a number or 'auto'"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"background {value} is invalid; expected >= 0 or 'auto'")
    return value


def _progress(label: str):
    """Progress lines for ``-v``: the first and last unit, and one line per 5 s at most in between."""
    from llsmflow.progress import progress_logger

    return progress_logger(log, label, interval_s=5)


# ---------------------------------------------------------------------------------------------- subcommands


def cmd_synth(args) -> int:
    from llsmflow.synth import SynthParams, generate

    ny, nx = args.tiles
    params = SynthParams(
        tiles_y=ny,
        tiles_x=nx,
        channels=args.channels,
        timepoints=args.timepoints,
        angle_deg=args.angle,
        seed=args.seed,
    )
    if args.tiny:
        params.raw_shape_zyx = (32, 64, 96)
        params.particles_per_tile = 6
    summary = generate(args.outdir, params, progress=_progress("wrote stack"))
    print(
        f"synthetic acquisition: {summary['files']} raw stacks, {summary['tiles']} tiles, "
        f"{params.channels} channels, {params.timepoints} timepoints"
    )
    print(f"  raw data:     {summary['raw_dir']}  (metadata: {summary['metadata']})")
    print(f"  ground truth: {summary['truth_dir']}")
    return 0


def cmd_deskew(args) -> int:
    from llsmflow.geometry import deskew, deskew_rotate
    from llsmflow.io import read_volume, write_volume

    raw = read_volume(args.input, channel=args.channel, timepoint=args.timepoint)
    with located(args.input):
        return _deskew_and_write(args, raw, deskew, deskew_rotate, write_volume)


def _deskew_and_write(args, raw, deskew, deskew_rotate, write_volume) -> int:
    if args.rotate:
        if args.scan_axis != "x":
            raise LlsmflowError("--rotate supports --scan-axis x only")
        data, voxel, origin = deskew_rotate(raw.data, args.dz, args.dx, args.angle, dy_um=args.dy)
        write_volume(
            args.output, data, voxel, {"frame": "coverslip", "origin_um": origin, "source": str(args.input)}
        )
    else:
        result = deskew(raw.data, args.dz, args.dx, args.angle, dy_um=args.dy, scan_axis=args.scan_axis)
        data, voxel = result.data, result.voxel_size_um
        write_volume(
            args.output,
            data,
            voxel,
            {"frame": "objective", "origin_offset_um": result.origin_offset_um, "source": str(args.input)},
        )
    print(f"{args.output}: {data.shape} voxels (ZYX), voxel size {tuple(round(v, 5) for v in voxel)} µm")
    return 0


def cmd_deconvolve(args) -> int:
    from llsmflow.decon import deconvolve, prepare_psf
    from llsmflow.ingest import require_psf_within_volume
    from llsmflow.io import read_volume, write_volume

    volume = read_volume(args.input, channel=args.channel, timepoint=args.timepoint)
    data_voxel = (args.dz, args.dx, args.dx)
    psf = read_volume(args.psf)
    psf_voxel = (args.dzpsf or args.dz, args.dxpsf or args.dx, args.dxpsf or args.dx)
    if args.max_memory is not None and args.max_memory <= 0:
        raise LlsmflowError(f"--max-memory {args.max_memory} GB is invalid; expected a positive budget")
    # a PSF larger than the volume: refused here (and at ingest), not by the library, which copes with it
    with located(args.psf):
        kernel = prepare_psf(psf.data, psf_voxel, data_voxel)
    require_psf_within_volume(kernel.shape, volume.data.shape, args.psf, sizes="--dzpsf/--dxpsf, --dz/--dx")
    with located(args.input):  # errors about the PSF name args.psf (psf_path), the rest the input volume
        result = deconvolve(
            volume.data,
            psf.data,
            data_voxel,
            psf_voxel,
            iterations=args.iterations,
            background=args.background,
            backend=args.backend,
            method=args.method,
            max_memory_gb=args.max_memory,
            progress=_progress("iteration"),
            psf_path=args.psf,
        )
    write_volume(
        args.output,
        result.data,
        data_voxel,
        {"deconvolution": result.summary(), "source": str(args.input)},
    )
    print(
        f"{args.output}: {result.iterations} {result.method} iterations on backend {result.backend}"
        f" in {result.seconds:.1f} s ({result.chunks} chunk(s))"
    )
    for fallback in result.fallbacks:
        print(f"  note: {fallback}")
    return 0


def cmd_stitch(args) -> int:
    from llsmflow.stitch import (
        fuse_to_zarr,
        read_tiles_csv,
        read_transforms,
        register_tiles,
        tile_from_deskewed,
        write_transforms,
    )

    listed = read_tiles_csv(args.tiles)
    # deskewed tiles carry their deskew parameters: rebuild their validity masks (the empty wedges)
    tiles = [
        tile_from_deskewed(
            t.path, t.key, t.origin_um, origin_is_volume=True, lazy=args.max_memory is not None
        )
        for t in listed
    ]
    voxel = tiles[0].voxel_size_um
    if voxel is None:
        raise LlsmflowError(
            "tile has no voxel size in its metadata; expected an OME-TIFF from llsmflow deskew", tiles[0].path
        )
    if args.transforms and Path(args.transforms).exists():
        transforms = read_transforms(args.transforms)
        log.info("using registered positions from %s", args.transforms)
    else:
        transforms = register_tiles(
            tiles, voxel, min_quality=args.min_quality, max_shift_um=args.max_shift_um
        )
        if args.transforms:
            write_transforms(args.transforms, transforms)
    positions = {key: tuple(entry["origin_um"]) for key, entry in transforms["tiles"].items()}
    fuse_to_zarr(
        tiles,
        positions,
        voxel,
        args.output,
        blend_width_um=args.blend_width_um,
        max_memory_gb=args.max_memory,
        progress=_progress("fused chunk"),
    )
    used = sum(1 for pair in transforms["pairs"] if pair["used"])
    print(f"{args.output}: fused {len(tiles)} tiles ({used} of {len(transforms['pairs'])} pairs registered)")
    return 0


def cmd_track(args) -> int:
    from llsmflow.archive import read_ome_zarr
    from llsmflow.track import track_particles, write_tracks

    image, meta = read_ome_zarr(args.input)
    if not 0 <= args.channel < image.shape[1]:
        raise LlsmflowError(
            f"channel {args.channel} out of range; expected 0..{image.shape[1] - 1}", args.input
        )
    frames = (image[t, args.channel].compute() for t in range(image.shape[0]))
    if len(args.diameter_um) not in (1, 3):
        raise LlsmflowError(
            f"--diameter-um {args.diameter_um} is invalid; expected one value or three (z y x)"
        )
    diameter = args.diameter_um[0] if len(args.diameter_um) == 1 else tuple(args.diameter_um)
    tracks = track_particles(
        frames,
        meta["voxel_size_um"],
        meta["time_interval_s"],
        diameter_um=diameter,
        search_range_um=args.search_range_um,
        memory=args.memory,
        min_track_length=args.min_track_length,
        min_mass=args.min_mass,
        origin_um=meta.get("origin_um", (0, 0, 0)),
        progress=_progress("frame"),
    )
    output = Path(args.output)
    write_tracks(tracks, output.with_suffix(".parquet"), output.with_suffix(".csv"))
    print(f"{output.with_suffix('.csv')}: {tracks['particle'].nunique()} tracks, {len(tracks)} localisations")
    return 0


def cmd_archive(args) -> int:
    from llsmflow.archive import write_dataset_archive
    from llsmflow.stitch import stack_fused

    stores = [Path(s) for s in args.fused]
    if len(stores) != args.channels * args.timepoints:
        raise LlsmflowError(
            f"{len(stores)} fused volumes given; expected channels × timepoints = "
            f"{args.channels * args.timepoints} (ordered t0c0, t0c1, …)"
        )
    image, origin_um, voxel_size_um = stack_fused(
        [stores[t * args.channels : (t + 1) * args.channels] for t in range(args.timepoints)]
    )
    names = args.channel_names or [f"ch{c}" for c in range(args.channels)]
    tables = {}
    for item in args.table:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LlsmflowError(f"--table {item!r} is invalid; expected NAME=PATH.parquet")
        tables[name] = path
    write_dataset_archive(
        args.output,
        image,
        voxel_size_um,
        args.time_interval_s,
        names,
        tables=tables,
        raw_files=args.raw_files,
        ngff_version=args.ngff_version,
        origin_um=origin_um,
    )
    print(f"{args.output}: OME-Zarr {args.ngff_version}, shape TCZYX {image.shape}, {len(tables)} table(s)")
    return 0


def cmd_verify(args) -> int:
    from llsmflow.archive import verify_archive

    report = verify_archive(args.archive, raw_dir=args.raw_dir)
    problems = 0
    for kind in ("missing", "changed", "extra"):
        for name in report[kind]:
            print(f"{kind}: {name}")
            problems += 1
    if problems:
        print(
            f"{args.archive}: {problems} problem(s): {len(report['missing'])} missing, "
            f"{len(report['changed'])} changed, {len(report['extra'])} extra",
            file=sys.stderr,
        )
        return 1
    print(f"{args.archive}: intact (every file matches its sha256)")
    return 0


def find_workflow_root(explicit: str | None = None) -> Path:
    """The directory holding the workflow's ``Snakefile``: explicit, the current directory, or the source tree."""
    candidates = [Path(explicit)] if explicit else [Path.cwd(), Path(__file__).resolve().parents[2]]
    for candidate in candidates:
        if (candidate / "Snakefile").is_file():
            return candidate.resolve()
    raise LlsmflowError(
        "no Snakefile found; expected --workflow-dir pointing at an llsmflow checkout", candidates[0]
    )


def _schema_expectation(error) -> str:
    """What the schema wanted, in words, for a jsonschema validation error."""
    value = error.validator_value
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if error.validator in bounds:
        return f"a value {bounds[error.validator]} {value}"
    if error.validator == "enum":
        return f"one of {', '.join(map(repr, value))}"
    if error.validator == "type":
        return f"type {value if isinstance(value, str) else ' or '.join(value)}"
    if error.validator == "additionalProperties":
        return "only the keys documented in config/README.md"
    if error.validator == "required":
        return f"the keys {', '.join(value)}"
    if error.validator == "pattern":
        return f"text matching {value}"
    return "a value allowed by config/schema.yaml (see config/README.md)"


def snakemake_executable() -> str:
    """The ``snakemake`` command of this environment (beside this Python first, then on PATH)."""
    snakemake = shutil.which(
        "snakemake", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    )
    if snakemake is None:
        raise LlsmflowError("the snakemake command was not found; expected `pip install llsmflow[workflow]`")
    return snakemake


def check_config(configfile: Path, workflow_root: Path, check_files: bool = True) -> dict:
    """Validate a config file against the schema and read its acquisition, failing with one clear line.

    ``check_files=False`` skips reading every stack's header and PSF (``llsmflow status`` must answer even when
    the raw data are no longer mounted)."""
    import jsonschema
    import yaml

    if not configfile.is_file():
        raise LlsmflowError("config file not found", configfile)
    config = yaml.safe_load(configfile.read_text(encoding="utf-8")) or {}
    schema = yaml.safe_load((workflow_root / "config" / "schema.yaml").read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise LlsmflowError(
            f"config key {key}: {error.message}; expected {_schema_expectation(error)}", configfile
        )
    from llsmflow.ingest import read_acquisition

    read_acquisition(
        config["raw_dir"], config.get("metadata"), config.get("overrides") or {}, check_files=check_files
    )
    return config


def _first_step_error(log_dir: Path, since: float) -> str | None:
    """The first "step ... failed: <reason>" line of the step logs written since ``since`` (epoch s)."""
    if not log_dir.is_dir():
        return None
    failures = []
    for log_file in log_dir.rglob("*.log"):
        try:
            if log_file.stat().st_mtime < since:
                continue
            for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
                if " failed: " in line:
                    failures.append((log_file.stat().st_mtime, line.split(" failed: ", 1)[1].strip()))
                    break
        except OSError:
            continue
    return min(failures)[1] if failures else None


def _call_watching_stderr(command: list[str], env: dict[str, str]) -> tuple[int, str | None]:
    """Run ``command``, passing its stderr through line by line; return its exit status and, if a job failed
    for a full disk, what it was writing ("step RULE, writing OUTPUTS"). A full disk shows up in Snakemake's
    report of the failed job, not in the step logs, which are often on that same full disk."""
    seen = {"disk_full": False, "rule": None, "output": None}

    def forward(stream) -> None:
        rule = None
        for raw in stream:
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("Error in rule ") and line.endswith(":"):
                rule = line[len("Error in rule ") : -1]
            elif rule and line.startswith("output: ") and seen["rule"] is None:
                seen["rule"], seen["output"] = rule, line[len("output: ") :]
            if "[Errno 28]" in line:
                seen["disk_full"] = True

    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE) as process:
        assert process.stderr is not None
        try:
            forward(process.stderr)
        except KeyboardInterrupt:
            # Snakemake got the same Ctrl-C: keep its pipe open while it stops its jobs and cleans up
            forward(process.stderr)
            raise
    where = None
    if seen["disk_full"]:
        where = f"step {seen['rule']}, writing {seen['output']}" if seen["rule"] else "a workflow step"
    return process.returncode, where


def _run_environment(work: Path) -> dict[str, str]:
    """Environment of the workflow: caches that libraries would put in $HOME (matplotlib's font cache,
    Snakemake's source cache) go under the work directory unless the user chose a place for them."""
    env = dict(os.environ)
    cache = (work / ".cache").resolve()
    env.setdefault("XDG_CACHE_HOME", str(cache / "xdg"))
    env.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))
    return env


def cmd_run(args) -> int:
    from llsmflow.runlock import RunLock, clear_stale_snakemake_locks, lock_path, remove_partial_outputs

    root = find_workflow_root(args.workflow_dir)
    configfile = Path(args.configfile or root / "config" / "config.yaml")
    config = check_config(configfile, root)
    profile = Path(args.profile) if Path(args.profile).is_dir() else root / "profiles" / args.profile
    if not (profile / "config.yaml").is_file():
        raise LlsmflowError(
            f"profile {args.profile!r} not found; expected a directory with config.yaml "
            f"(available: {', '.join(sorted(p.name for p in (root / 'profiles').iterdir()))})",
            profile,
        )
    command = [
        snakemake_executable(),
        "--snakefile",
        str(root / "Snakefile"),
        "--configfile",
        str(configfile),
        "--profile",
        str(profile),
    ]
    if args.cores:
        command += ["--cores", str(args.cores)]
    if not {"--rerun-incomplete", "--ri"} & set(args.snakemake_args):
        command.append("--rerun-incomplete")  # jobs a killed run left unfinished are re-run, not trusted
    command += args.snakemake_args
    from llsmflow.status import print_run_summary, write_run_pointer

    dry_run = any(
        a in ("--dry-run", "--dryrun") or (a.startswith("-") and not a.startswith("--") and "n" in a)
        for a in args.snakemake_args
    )
    results_dir = Path(config.get("results_dir", "results"))
    results = results_dir / config["dataset"]
    work = Path(config.get("work_dir", "work")) / config["dataset"]
    # shared storage: outputs follow the user's umask, but are never writable by everyone
    umask = os.umask(0)
    os.umask(umask | 0o002)
    try:
        with RunLock(lock_path(results_dir, config["dataset"])):
            if not dry_run:  # a dry run looks, it neither cleans up nor records anything
                for stale in clear_stale_snakemake_locks(Path.cwd(), [results, work]):
                    log.warning("removed a stale Snakemake lock of an interrupted run: %s", stale)
                for partial in remove_partial_outputs([results, work]):
                    log.warning("removed an unfinished output of an interrupted run: %s", partial)
                write_run_pointer(Path.cwd(), configfile, root, config)
            print("running:", " ".join(command), flush=True)
            start, started_at = time.perf_counter(), time.time()
            status, disk_full = _call_watching_stderr(command, _run_environment(work))
            elapsed = time.perf_counter() - start
    finally:
        os.umask(umask)
    if status != 0:
        reason = _first_step_error(work / "logs", started_at)
        if disk_full:
            reason = (
                f"no space left on the device ({disk_full}); expected free space for the "
                f"outputs under {work} and {results}: free some, or point work_dir/results_dir to a larger "
                "disk, then run again (finished steps are kept)"
            )
        if reason:
            print(f"llsmflow run: error: {reason}", file=sys.stderr)
        print(
            f"llsmflow run: workflow failed after {elapsed:.0f} s (exit {status}); see the logs under "
            f"{work / 'logs'}",
            file=sys.stderr,
        )
        if not dry_run:
            print_run_summary(config, Path.cwd(), started_at, elapsed, status, out=sys.stderr)
        return status
    if dry_run:
        print(f"llsmflow run: dry run in {elapsed:.0f} s; nothing was written")
        return 0
    print(f"llsmflow run: done in {elapsed:.0f} s. Results in {results}/:")
    for relative in (f"{config['dataset']}.ome.zarr", "tracks", "qc", "provenance"):
        print(f"  {results / relative}")
    print_run_summary(config, Path.cwd(), started_at, elapsed, status)
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llsmflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"llsmflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of long steps")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic stage-scan LLSM acquisition with ground truth")
    p.add_argument("outdir", type=Path, help="output directory (raw/ and truth/ are created in it)")
    p.add_argument(
        "--tiles",
        type=_parse_tiles,
        default=(2, 1),
        help="tile grid NYxNX: across × along the scan (default 2x1)",
    )
    p.add_argument("--channels", type=int, default=2, help="number of channels, 1–3 (default 2)")
    p.add_argument("--timepoints", type=int, default=5, help="number of timepoints (default 5)")
    p.add_argument("--angle", type=float, default=31.5, help="sheet angle in degrees (default 31.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--tiny", action="store_true", help="smaller stacks, for tests")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "deskew", help="deskew a stage-scanned stack (optionally rotate to the coverslip frame)"
    )
    p.add_argument("input", type=Path, help="raw stack: TIFF (ZYX), OME-TIFF or ImageJ hyperstack")
    p.add_argument("output", type=Path, help="output OME-TIFF (float32, with voxel sizes)")
    p.add_argument("--dx", type=float, required=True, help="camera pixel size in µm")
    p.add_argument("--dy", type=float, default=None, help="pixel size along y in µm (default: --dx)")
    p.add_argument("--dz", type=float, required=True, help="stage step between planes in µm")
    p.add_argument(
        "--angle", type=float, required=True, help="sheet angle in degrees (e.g. 31.5; Zeiss LLS7: 30)"
    )
    p.add_argument("--scan-axis", choices=("x", "y"), default="x", help="stage scan axis (y for OPM)")
    p.add_argument(
        "--rotate", action="store_true", help="also rotate to the coverslip frame, isotropic voxels"
    )
    p.add_argument("--channel", type=int, default=None, help="channel index for multi-channel files")
    p.add_argument("--timepoint", type=int, default=None, help="timepoint index for time-lapse files")
    p.set_defaults(func=cmd_deskew)

    p = sub.add_parser("deconvolve", help="Richardson–Lucy deconvolution of a (deskewed) volume")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--psf", type=Path, required=True, help="PSF stack (bead image)")
    p.add_argument("--dx", type=float, required=True, help="data pixel size in µm")
    p.add_argument("--dz", type=float, required=True, help="data z spacing in µm (deskewed: dz·sin θ)")
    p.add_argument("--dxpsf", type=float, default=None, help="PSF pixel size in µm (default: --dx)")
    p.add_argument("--dzpsf", type=float, default=None, help="PSF z step in µm (default: --dz)")
    p.add_argument("--iterations", type=int, default=None, help="iterations (default: 10 for rl, 3 for wb)")
    p.add_argument("--background", type=_background, default="auto", help="constant background or 'auto'")
    p.add_argument(
        "--method",
        choices=("rl", "wb"),
        default="rl",
        help="rl: Richardson–Lucy; wb: Wiener–Butterworth back projector (converges in ~3 iterations)",
    )
    p.add_argument("--backend", choices=("auto", "cpu", "cupy", "pycudadecon"), default="auto")
    p.add_argument(
        "--max-memory",
        type=float,
        default=None,
        help="working-set budget in GB: larger volumes are deconvolved in overlapping chunks",
    )
    p.add_argument("--channel", type=int, default=None)
    p.add_argument("--timepoint", type=int, default=None)
    p.set_defaults(func=cmd_deconvolve)

    p = sub.add_parser("stitch", help="register and fuse tiles into a Zarr volume")
    p.add_argument("--tiles", type=Path, required=True, help="tiles.csv with columns path,x_um,y_um,z_um")
    p.add_argument("--output", type=Path, required=True, help="output Zarr store (fused volume)")
    p.add_argument(
        "--transforms",
        type=Path,
        default=None,
        help="transforms.json: used if it exists, else written with the registered positions",
    )
    p.add_argument("--min-quality", type=float, default=0.5, help="drop pairs with lower correlation (0–1)")
    p.add_argument("--max-shift-um", type=float, default=3.0, help="largest stage error searched, µm")
    p.add_argument("--blend-width-um", type=float, default=2.0, help="width of blending ramps, µm")
    p.add_argument(
        "--max-memory",
        type=float,
        default=None,
        help="memory budget in GB: tiles read lazily, chunks in flight bounded",
    )
    p.set_defaults(func=cmd_stitch)

    p = sub.add_parser("track", help="detect and link particles in an OME-Zarr archive (trackpy)")
    p.add_argument("input", type=Path, help="OME-Zarr archive (TCZYX)")
    p.add_argument("--output", type=Path, required=True, help="tracks.csv (a .parquet is written beside it)")
    p.add_argument("--channel", type=int, default=0)
    p.add_argument(
        "--diameter-um",
        type=float,
        nargs="+",
        default=[0.5],
        help="particle diameter in µm: one value, or three for z y x (e.g. 0.9 0.5 0.5)",
    )
    p.add_argument("--search-range-um", type=float, default=1.2, help="largest displacement per frame, µm")
    p.add_argument("--memory", type=int, default=1, help="frames a particle may vanish")
    p.add_argument("--min-track-length", type=int, default=3)
    p.add_argument(
        "--min-mass", type=float, default=None, help="minimum integrated brightness (default: auto)"
    )
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("archive", help="assemble fused Zarr volumes into an OME-Zarr archive (TCZYX)")
    p.add_argument("fused", nargs="+", help="fused Zarr stores ordered t0c0, t0c1, …, t1c0, …")
    p.add_argument("--output", type=Path, required=True, help="output .ome.zarr")
    p.add_argument("--channels", type=int, required=True)
    p.add_argument("--timepoints", type=int, required=True)
    p.add_argument("--time-interval-s", type=float, required=True)
    p.add_argument("--channel-names", nargs="+", default=None)
    p.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.5")
    p.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a Parquet table (tracks, statistics) to store beside the image; repeatable",
    )
    p.add_argument("--raw-files", nargs="*", default=[], help="raw inputs whose sha256 go into the manifest")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser(
        "verify", help="check an archive against its sha256 manifest (missing, changed, extra)"
    )
    p.add_argument("archive", type=Path, help="the .ome.zarr archive")
    p.add_argument(
        "--raw-dir",
        type=Path,
        default=None,
        help="where the raw inputs are now (default: where they were when archived)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("run", help="run the whole workflow with Snakemake")
    p.add_argument(
        "--profile", default="local", help="profile name under profiles/ or a directory (default local)"
    )
    p.add_argument("--configfile", default=None, help="workflow config (default config/config.yaml)")
    p.add_argument("--cores", default=None, help="cores to use (default: the profile's)")
    p.add_argument("--workflow-dir", default=None, help="llsmflow checkout holding the Snakefile")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="after --: extra Snakemake arguments")
    p.set_defaults(func=cmd_run)
    register_container_commands(sub)
    from llsmflow.status import register_status_commands

    register_status_commands(sub)
    register_hpc_commands(sub)
    __import__("llsmflow.reproduce").reproduce.register_reproduce_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "snakemake_args", None) and args.snakemake_args[:1] == ["--"]:
        args.snakemake_args = args.snakemake_args[1:]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        return args.func(args)
    except LlsmflowError as error:
        print(f"llsmflow {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llsmflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
