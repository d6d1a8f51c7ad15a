"""An instrument's folder as an :class:`Acquisition`: its files' fields, an ``acquisition.json``'s overrides,
the config's overrides, then the same checks as the generic format.

Precedence, lowest first: what the instrument's files say (:mod:`llsmflow.ingest.detect`), an
``acquisition.json`` without ``file_regex`` (the config's ``metadata`` when it names a JSON file, else
``RAW_DIR/acquisition.json`` if present: any field, ``channels`` merged entry by entry), the config's
``overrides``. A field that none of them gives is one error line naming it and where to give it.
"""

from __future__ import annotations

import math
from pathlib import Path

from llsmflow.errors import LlsmflowError, require_positive_voxel_size
from llsmflow.ingest.acquisition_json import (
    METADATA_NAME,
    WAVELENGTH_RANGE_NM,
    check_overrides,
    describe_json,
    load_acquisition_json,
)
from llsmflow.ingest.files import (
    check_declared_vs_found,
    check_psfs,
    inside_raw_dir,
    missing_timepoints,
    only_stacks,
)
from llsmflow.ingest.model import Acquisition
from llsmflow.io import as_path

#: How a missing field is given: the config key (``llsmflow init`` flag) or acquisition.json entry.
HOW_TO_GIVE = {
    "angle_deg": "overrides.angle_deg in the config (llsmflow init --angle)",
    "dz_um": "overrides.dz_um in the config (llsmflow init --dz)",
    "dx_um": "overrides.dx_um in the config (llsmflow init --dx, the camera pixel size at the sample)",
    "dy_um": "overrides.dy_um in the config (llsmflow init --dx)",
    "scan_axis": "overrides.scan_axis in the config (llsmflow init --scan-axis)",
    "time_interval_s": "overrides.time_interval_s in the config (llsmflow init --interval)",
}


def merge_metadata(meta: dict, extra: dict) -> dict:
    """``meta`` with ``extra``'s fields replacing its own; ``channels`` entries are merged index by index."""
    merged = dict(meta)
    for key, value in extra.items():
        if key == "channels" and isinstance(value, list):
            channels = [dict(c) for c in merged.get("channels") or []]
            for index, entry in enumerate(value):
                if index < len(channels):
                    channels[index].update(entry)
                else:
                    channels.append(dict(entry))
            merged["channels"] = channels
        else:
            merged[key] = value
    return merged


def override_json(raw_dir: Path, metadata_path) -> Path | None:
    """The acquisition.json that overrides an instrument's fields, if any."""
    if metadata_path is not None and as_path(metadata_path).suffix.lower() == ".json":
        return as_path(metadata_path)
    candidate = raw_dir / METADATA_NAME
    return candidate if candidate.is_file() else None


def instrument_metadata(raw_dir: Path, fmt: str, found_path: Path, metadata_path, overrides):
    """The instrument's reading with acquisition.json's and the config's overrides applied:
    ``(reading, meta, sources)`` where ``sources`` maps each overridden field to who overrode it."""
    from llsmflow.ingest.detect import read_instrument

    reading = read_instrument(raw_dir, fmt, found_path)
    meta, sources = dict(reading.meta), {}
    json_path = override_json(raw_dir, metadata_path)
    if json_path is not None:
        extra = load_acquisition_json(json_path)
        meta = merge_metadata(meta, extra)
        sources.update({k: json_path.name for k in extra})
        meta["overridden_by"] = str(json_path)
    checked = check_overrides(overrides)
    meta.update(checked)
    sources.update({k: "config overrides" for k in checked})
    return reading, meta, sources


def _required_number(meta: dict, key: str, path: Path) -> float:
    value = meta.get(key)
    if value is None:
        raise LlsmflowError(
            f"{key} is not in the instrument's files; expected it given as {HOW_TO_GIVE[key]}", path
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LlsmflowError(f"{key} = {describe_json(value)} is not a number; expected a finite number", path)
    return float(value)


def check_instrument_channels(channels: list[dict], raw_dir: Path, path: Path) -> None:
    """Names unique, wavelengths (when known) in nm, a PSF inside the raw folder with its voxel size."""
    names = [c.get("name") for c in channels]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise LlsmflowError(f"channel name(s) {repeated} repeat; expected a unique name per channel", path)
    low, high = WAVELENGTH_RANGE_NM
    for index, channel in enumerate(channels):
        for key in ("excitation_nm", "emission_nm"):
            value = channel.get(key)
            if value is not None and not (isinstance(value, int | float) and low <= value <= high):
                raise LlsmflowError(
                    f"channels[{index}].{key} = {describe_json(value)}; expected a wavelength in nm between "
                    f"{low} and {high} (or unknown)",
                    path,
                )
        label = f"channel {index} ({channel.get('name')}, excitation {channel.get('excitation_nm')} nm)"
        psf = channel.get("psf")
        if not psf:
            raise LlsmflowError(
                f"{label} has no PSF: no PSF file named after its wavelength is in the raw folder; expected one "
                "(e.g. 488_PSF.czi) or channels[i].psf in an acquisition.json beside the config",
                raw_dir,
            )
        if not inside_raw_dir(raw_dir, raw_dir / psf):
            raise LlsmflowError(
                f"PSF path {psf!r} escapes the raw data directory; expected a path inside it", path
            )
        if not (raw_dir / psf).is_file():
            raise LlsmflowError(
                f"PSF file of {label} not found; expected {psf!r} in the raw directory", raw_dir
            )
        if channel.get("psf_voxel_size_um") is None:
            raise LlsmflowError(
                f"the voxel size of {label}'s PSF {psf!r} is in no file; expected channels[{index}]."
                "psf_voxel_size_um [dz, dy, dx] in an acquisition.json beside the config",
                raw_dir / psf,
            )
        require_positive_voxel_size(
            channel["psf_voxel_size_um"], path, what=f"channel {index} psf_voxel_size_um"
        )


def check_volumes(raw_dir: Path, samples, expected, path: Path) -> tuple[int, int, int]:
    """Every sample's volume header (selectors included): readable, complete, one ZYX shape for all."""
    from llsmflow.io import read_header

    shapes = {}
    for name in sorted(set(samples["path"])):
        if not inside_raw_dir(raw_dir, raw_dir / name):
            raise LlsmflowError(
                f"is a symbolic link to {(raw_dir / name).resolve()}, outside the raw data directory; expected "
                "raw data inside it (it is what is checksummed, archived and reproduced: copy the file in)",
                raw_dir / name,
            )
    for row in samples.itertuples(index=False):
        key = (row.path, row.file_channel, row.file_timepoint)
        if key not in shapes:
            shapes[key] = read_header(
                raw_dir / row.path, channel=row.file_channel, timepoint=row.file_timepoint
            )[0]
    reference = tuple(int(n) for n in expected) if expected is not None else next(iter(shapes.values()))
    for (name, _, _), shape in shapes.items():
        if shape != reference:
            raise LlsmflowError(
                f"has shape {shape} (ZYX); expected {reference}: every tile, channel and timepoint must have one "
                "shape",
                raw_dir / name,
            )
    if reference[0] < 2:
        raise LlsmflowError(
            f"stacks have {reference[0]} plane(s); expected a stage-scan stack of at least 2 planes", raw_dir
        )
    return reference


def read_instrument_acquisition(
    raw_dir: Path,
    fmt: str,
    found_path: Path,
    metadata_path,
    overrides,
    check_files: bool,
    psf_geometry: str,
    allow_missing_timepoints: bool,
    only_files,
    rotate: bool,
    psf_background: float | str,
) -> Acquisition:
    """An instrument folder read into an :class:`Acquisition` (see the module docstring for precedence)."""
    from llsmflow.ingest.read import tile_table

    reading, meta, _ = instrument_metadata(raw_dir, fmt, found_path, metadata_path, overrides)
    path = reading.metadata_path
    angle = _required_number(meta, "angle_deg", path)
    if not 0 < abs(angle) < 90:
        raise LlsmflowError(f"angle_deg = {angle} is out of range; expected 0 < |angle| < 90", path)
    dz, dx = _required_number(meta, "dz_um", path), _required_number(meta, "dx_um", path)
    dy = float(meta["dy_um"]) if meta.get("dy_um") is not None else dx
    require_positive_voxel_size((dz, dy, dx), path, what="voxel size (dz_um, dy_um, dx_um)")
    interval = _required_number(meta, "time_interval_s", path)
    if interval <= 0:
        raise LlsmflowError(f"time_interval_s = {interval} is invalid; expected > 0", path)
    scan_axis = meta.get("scan_axis")
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(
            f"scan_axis = {scan_axis!r} is not known; expected 'x' or 'y', given as {HOW_TO_GIVE['scan_axis']}",
            path,
        )
    camera_offset = float(meta.get("camera_offset") or 0.0)
    if camera_offset < 0:
        raise LlsmflowError(f"camera_offset = {camera_offset} is invalid; expected >= 0", path)
    channels = meta.get("channels") or []
    check_instrument_channels(channels, raw_dir, path)
    tiles = tile_table(meta, angle, path)
    samples = only_stacks(reading.samples, only_files, raw_dir)
    n_timepoints = check_declared_vs_found(
        samples, list(tiles["tile"]), len(channels), meta.get("timepoints"), raw_dir, path,
        allow_missing_timepoints,
        partial=only_files is not None,
    )
    samples = samples.sort_values(["timepoint", "channel", "tile"]).reset_index(drop=True)
    if check_files:
        raw_shape = check_volumes(raw_dir, samples, meta.get("raw_shape_zyx"), path)
        check_psfs(
            raw_dir, channels, raw_shape, dz, dy, dx, angle, scan_axis,
            psf_geometry=psf_geometry, rotate=rotate, psf_background=psf_background,
        )  # fmt: skip
    meta["notes"] = reading.notes
    return Acquisition(
        raw_dir=raw_dir,
        metadata_path=path,
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
        instrument=reading.instrument,
        format=fmt,
    )
