"""Which instrument wrote a raw folder, and what its files say, in the acquisition.json vocabulary.

:func:`detect_format` looks at the folder (or at the file a config's ``metadata`` names); :func:`read_instrument`
reads it with the format's reader (:mod:`~llsmflow.ingest.czi`, :mod:`~llsmflow.ingest.janelia`,
:mod:`~llsmflow.ingest.ome_tiff`) and returns an :class:`InstrumentReading`: the acquisition fields as
``acquisition.json`` names them (so that an ``acquisition.json`` can override any of them), the sample table
(one row per tile × channel × timepoint, with the ``file_channel``/``file_timepoint`` selectors of a volume in
a multi-volume file and the real ``time_s`` of every stack), and which fields no file gave (``missing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llsmflow.errors import LlsmflowError
from llsmflow.ingest.acquisition_json import METADATA_NAME
from llsmflow.ingest.model import raw_folder, tile_name
from llsmflow.io import as_path, is_url, redact

FORMATS = ("acquisition.json", "czi", "janelia", "ome-tiff")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class InstrumentReading:
    """One acquisition as an instrument's files describe it."""

    format: str
    instrument: str
    metadata_path: Path
    meta: dict
    samples: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _visible(raw_dir: Path) -> list[Path]:
    return [p for p in sorted(raw_dir.iterdir()) if p.is_file() and not p.name.startswith(".")]


def detect_format(raw_dir: str | Path, metadata_path: str | Path | None = None) -> tuple[str, Path]:
    """The format of a raw folder and its metadata file.

    ``metadata_path`` (a config's ``metadata``) may name the acquisition: an ``acquisition.json`` with a
    ``file_regex`` (the generic format), a ``.czi``, a ``*_Settings.txt`` or a hyperstack TIFF. Otherwise the
    folder decides: ``acquisition.json`` with a ``file_regex``, else the one data CZI, else a Janelia
    ``*_Settings.txt`` with stacks, else the one OME-TIFF/ImageJ hyperstack.

    Raises
    ------
    LlsmflowError
        Nothing recognisable, or several acquisitions (each named; choose one with ``metadata``).
    """
    from llsmflow.ingest import czi, janelia, ome_tiff

    raw_dir = raw_folder(raw_dir)
    if metadata_path is not None:
        path = as_path(metadata_path)
        if path.suffix.lower() == ".czi":
            _no_czi_by_url(raw_dir / path.name if is_url(raw_dir) else path)
            return "czi", path
        if path.name.endswith(janelia.SETTINGS_SUFFIX):
            return "janelia", path
        if path.suffix.lower() in TIFF_SUFFIXES:
            return "ome-tiff", path
        if path.suffix.lower() == ".json" and (not path.is_file() or _has_file_regex(path)):
            return "acquisition.json", path
    elif _has_file_regex(raw_dir / METADATA_NAME):
        return "acquisition.json", raw_dir / METADATA_NAME
    files = _visible(raw_dir)
    czis = [p for p in files if p.suffix.lower() == ".czi" and not czi.is_psf_name(p)]
    if len(czis) == 1:
        _no_czi_by_url(czis[0])
        return "czi", czis[0]
    if len(czis) > 1:
        raise LlsmflowError(
            f"holds {len(czis)} CZI acquisitions ({', '.join(p.name for p in czis)}); expected one per raw "
            "folder: name the one to process with the config's 'metadata' (llsmflow init --metadata NAME)",
            raw_dir,
        )
    stacks = janelia.find_stacks(raw_dir)
    cells = sorted({s["cell"] for s in stacks if not janelia.is_psf_cell(s["cell"])})
    if cells:
        if len(cells) > 1:
            raise LlsmflowError(
                f"holds stacks of {len(cells)} Janelia acquisitions ({', '.join(cells)}); expected one per raw "
                "folder: name its Settings.txt with the config's 'metadata'",
                raw_dir,
            )
        settings = raw_dir / f"{cells[0]}{janelia.SETTINGS_SUFFIX}"
        if not settings.is_file():
            raise LlsmflowError(
                f"holds Janelia stacks of {cells[0]!r} but no {settings.name}; expected the Settings.txt the "
                "acquisition software wrote beside them",
                raw_dir,
            )
        return "janelia", settings
    hyper = [p for p in files if p.suffix.lower() in TIFF_SUFFIXES and "psf" not in p.name.lower()]
    hyper = [p for p in hyper if ome_tiff.is_hyperstack(p)]
    if len(hyper) == 1:
        return "ome-tiff", hyper[0]
    if len(hyper) > 1:
        raise LlsmflowError(
            f"holds {len(hyper)} hyperstacks ({', '.join(p.name for p in hyper[:5])}); expected one per raw "
            "folder (name it with the config's 'metadata'), or an acquisition.json with a file_regex",
            raw_dir,
        )
    json_path = as_path(metadata_path) if metadata_path is not None else raw_dir / METADATA_NAME
    if json_path.is_file():  # read as the generic format: its reader names what is wrong with it
        return "acquisition.json", json_path
    raise LlsmflowError(
        "acquisition metadata file not found; expected acquisition.json (with a file_regex, see llsmflow "
        "synth), a Zeiss CZI, a Janelia/3i *_Settings.txt with its stacks, or an OME-TIFF/ImageJ hyperstack",
        json_path,
    )


def _no_czi_by_url(path) -> None:
    """A Zeiss CZI is read by a reader that needs a local file (czi_io, whole subblocks): by URL, one line."""
    if is_url(path):
        raise LlsmflowError(
            "is a Zeiss CZI, which cannot be read by URL (its reader needs a local file); expected a local raw "
            "folder for CZI data (copy the .czi and its PSFs), or TIFF stacks / OME-TIFF by URL",
            redact(path),
        )


def _has_file_regex(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    from llsmflow.ingest.acquisition_json import load_acquisition_json

    return bool(load_acquisition_json(path).get("file_regex"))


def read_instrument(raw_dir: str | Path, fmt: str, metadata_path: Path) -> InstrumentReading:
    """Read an instrument's folder (``fmt`` and ``metadata_path`` from :func:`detect_format`)."""
    raw_dir = as_path(raw_dir)
    reader = {"czi": _read_czi, "janelia": _read_janelia, "ome-tiff": _read_hyperstack}.get(fmt)
    if reader is None:
        raise LlsmflowError(f"format {fmt!r} is not an instrument format; expected one of {FORMATS[1:]}")
    if not metadata_path.is_file():
        raise LlsmflowError(
            f"{fmt} metadata file not found; expected a file in the raw directory", metadata_path
        )
    return reader(raw_dir, metadata_path)


def _interval(times: list[float], indices: list[int] | None = None) -> float | None:
    """The median time between consecutive timepoints (s), from the times of timepoints ``indices`` (default
    0, 1, …; a gap counts as several intervals); None for fewer than two."""
    if len(times) < 2:
        return None
    index = np.arange(len(times)) if indices is None else np.asarray(indices, dtype=float)
    steps = np.diff(np.asarray(times, dtype=float)) / np.diff(index)
    return float(np.median(steps)) if np.all(steps > 0) else None


def _multi_volume_samples(name: str, n_c: int, n_t: int, times: list[float], interval: float) -> pd.DataFrame:
    rows = []
    tile = tile_name(0, 0, 0)
    for t in range(n_t):
        for c in range(n_c):
            rows.append(
                {
                    "tile": tile,
                    "channel": c,
                    "timepoint": t,
                    "path": name,
                    "file_channel": c,
                    "file_timepoint": t,
                    "time_s": float(times[t]) if times else t * interval,
                    "sample_id": f"{tile}-ch{c}-t{t:04d}",
                }
            )
    return pd.DataFrame(rows)


def _common_meta(
    fmt, instrument, voxel, angle, scan_axis, times, n_t, channels, indices=None
) -> tuple[dict, list[str]]:
    missing = []
    interval = _interval(times, indices)
    meta = {"format": fmt, "instrument": instrument, "timepoints": n_t, "channels": channels}
    if voxel is not None:
        meta["dz_um"], meta["dy_um"], meta["dx_um"] = (float(v) for v in voxel)
    else:
        missing += ["dz_um", "dx_um"]
    if angle is not None:
        meta["angle_deg"] = float(angle)
    else:
        missing.append("angle_deg")
    if scan_axis is not None:
        meta["scan_axis"] = scan_axis
    else:
        missing.append("scan_axis")
    if interval is not None:
        meta["time_interval_s"] = interval
    elif n_t > 1:
        missing.append("time_interval_s")
    else:
        meta["time_interval_s"] = 1.0  # one timepoint: no interval exists; the archive needs a positive one
    return meta, missing


def _psf_entry(path: Path) -> dict:
    """A PSF file's voxel size and geometry, as far as its own metadata says."""
    from llsmflow.ingest import janelia

    entry = {"psf": path.name}
    if path.suffix.lower() == ".czi":
        _no_czi_by_url(path)
        from llsmflow.ingest.czi import read_czi_info

        info = read_czi_info(path)
        if info.voxel_size_um:
            entry["psf_voxel_size_um"] = list(info.voxel_size_um)
        # No geometry claimed: the field notes call Zeiss' LLS7 PSFs skewed, but in the real PSF CZIs the bead
        # stays put over 40 planes (a stage scan would move it 0.6 px per plane), so the workflow measures it
        # (deconvolution.psf_geometry: auto, llsmflow.decon.psf.resolve_psf_geometry).
        return entry
    match = janelia.STACK_NAME.match(path.name)
    settings = path.parent / f"{match['cell']}{janelia.SETTINGS_SUFFIX}" if match else None
    if settings is not None and settings.is_file():
        s = janelia.parse_settings(settings)
        entry["psf_geometry"] = "skewed" if s.skewed else "objective"
        if s.dx_um and s.dz_um:
            entry["psf_voxel_size_um"] = [s.dz_um, s.dx_um, s.dx_um]
        return entry
    from llsmflow.io import open_tiff

    with open_tiff(path) as tif:
        from llsmflow.io import file_voxel_size

        voxel = file_voxel_size(tif)
    if voxel:
        entry["psf_voxel_size_um"] = list(voxel)
    return entry


def _attach_psfs(
    raw_dir: Path, channels: list[dict], exclude: Path, missing: list[str], notes: list[str]
) -> None:
    """Give each channel the PSF file named after its excitation wavelength (``488_PSF.czi``,
    ``psf642_ch0_…_642nm_….tif``); a single PSF serves a single channel whatever its name."""
    from llsmflow.ingest import janelia
    from llsmflow.ingest.czi import match_psfs

    psfs = [
        p
        for p in _visible(raw_dir)
        if p != exclude and "psf" in p.name.lower() and p.suffix.lower() in (".czi", *TIFF_SUFFIXES)
    ]
    matched = match_psfs(channels, psfs)
    for p in psfs:  # Janelia PSFs say their wavelength in the λnm field
        m = janelia.STACK_NAME.match(p.name)
        if m:
            for ch in channels:
                if ch["index"] not in matched and ch.get("excitation_nm") == float(m["wavelength"]):
                    matched[ch["index"]] = p
    if not matched and len(psfs) == 1 and len(channels) == 1:
        matched[0] = psfs[0]
    for ch in channels:
        path = matched.get(ch["index"])
        if path is None:
            missing.append(f"channels[{ch['index']}].psf")
            continue
        entry = _psf_entry(path)
        ch.update(entry)
        if "psf_voxel_size_um" not in entry:
            missing.append(f"channels[{ch['index']}].psf_voxel_size_um")
    unused = sorted({p.name for p in psfs} - {p.name for p in matched.values()})
    if unused:
        notes.append(f"PSF file(s) not matched to a channel: {', '.join(unused)}")


def _read_multi_volume_file(fmt: str, module, info, raw_dir: Path, path: Path, **extra) -> InstrumentReading:
    """The reading of one file holding every channel and timepoint (a CZI or an OME-TIFF/ImageJ hyperstack),
    from its reader's info (``shape_tczyx``, ``channels``, voxel size, angle, scan axis, times, notes)."""
    t, c, z, y, x = info.shape_tczyx
    channels = [dict(ch) for ch in info.channels]
    meta, missing = _common_meta(
        fmt, module.INSTRUMENT, info.voxel_size_um, info.angle_deg, info.scan_axis, info.time_s, t, channels
    )
    meta.update(raw_shape_zyx=[z, y, x], **extra)
    notes = list(info.notes)
    _attach_psfs(raw_dir, channels, path, missing, notes)
    samples = _multi_volume_samples(path.name, c, t, info.time_s, meta.get("time_interval_s", 1.0))
    return InstrumentReading(fmt, module.INSTRUMENT, path, meta, samples, missing, notes)


def _read_czi(raw_dir: Path, path: Path) -> InstrumentReading:
    from llsmflow.ingest import czi

    info = czi.read_czi_info(path)
    return _read_multi_volume_file(
        "czi", czi, info, raw_dir, path, z_axis_shear=info.z_axis_shear, start_time=info.start_time
    )


def _read_hyperstack(raw_dir: Path, path: Path) -> InstrumentReading:
    from llsmflow.ingest import ome_tiff

    info = ome_tiff.read_hyperstack_info(path)
    return _read_multi_volume_file("ome-tiff", ome_tiff, info, raw_dir, path, metadata_source=info.source)


def _read_janelia(raw_dir: Path, settings_path: Path) -> InstrumentReading:
    from llsmflow.ingest import janelia

    settings = janelia.parse_settings(settings_path)
    cell = settings_path.name[: -len(janelia.SETTINGS_SUFFIX)]
    stacks = [s for s in janelia.find_stacks(raw_dir) if s["cell"] == cell]
    if not stacks:
        raise LlsmflowError(
            f"names acquisition {cell!r}, but no stack {cell}_ch<C>_stack<T>_<λ>nm_<ms>msec_<ms>msecAbs.tif "
            "is in the folder; expected its stacks beside it",
            settings_path,
        )
    if not settings.skewed:
        raise LlsmflowError(
            f"Z motion is {settings.z_motion!r}: an objective scan, whose planes are not skewed; expected a stage "
            "scan (Z motion: Sample piezo): llsmflow deskews stage-scan data",
            settings_path,
        )
    channel_ids = sorted({s["channel"] for s in stacks})
    channels, notes = [], []
    for index, cid in enumerate(channel_ids):
        waves = sorted({s["wavelength_nm"] for s in stacks if s["channel"] == cid})
        laser = settings.lasers_nm.get(cid)
        if laser is not None and waves and abs(laser - waves[0]) > 15:
            notes.append(f"channel {cid}: file names say {waves[0]:g} nm, Settings.txt laser {laser:g} nm")
        channels.append(
            {
                "index": index,
                "name": f"ch{cid}_{waves[0]:g}nm" if waves else f"ch{cid}",
                "excitation_nm": waves[0] if waves else laser,
                "emission_nm": None,
                "file_channel_id": cid,
            }
        )
    index_of = {cid: i for i, cid in enumerate(channel_ids)}
    timepoints = sorted({s["timepoint"] for s in stacks})
    first = {t: min(s["time_s"] for s in stacks if s["timepoint"] == t) for t in timepoints}
    times = [first[t] for t in timepoints]
    declared = max(settings.stacks.values()) if settings.stacks else None
    voxel = (settings.stage_step_um, settings.dx_um, settings.dx_um) if settings.dx_um else None
    meta, missing = _common_meta(
        "janelia",
        janelia.INSTRUMENT,
        voxel,
        settings.angle_deg,
        "x",
        times,
        len(timepoints),
        channels,
        timepoints,
    )
    if voxel is None:
        meta["dz_um"] = settings.stage_step_um
        missing = [m for m in missing if m != "dz_um"]
        notes.append(
            f"camera pixel size unknown (Camera type {settings.camera!r}, Magnification {settings.magnification}):"
            " give dx_um"
        )
    if declared is not None:
        meta["timepoints"] = int(declared)
        meta["timepoints_source"] = f"# of stacks in {settings_path.name}"
    meta.update(z_motion=settings.z_motion, camera=settings.camera, magnification=settings.magnification)
    _attach_psfs(raw_dir, channels, settings_path, missing, notes)
    tile = tile_name(0, 0, 0)
    rows = [
        {
            "tile": tile,
            "channel": index_of[s["channel"]],
            "timepoint": s["timepoint"],
            "path": s["path"],
            "file_channel": None,
            "file_timepoint": None,
            "time_s": s["time_s"],
            "sample_id": f"{tile}-ch{index_of[s['channel']]}-t{s['timepoint']:04d}",
        }
        for s in stacks
    ]
    return InstrumentReading(
        "janelia", janelia.INSTRUMENT, settings_path, meta, pd.DataFrame(rows), missing, notes
    )
