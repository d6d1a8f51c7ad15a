"""The commands that run one step on one file: ``synth``, ``deskew``, ``deconvolve``, ``stitch``, ``track``,
``archive`` and ``verify``.

Each takes physical units (µm, s), prints one clear line and exits non-zero on bad input, and writes its
outputs atomically; the work is done by the processing packages, imported when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from llsmflow.errors import LlsmflowError, located

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


def _from_file(flag_value, file_value, path, flag: str, what: str):
    """A flag's value, else the file's; one clear line when neither gives one."""
    if flag_value is not None:
        return flag_value
    if file_value is not None:
        return file_value
    raise LlsmflowError(
        f"the file states no {what} and {flag} is not given; expected {flag} or a file that states it", path
    )


def _file_description(path) -> dict:
    """The JSON an llsmflow output carries in its OME description (angle, stage step, scan axis), or {}."""
    from llsmflow.io import read_volume_description

    try:
        return read_volume_description(path)
    except Exception:  # a readable TIFF without an OME description: the file states nothing more
        return {}


def _voxel_sizes(args, volume, path, dx_flag: str = "--dx", dz_flag: str = "--dz"):
    """(dz, dy, dx) µm: the flags (``args.dz``, ``args.dy``, ``args.dx``) override the file's voxel size."""
    file_voxel = volume.voxel_size_um or (None, None, None)
    dz = _from_file(args.dz, file_voxel[0], path, dz_flag, "z spacing (PhysicalSizeZ)")
    dx = _from_file(args.dx, file_voxel[2], path, dx_flag, "pixel size (PhysicalSizeX)")
    dy = getattr(args, "dy", None)
    if dy is None:
        dy = args.dx if args.dx is not None else file_voxel[1]
    return float(dz), float(dy), float(dx)


def cmd_deskew(args) -> int:
    from llsmflow.deskew import deskew, deskew_rotate
    from llsmflow.io import read_volume, write_volume

    raw = read_volume(args.input, channel=args.channel, timepoint=args.timepoint)
    with located(args.input):
        return _deskew_and_write(args, raw, deskew, deskew_rotate, write_volume)


def _deskew_and_write(args, raw, deskew, deskew_rotate, write_volume) -> int:
    dz, dy, dx = _voxel_sizes(args, raw, args.input)
    stated = {**_file_description(args.input), **raw.metadata}
    angle = float(_from_file(args.angle, stated.get("angle_deg"), args.input, "--angle", "sheet angle"))
    scan_axis = args.scan_axis or stated.get("scan_axis") or "x"
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} stated in the file is invalid; expected 'x' or 'y'")
    # what a later `llsmflow deconvolve` needs to deskew a skewed PSF like these data
    acquisition = {"angle_deg": angle, "stage_step_um": dz, "scan_axis": scan_axis, "source": str(args.input)}
    if args.rotate:
        data, voxel, origin = deskew_rotate(raw.data, dz, dx, angle, dy_um=dy, scan_axis=scan_axis)
        write_volume(args.output, data, voxel, {"frame": "coverslip", "origin_um": origin, **acquisition})
    else:
        result = deskew(raw.data, dz, dx, angle, dy_um=dy, scan_axis=scan_axis)
        data, voxel = result.data, result.voxel_size_um
        write_volume(
            args.output,
            data,
            voxel,
            {"frame": "objective", "origin_offset_um": result.origin_offset_um, **acquisition},
        )
    print(f"{args.output}: {data.shape} voxels (ZYX), voxel size {tuple(round(v, 5) for v in voxel)} µm")
    return 0


def cmd_deconvolve(args) -> int:
    from llsmflow.decon import deconvolve, prepare_psf
    from llsmflow.decon.psf import deskew_psf, resolve_psf_geometry
    from llsmflow.ingest import require_psf_within_volume
    from llsmflow.io import read_volume, write_volume

    volume = read_volume(args.input, channel=args.channel, timepoint=args.timepoint)
    data_voxel = _voxel_sizes(args, volume, args.input)
    psf = read_volume(args.psf)
    psf_file = psf.voxel_size_um or (None, None, None)
    # PSF voxel size: the flags, else the PSF file's, else the data's
    dzpsf = (
        args.dzpsf if args.dzpsf is not None else psf_file[0] if psf_file[0] is not None else data_voxel[0]
    )
    dxpsf = (
        args.dxpsf if args.dxpsf is not None else psf_file[2] if psf_file[2] is not None else data_voxel[2]
    )
    dypsf = (
        args.dxpsf if args.dxpsf is not None else psf_file[1] if psf_file[1] is not None else data_voxel[1]
    )
    psf_voxel = (float(dzpsf), float(dypsf), float(dxpsf))
    # the data's acquisition (for a skewed PSF): flags, else what llsmflow deskew stored in the input
    stated = {**_file_description(args.input), **volume.metadata}
    angle = args.angle if args.angle is not None else stated.get("angle_deg")
    stage_step = args.stage_step if args.stage_step is not None else stated.get("stage_step_um")
    scan_axis = args.scan_axis or stated.get("scan_axis") or "x"
    with located(args.psf):
        geometry, reason = resolve_psf_geometry(
            args.psf_geometry, psf_voxel, angle, stage_step, psf.data, scan_axis
        )
    psf_data = psf.data
    if geometry == "skewed":
        with located(args.psf):
            psf_data, psf_voxel = deskew_psf(psf.data, psf_voxel, angle, scan_axis)
    if args.max_memory is not None and args.max_memory <= 0:
        raise LlsmflowError(f"--max-memory {args.max_memory} GB is invalid; expected a positive budget")
    # a PSF larger than the volume: refused here (and at ingest), not by the library, which copes with it
    with located(args.psf):
        kernel = prepare_psf(psf_data, psf_voxel, data_voxel, geometry="objective")
    try:
        require_psf_within_volume(
            kernel.shape, volume.data.shape, args.psf, sizes="--dzpsf/--dxpsf, --dz/--dx"
        )
    except LlsmflowError as exc:
        if geometry == "skewed":
            raise
        raise LlsmflowError(
            f"{exc.message}; the PSF must be in the objective frame, or be declared skewed "
            "(--psf-geometry skewed) to be deskewed like the data",
            exc.path,
        ) from None
    with located(args.input):  # errors about the PSF name args.psf (psf_path), the rest the input volume
        result = deconvolve(
            volume.data,
            psf_data,
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
        {
            "deconvolution": result.summary(),
            "psf_geometry": {"used": geometry, "reason": reason},
            "source": str(args.input),
        },
        compression=None if args.compression == "none" else args.compression,
    )
    print(
        f"{args.output}: {result.iterations} {result.method} iterations on backend {result.backend}"
        f" in {result.seconds:.1f} s ({result.chunks} chunk(s))"
    )
    print(f"  PSF geometry: {geometry} ({reason})")
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
    labels = {
        "missing": "missing",
        "changed": "changed",
        "extra": "extra",
        "symlinks": "symlink (not followed)",
        "tables": "table checksum in the attributes disagrees",
    }
    problems = 0
    for kind, label in labels.items():
        for name in report.get(kind, []):
            print(f"{label}: {name}")
            problems += 1
    if problems:
        print(
            f"{args.archive}: {problems} problem(s): "
            + ", ".join(f"{len(report.get(kind, []))} {kind}" for kind in labels),
            file=sys.stderr,
        )
        return 1
    print(f"{args.archive}: intact (every file matches its sha256)")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def register_stage_commands(sub) -> None:
    """Add the commands that run one step on one file: synth, deskew, deconvolve, stitch, track, archive,
    verify."""
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
    p.add_argument("--dx", type=float, default=None, help="camera pixel size in µm (default: the file's)")
    p.add_argument(
        "--dy", type=float, default=None, help="pixel size along y in µm (default: --dx, else the file's)"
    )
    p.add_argument(
        "--dz", type=float, default=None, help="stage step between planes in µm (default: the file's)"
    )
    p.add_argument(
        "--angle",
        type=float,
        default=None,
        help="sheet angle in degrees (e.g. 31.5; Zeiss LLS7: 30); required unless the file states it",
    )
    p.add_argument(
        "--scan-axis",
        choices=("x", "y"),
        default=None,
        help="stage scan axis (y for Zeiss LLS7 and OPM; default: the file's, else x)",
    )
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
    p.add_argument("--dx", type=float, default=None, help="data pixel size in µm (default: the file's)")
    p.add_argument(
        "--dz",
        type=float,
        default=None,
        help="data z spacing in µm (deskewed: dz·sin θ; default: the file's)",
    )
    p.add_argument(
        "--dxpsf", type=float, default=None, help="PSF pixel size in µm (default: the PSF file's, else --dx)"
    )
    p.add_argument(
        "--dzpsf", type=float, default=None, help="PSF z step in µm (default: the PSF file's, else --dz)"
    )
    p.add_argument(
        "--psf-geometry",
        choices=("auto", "skewed", "objective"),
        default="auto",
        help="skewed: a stage-scanned PSF, deskewed and cropped to the bead first; objective: used as is; "
        "auto: skewed when the bead moves between planes as a stage scan moves it",
    )
    p.add_argument(
        "--angle", type=float, default=None, help="data sheet angle, degrees (default: from llsmflow deskew)"
    )
    p.add_argument(
        "--stage-step",
        type=float,
        default=None,
        help="data stage step in µm (default: from llsmflow deskew's output)",
    )
    p.add_argument(
        "--scan-axis",
        choices=("x", "y"),
        default=None,
        help="data stage scan axis (default: from llsmflow deskew's output, else x)",
    )
    p.add_argument("--iterations", type=int, default=None, help="iterations (default: 10 for rl, 3 for wb)")
    p.add_argument("--background", type=_background, default="auto", help="constant background or 'auto'")
    p.add_argument(
        "--method",
        choices=("rl", "wb"),
        default="rl",
        help="rl: Richardson–Lucy; wb: Wiener–Butterworth back projector (converges in ~3 iterations)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "cpu", "cupy", "pycudadecon"),
        default="cpu",
        help="where to compute; auto: pycudadecon, else CuPy, else the CPU, whichever is available",
    )
    p.add_argument(
        "--max-memory",
        type=float,
        default=None,
        help="working-set budget in GB: larger volumes are deconvolved in overlapping chunks",
    )
    p.add_argument("--channel", type=int, default=None)
    p.add_argument("--timepoint", type=int, default=None)
    p.add_argument(
        "--compression",
        choices=("none", "zlib"),
        default="none",
        help="output TIFF compression: zlib about halves the file but is single-threaded (seconds per volume)",
    )
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
