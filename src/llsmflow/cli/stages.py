"""The commands that run one step on one file: ``synth``, ``deskew``, ``deconvolve``, ``stitch``, ``track``,
``archive`` and ``verify``.

Each takes physical units (µm, s), prints one clear line and exits non-zero on bad input, and writes its
outputs atomically; the work is done by the processing packages, imported when the command runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from llsmflow.errors import LlsmflowError, located

log = logging.getLogger("llsmflow")


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
    import os

    if "numpy" not in sys.modules:  # a fresh process (the llsmflow command), not a caller that imported NumPy
        # no BLAS in the deconvolution: OpenBLAS's worker thread, started when NumPy loads, spins on the other
        # core for 0.05-0.1 s of CPU time (numpy import 0.13 -> 0.08 s CPU, a warm 96x256x256 RL-10 call
        # 2.55 -> 2.46 s CPU; wall unchanged on an idle machine, bench/RESULTS.md session 8)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from llsmflow.decon import deconvolve
    from llsmflow.decon.psf import _prepare_psf_cached, deskew_psf, resolve_psf_geometry
    from llsmflow.ingest.files import require_psf_within_volume
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
        # kept in memory and on disk (decon.kernel_cache): a later call with this PSF skips the preparation
        kernel = _prepare_psf_cached(psf_data, psf_voxel, data_voxel, geometry="objective")
    try:
        require_psf_within_volume(kernel.shape, volume.data.shape, args.psf, sizes="--dzpsf/--dxpsf, --dz/--dx")
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
    from llsmflow.archive.remote import redact
    from llsmflow.track import track_particles, write_tracks

    image, meta = read_ome_zarr(args.input)  # a URL reads one timepoint's chunks at a time
    if not 0 <= args.channel < image.shape[1]:
        raise LlsmflowError(
            f"channel {args.channel} out of range; expected 0..{image.shape[1] - 1}", redact(args.input)
        )
    import dask
    from dask.threaded import get as threaded_get

    # dask's own scheduler for arrays (threads), passed as a function: left to choose, dask imports
    # distributed (0.12 s of `llsmflow track`) only to look for a client this process never starts; a
    # scheduler set in dask's configuration still wins
    scheduler = dask.config.get("scheduler", None) or threaded_get
    frames = (image[t, args.channel].compute(scheduler=scheduler) for t in range(image.shape[0]))
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
    attributes, wavelengths = None, args.emission_nm
    if args.acquisition is not None:  # what the workflow's archive keeps: names, colours, the metadata
        from llsmflow.cli.convert import acquisition_for_archive

        attributes, acquired_names, acquired_nm = acquisition_for_archive(args.acquisition, args.channels)
        names = args.channel_names or acquired_names
        wavelengths = wavelengths or acquired_nm
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
        attributes=attributes,
        wavelengths_nm=wavelengths,
    )
    print(f"{args.output}: OME-Zarr {args.ngff_version}, shape TCZYX {image.shape}, {len(tables)} table(s)")
    return 0


def cmd_verify(args) -> int:
    from llsmflow.archive import verify_archive
    from llsmflow.archive.remote import redact

    report = verify_archive(args.archive, raw_dir=args.raw_dir)
    where = redact(args.archive)
    for name in report.get("unchecked", []):  # a remote archive: what could not be checked
        print(f"not checked: {name}")
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
            f"{where}: {problems} problem(s): "
            + ", ".join(f"{len(report.get(kind, []))} {kind}" for kind in labels),
            file=sys.stderr,
        )
        return 1
    if report.get("unchecked"):
        print(f"{where}: intact as far as checked (every file reached matches its sha256; see 'not checked')")
        return 0
    print(f"{where}: intact (every file matches its sha256)")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def register_stage_commands(sub) -> None:
    """Add the commands that run one step on one file: synth, deskew, deconvolve, stitch, track, archive,
    verify (their arguments, help and examples: :mod:`llsmflow.cli.stage_args`)."""
    from llsmflow.cli.stage_args import register_stage_arguments

    register_stage_arguments(sub)
