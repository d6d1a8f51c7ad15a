"""Ingest: acquisition metadata + file discovery → a sample table, with config overrides.

An acquisition directory holds one TIFF stack per (tile, channel, timepoint), named by the instrument, and a
metadata file (``acquisition.json``, see :mod:`llsmflow.synth` for the format). Ingest reads the metadata,
applies overrides from the workflow config (e.g. a corrected angle), finds the stacks by the file-name pattern,
checks the set is complete and consistent, and returns an :class:`Acquisition` whose ``samples`` table is what
the workflow iterates over. Nothing in the raw directory is written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from llsmflow.deskew.frames import deskewed_plane_spacing_um, deskewed_shape, stage_to_objective_um
from llsmflow.errors import LlsmflowError, require_positive_voxel_size
from llsmflow.io import read_header, read_volume

METADATA_NAME = "acquisition.json"
OVERRIDABLE = ("angle_deg", "dz_um", "dx_um", "dy_um", "time_interval_s", "scan_axis", "camera_offset")


@dataclass
class Acquisition:
    """Everything the workflow needs to know about one raw acquisition (µm, s, degrees)."""

    raw_dir: Path
    metadata_path: Path
    angle_deg: float
    dz_um: float
    dx_um: float
    dy_um: float
    scan_axis: str
    time_interval_s: float
    camera_offset: float
    channels: list[dict]
    tiles: pd.DataFrame
    samples: pd.DataFrame
    metadata: dict = field(default_factory=dict)

    @property
    def deskewed_voxel_size_um(self) -> tuple[float, float, float]:
        """Voxel size (dz', dy, dx) in µm after deskewing."""
        return (deskewed_plane_spacing_um(self.dz_um, self.angle_deg), self.dy_um, self.dx_um)

    @property
    def channel_names(self) -> list[str]:
        return [c["name"] for c in self.channels]

    @property
    def timepoints(self) -> list[int]:
        return sorted(int(t) for t in self.samples["timepoint"].unique())

    def sample_path(self, tile: str, channel: int, timepoint: int) -> Path:
        """Absolute path of the raw stack for (tile, channel, timepoint)."""
        row = self.samples.loc[
            (self.samples["tile"] == tile)
            & (self.samples["channel"] == channel)
            & (self.samples["timepoint"] == timepoint)
        ]
        if len(row) != 1:
            raise LlsmflowError(
                f"no raw stack for tile {tile}, channel {channel}, timepoint {timepoint}", self.raw_dir
            )
        return self.raw_dir / row["path"].iloc[0]

    def psf_path(self, channel: int) -> Path:
        return self.raw_dir / self.channels[channel]["psf"]


def _number(meta: dict, key: str, path: Path) -> float:
    if key not in meta or meta[key] is None:
        raise LlsmflowError(f"metadata key {key!r} is missing; expected a number", path)
    try:
        value = float(meta[key])
    except (TypeError, ValueError):
        raise LlsmflowError(f"metadata {key} = {meta[key]!r} is not a number", path) from None
    if not math.isfinite(value):
        raise LlsmflowError(f"metadata {key} = {value} is not finite", path)
    return value


def _inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def read_acquisition(
    raw_dir: str | Path,
    metadata_path: str | Path | None = None,
    overrides: dict | None = None,
    check_files: bool = True,
) -> Acquisition:
    """Read an acquisition directory into an :class:`Acquisition`.

    Parameters
    ----------
    raw_dir:
        Directory with the raw TIFF stacks (opened read-only, never written).
    metadata_path:
        The acquisition metadata file; defaults to ``raw_dir/acquisition.json``.
    overrides:
        Values replacing the metadata's (keys: ``angle_deg, dz_um, dx_um, dy_um, time_interval_s, scan_axis,
        camera_offset``); ``None`` values are ignored.
    check_files:
        Also check every stack's TIFF header (readable, complete, real dtype, ZYX, one shape for all) and every
        PSF (finite, with signal, smaller than the deskewed volume). This opens every file (a few ms each, the
        PSFs read whole): done once per run (``llsmflow run`` and the ingest step), not every time the
        workflow is parsed (each cluster job parses it again).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise LlsmflowError("raw data directory not found; expected a directory of TIFF stacks", raw_dir)
    metadata_path = Path(metadata_path) if metadata_path else raw_dir / METADATA_NAME
    if not metadata_path.is_file():
        raise LlsmflowError(
            "acquisition metadata file not found; expected a JSON file (see llsmflow synth)", metadata_path
        )
    try:
        meta = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlsmflowError(f"is not valid JSON ({exc})", metadata_path) from exc
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise LlsmflowError(
                f"override {key!r} is not supported; expected one of {', '.join(OVERRIDABLE)}"
            )
        if value is not None:
            meta[key] = value

    angle = _number(meta, "angle_deg", metadata_path)
    if not 0 < abs(angle) < 90:
        raise LlsmflowError(f"angle_deg = {angle} is out of range; expected 0 < |angle| < 90", metadata_path)
    dz, dx = _number(meta, "dz_um", metadata_path), _number(meta, "dx_um", metadata_path)
    dy = _number(meta, "dy_um", metadata_path) if "dy_um" in meta else dx
    require_positive_voxel_size((dz, dy, dx), metadata_path, what="voxel size (dz_um, dy_um, dx_um)")
    interval = _number(meta, "time_interval_s", metadata_path)
    if interval <= 0:
        raise LlsmflowError(f"time_interval_s = {interval} is invalid; expected > 0", metadata_path)
    scan_axis = meta.get("scan_axis", "x")
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan_axis = {scan_axis!r} is invalid; expected 'x' or 'y'", metadata_path)
    channels = meta.get("channels") or []
    if not channels:
        raise LlsmflowError("metadata lists no channels; expected a 'channels' list", metadata_path)
    for index, channel in enumerate(channels):
        if channel.get("index", index) != index:
            raise LlsmflowError(
                f"channel entry {index} has index {channel.get('index')}; expected {index}", metadata_path
            )
        channel.setdefault("name", f"ch{index}")
        psf = channel.get("psf")
        if psf is None:
            raise LlsmflowError(f"channel {index} names no PSF file; expected a 'psf' entry", metadata_path)
        if not _inside(raw_dir, raw_dir / psf):
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

    tiles = _tile_table(meta, angle, metadata_path)
    samples = _discover_samples(raw_dir, meta, tiles, len(channels), metadata_path)
    samples["time_s"] = samples["timepoint"] * interval
    if check_files:
        raw_shape = _check_stacks(raw_dir, samples, meta.get("raw_shape_zyx"), metadata_path)
        deskewed = deskewed_shape(raw_shape, dz, dx if scan_axis == "x" else dy, angle, scan_axis)
        voxel = (deskewed_plane_spacing_um(dz, angle), dy, dx)
        for index, channel in enumerate(channels):
            _check_psf(raw_dir / channel["psf"], channel["psf_voxel_size_um"], voxel, deskewed, index)
    return Acquisition(
        raw_dir=raw_dir,
        metadata_path=metadata_path,
        angle_deg=angle,
        dz_um=dz,
        dx_um=dx,
        dy_um=dy,
        scan_axis=scan_axis,
        time_interval_s=interval,
        camera_offset=float(meta.get("camera_offset", 0.0)),
        channels=channels,
        tiles=tiles,
        samples=samples,
        metadata=meta,
    )


def _tile_table(meta: dict, angle: float, path: Path) -> pd.DataFrame:
    rows = []
    for entry in meta.get("tiles") or [{"ix": 0, "iy": 0, "iz": 0}]:
        ix, iy, iz = (int(entry.get(k, 0)) for k in ("ix", "iy", "iz"))
        stage = tuple(float(entry.get(k, 0.0)) for k in ("stage_x_um", "stage_y_um", "stage_z_um"))
        origin = stage_to_objective_um(stage, angle)
        rows.append(
            {
                "tile": f"{ix:03d}x_{iy:03d}y_{iz:03d}z",
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


def _discover_samples(
    raw_dir: Path, meta: dict, tiles: pd.DataFrame, n_channels: int, path: Path
) -> pd.DataFrame:
    pattern = re.compile(meta.get("file_regex") or r"")
    psf_names = {c["psf"] for c in meta["channels"]}
    rows = []
    for file in sorted(raw_dir.iterdir()):
        if (
            file.name in psf_names
            or file.suffix.lower() not in (".tif", ".tiff")
            or file.name.startswith(".")
        ):
            continue
        match = pattern.match(file.name)
        if not match:
            continue
        groups = match.groupdict()
        tile = (
            f"{int(groups.get('ix', 0)):03d}x_{int(groups.get('iy', 0)):03d}y_{int(groups.get('iz', 0)):03d}z"
        )
        rows.append(
            {
                "tile": tile,
                "channel": int(groups["channel"]),
                "timepoint": int(groups["timepoint"]),
                "path": file.name,
            }
        )
    if not rows:
        raise LlsmflowError(
            "no raw stacks match the metadata's file_regex; expected TIFF stacks of the acquisition", raw_dir
        )
    samples = pd.DataFrame(rows)
    samples["sample_id"] = samples.apply(lambda r: f"{r.tile}-ch{r.channel}-t{r.timepoint:04d}", axis=1)
    duplicated = samples[samples["sample_id"].duplicated(keep=False)]
    if len(duplicated):
        names = ", ".join(duplicated["path"].head(2))
        raise LlsmflowError(
            f"two files map to sample {duplicated['sample_id'].iloc[0]} ({names}); "
            "expected one stack per tile, channel and timepoint",
            raw_dir,
        )
    unknown_tiles = set(samples["tile"]) - set(tiles["tile"])
    if unknown_tiles:
        raise LlsmflowError(
            f"stacks for tile(s) {sorted(unknown_tiles)} have no stage position in the metadata", path
        )
    bad_channels = sorted(set(samples["channel"]) - set(range(n_channels)))
    if bad_channels:
        raise LlsmflowError(
            f"stacks for channel(s) {bad_channels} have no channel entry in the metadata", path
        )
    timepoints = sorted(samples["timepoint"].unique())
    expected = {(t, c, tp) for t in tiles["tile"] for c in range(n_channels) for tp in timepoints}
    found = set(zip(samples["tile"], samples["channel"], samples["timepoint"], strict=True))
    missing = sorted(expected - found)
    if missing:
        tile, channel, timepoint = missing[0]
        raise LlsmflowError(
            f"{len(missing)} stack(s) missing, first: tile {tile}, channel {channel}, timepoint "
            f"{timepoint}; expected every tile × channel × timepoint",
            raw_dir,
        )
    return samples.sort_values(["timepoint", "channel", "tile"]).reset_index(drop=True)


def _check_stacks(raw_dir: Path, samples: pd.DataFrame, expected_shape, metadata_path: Path) -> tuple:
    """Check every raw stack's header (readable, complete, real dtype, ZYX) and that all share one shape.

    Only headers are read (milliseconds per file), so a damaged or odd stack stops the run before any step
    starts instead of failing one job hours later. The expected shape is the metadata's ``raw_shape_zyx``
    when it has one, else the shape most stacks have.
    """
    shapes = {}
    for name in samples["path"]:
        shape, _ = read_header(raw_dir / name)
        if min(shape) < 1:
            raise LlsmflowError(f"has shape {shape}; expected a non-empty ZYX stack", raw_dir / name)
        shapes[name] = shape
    if expected_shape is not None:
        expected, source = tuple(int(n) for n in expected_shape), f"raw_shape_zyx in {metadata_path.name}"
    else:
        counts = pd.Series([str(s) for s in shapes.values()]).value_counts()
        expected = next(s for s in shapes.values() if str(s) == counts.index[0])
        source = "most stacks"
    for name, shape in shapes.items():
        if shape != expected:
            row = samples.loc[samples["path"] == name].iloc[0]
            raise LlsmflowError(
                f"stack of tile {row.tile}, channel {row.channel}, timepoint {row.timepoint} has shape "
                f"{shape} (ZYX); expected {expected} ({source}): every tile, channel and timepoint must "
                "have one shape",
                raw_dir / name,
            )
    if expected[0] < 2:
        raise LlsmflowError(
            f"stacks have {expected[0]} plane(s); expected a stage-scan stack of at least 2 planes", raw_dir
        )
    return expected


def _check_psf(path: Path, psf_voxel_um, data_voxel_um, volume_shape, channel: int) -> None:
    """Check a channel's PSF: readable, finite, with signal, and its kernel no larger than the volume.

    The kernel is the PSF as the deconvolution will use it (:func:`llsmflow.decon.prepare_psf` on the
    deskewed voxel grid), compared with the deskewed volume's shape (voxels, ZYX).
    """
    from llsmflow.decon import prepare_psf
    from llsmflow.errors import located

    psf = read_volume(path)
    with located(path):
        kernel = prepare_psf(psf.data, psf_voxel_um, data_voxel_um)
    require_psf_within_volume(
        kernel.shape,
        volume_shape,
        path,
        what=f"PSF of channel {channel}",
        grid="the deskewed grid",
        volume="deskewed volume",
        sizes="psf_voxel_size_um",
    )


def require_psf_within_volume(
    kernel_shape,
    volume_shape,
    path,
    what: str = "PSF",
    grid: str = "the data grid",
    volume: str = "volume",
    sizes: str = "the voxel sizes",
) -> None:
    """Raise if a prepared PSF (``kernel_shape``, voxels ZYX) is larger than the volume along any axis.

    Deconvolution itself copes (the volume is padded by reflection), but its result would then be shaped by
    the padding more than by the data: almost always a wrong PSF file or wrong PSF voxel sizes.
    """
    larger = [f"{a}: {k} > {n}" for a, k, n in zip("zyx", kernel_shape, volume_shape, strict=True) if k > n]
    if larger:
        raise LlsmflowError(
            f"{what} spans {tuple(kernel_shape)} voxels (ZYX) on {grid}, larger than the {volume} "
            f"{tuple(volume_shape)} ({', '.join(larger)}); expected a PSF smaller than the volume "
            f"(check {sizes} and the PSF file)",
            path,
        )


def tiles_csv_table(acquisition: Acquisition, deskewed_paths: dict[str, str | Path]) -> pd.DataFrame:
    """The ``tiles.csv`` table (``path,x_um,y_um,z_um``) of nominal objective-frame tile origins."""
    rows = []
    for _, tile in acquisition.tiles.iterrows():
        rows.append(
            {
                "path": str(deskewed_paths[tile["tile"]]),
                "x_um": tile["x_um"],
                "y_um": tile["y_um"],
                "z_um": tile["z_um"],
                "tile": tile["tile"],
            }
        )
    return pd.DataFrame(rows)
