"""Read an acquisition directory into an :class:`Acquisition`: the generic format (``acquisition.json`` + TIFF
stacks) or an instrument's own files (Zeiss CZI, Janelia/3i folder, OME-TIFF/ImageJ hyperstack; see
:mod:`llsmflow.ingest.detect`), which an ``acquisition.json`` without ``file_regex`` then overrides field by
field."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llsmflow.deskew.frames import stage_to_objective_um
from llsmflow.errors import LlsmflowError, require_positive_voxel_size
from llsmflow.ingest.acquisition_json import (
    check_channels,
    check_overrides,
    compile_file_regex,
    load_acquisition_json,
    number,
)
from llsmflow.ingest.files import (
    check_declared_vs_found,
    check_psfs,
    check_stacks,
    inside_raw_dir,
    match_stacks,
    missing_timepoints,
    only_stacks,
)
from llsmflow.ingest.model import Acquisition, raw_folder, tile_name
from llsmflow.io import as_path


def read_acquisition(
    raw_dir: str | Path,
    metadata_path: str | Path | None = None,
    overrides: dict | None = None,
    check_files: bool = True,
    psf_geometry: str = "auto",
    allow_missing_timepoints: bool = False,
    only_files=None,
    rotate: bool = False,
    psf_background: float | str = "auto",
) -> Acquisition:
    """Read an acquisition directory into an :class:`Acquisition`.

    Parameters
    ----------
    raw_dir:
        Directory with the raw TIFF stacks (opened read-only, never written), or its URL (``https://…/raw/``
        listed by the server, ``s3://…``; :func:`llsmflow.ingest.model.raw_folder`).
    metadata_path:
        The acquisition metadata file; defaults to ``raw_dir/acquisition.json``.
    overrides:
        Values replacing the metadata's (keys: ``angle_deg, dz_um, dx_um, dy_um, time_interval_s, scan_axis,
        camera_offset``); ``None`` values are ignored.
    check_files:
        Also check every stack's TIFF header (readable, complete, real dtype, ZYX, one shape for all) and every
        PSF (3-D, finite, with signal, smaller than the volume deconvolved: see ``rotate``). This opens every
        file (a few ms each, the PSFs read whole): done once per run (``llsmflow run`` and the ingest step),
        not every time the workflow is parsed (each cluster job parses it again).
    psf_geometry:
        The config's ``deconvolution.psf_geometry`` (``auto``, ``skewed``, ``objective``): the PSF check
        prepares each PSF as the workflow will (a skewed bead stack deskewed first).
    allow_missing_timepoints:
        The config's ``ingest.allow_missing_timepoints``: accept timepoints missing from every tile and
        channel (listed in ``Acquisition.missing_timepoints``; each frame keeps its real time, ``time_s``)
        instead of refusing them.
    only_files:
        An acquisition still being written (``llsmflow watch``): only the stack files named here (relative to
        ``raw_dir``) are taken, and the stacks not written yet are not missing.
    rotate:
        The config's ``deskew.rotate``: the volumes deconvolved are rotated to the coverslip frame, so the PSF
        check prepares each PSF as the workflow then does (rotated, on the rotated volumes' isotropic grid)
        and compares it with the rotated volume's shape.
    psf_background:
        The config's ``deconvolution.psf_background``: the PSF check subtracts it as the workflow does (the
        kernel's support, hence its size, depends on it).

    Raises
    ------
    LlsmflowError
        One line naming the file, the field or item, the value and the expectation: metadata of the wrong
        type or out of range, a stack or PSF outside the raw directory, a declared timepoint, channel or tile
        without stacks (each named), a damaged stack or PSF.
    """
    from llsmflow.ingest.detect import detect_format

    raw_dir = raw_folder(raw_dir)
    if metadata_path and not as_path(metadata_path).is_absolute() and not as_path(metadata_path).exists():
        if (raw_dir / metadata_path).exists():  # a config's metadata may name a file in the raw folder
            metadata_path = raw_dir / metadata_path
    fmt, found_path = detect_format(raw_dir, metadata_path)
    if fmt != "acquisition.json":
        from llsmflow.ingest.instrument import read_instrument_acquisition

        return read_instrument_acquisition(
            raw_dir, fmt, found_path, metadata_path, overrides, check_files, psf_geometry,
            allow_missing_timepoints=allow_missing_timepoints, only_files=only_files, rotate=rotate,
            psf_background=psf_background,
        )
    metadata_path = found_path
    meta = load_acquisition_json(metadata_path)
    meta.update(check_overrides(overrides))

    angle = number(meta, "angle_deg", metadata_path)
    if not 0 < abs(angle) < 90:
        raise LlsmflowError(f"angle_deg = {angle} is out of range; expected 0 < |angle| < 90", metadata_path)
    dz, dx = number(meta, "dz_um", metadata_path), number(meta, "dx_um", metadata_path)
    dy = number(meta, "dy_um", metadata_path) if "dy_um" in meta else dx
    require_positive_voxel_size((dz, dy, dx), metadata_path, what="voxel size (dz_um, dy_um, dx_um)")
    interval = number(meta, "time_interval_s", metadata_path)
    if interval <= 0:
        raise LlsmflowError(f"time_interval_s = {interval} is invalid; expected > 0", metadata_path)
    scan_axis = meta.get("scan_axis", "x")
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan_axis = {scan_axis!r} is invalid; expected 'x' or 'y'", metadata_path)
    camera_offset = number(meta, "camera_offset", metadata_path) if "camera_offset" in meta else 0.0
    if camera_offset < 0:
        raise LlsmflowError(f"camera_offset = {camera_offset} is invalid; expected >= 0", metadata_path)
    channels = meta.get("channels") or []
    if not channels:
        raise LlsmflowError("metadata lists no channels; expected a 'channels' list", metadata_path)
    check_channels(channels, metadata_path)
    for index, channel in enumerate(channels):
        psf = channel.get("psf")
        if psf is None:
            raise LlsmflowError(f"channel {index} names no PSF file; expected a 'psf' entry", metadata_path)
        if not inside_raw_dir(raw_dir, raw_dir / psf):
            raise LlsmflowError(
                f"PSF path {psf!r} escapes the raw data directory; expected a path inside it", metadata_path
            )
        if not (raw_dir / psf).is_file():
            raise LlsmflowError(
                f"PSF file of channel {index} not found; expected {psf!r} in the raw directory", raw_dir / psf
            )
        require_positive_voxel_size(
            channel.get("psf_voxel_size_um"), metadata_path, what=f"channel {index} psf_voxel_size_um"
        )

    tiles = tile_table(meta, angle, metadata_path)
    pattern = compile_file_regex(meta, metadata_path)
    samples = only_stacks(match_stacks(raw_dir, pattern, {c["psf"] for c in channels}), only_files, raw_dir)
    n_timepoints = check_declared_vs_found(
        samples, list(tiles["tile"]), len(channels), meta.get("timepoints"), raw_dir, metadata_path,
        allow_missing_timepoints,
        partial=only_files is not None,
    )
    samples = samples.sort_values(["timepoint", "channel", "tile"]).reset_index(drop=True)
    samples["time_s"] = samples["timepoint"] * interval
    samples["file_channel"] = None  # one volume per file: no selector
    samples["file_timepoint"] = None
    if check_files:
        raw_shape = check_stacks(raw_dir, samples, meta.get("raw_shape_zyx"), metadata_path)
        check_psfs(
            raw_dir, channels, raw_shape, dz, dy, dx, angle, scan_axis,
            psf_geometry=psf_geometry, rotate=rotate, psf_background=psf_background,
        )  # fmt: skip
    return Acquisition(
        raw_dir=raw_dir,
        metadata_path=metadata_path,
        angle_deg=angle,
        dz_um=dz,
        dx_um=dx,
        dy_um=dy,
        scan_axis=scan_axis,
        time_interval_s=interval,
        camera_offset=camera_offset,
        channels=channels,
        tiles=tiles,
        samples=samples,
        metadata=meta,
        declared_timepoints=n_timepoints,
        missing_timepoints=missing_timepoints(samples, n_timepoints),
    )


def tile_table(meta: dict, angle: float, path: Path) -> pd.DataFrame:
    rows = []
    for entry in meta.get("tiles") or [{"ix": 0, "iy": 0, "iz": 0}]:
        ix, iy, iz = (int(entry.get(k, 0)) for k in ("ix", "iy", "iz"))
        stage = tuple(float(entry.get(k, 0.0)) for k in ("stage_x_um", "stage_y_um", "stage_z_um"))
        origin = stage_to_objective_um(stage, angle)
        rows.append(
            {
                "tile": tile_name(ix, iy, iz),
                "ix": ix,
                "iy": iy,
                "iz": iz,
                "stage_x_um": stage[0],
                "stage_y_um": stage[1],
                "stage_z_um": stage[2],
                "z_um": origin[0],
                "y_um": origin[1],
                "x_um": origin[2],
            }
        )
    table = pd.DataFrame(rows)
    duplicated = table["tile"][table["tile"].duplicated()]
    if len(duplicated):
        raise LlsmflowError(f"tile {duplicated.iloc[0]} is listed twice; expected unique tile indices", path)
    return table
