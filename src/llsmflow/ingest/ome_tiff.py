"""OME-TIFF and ImageJ hyperstacks (T, C, Z, Y, X in one file) with the metadata they carry.

Library: tifffile (already llsmflow's TIFF reader). What is read:

* the axes and their sizes (``series[0].axes``; an ImageJ hyperstack is TZCYX, an OME-TIFF any order);
* voxel sizes: OME ``PhysicalSize{X,Y,Z}`` or ImageJ ``XResolution`` + ``spacing`` (:mod:`llsmflow.io`);
* OME-XML channels (``Name``, ``ExcitationWavelength``, ``EmissionWavelength``) and plane times (``DeltaT``);
* an ImageJ hyperstack that Fiji/Bio-Formats saved from a Zeiss CZI keeps the CZI's metadata as ``key = value``
  lines in its ``Info``: channel names and wavelengths (``Information|Image|Channel|Name #1``), the time
  stamps (``Information|Image|T|List|Offsets``) and ``Information|Image|Z|ZAxisShear`` (the sheet angle, as
  in :mod:`llsmflow.ingest.czi`).

The light sheet's angle and the scan axis are not in a generic OME-TIFF: they must be given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.ingest.czi import LLS7_SCAN_AXIS, shear_angle_deg
from llsmflow.io import as_path, file_voxel_size, open_tiff

INSTRUMENT = "OME-TIFF / ImageJ hyperstack"


@dataclass
class HyperstackInfo:
    """What one OME-TIFF or ImageJ hyperstack says (µm, s, degrees, nm)."""

    path: Path
    axes: str
    sizes: dict
    dtype: str
    voxel_size_um: tuple[float, float, float] | None
    channels: list[dict]
    time_s: list[float]
    angle_deg: float | None
    scan_axis: str | None
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def shape_tczyx(self) -> tuple[int, int, int, int, int]:
        return tuple(int(self.sizes.get(a, 1)) for a in "TCZYX")


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _info_lines(info: str) -> dict[str, str]:
    """``key = value`` lines of an ImageJ ``Info`` (Bio-Formats' original metadata)."""
    out = {}
    for line in info.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _from_czi_info(info: dict[str, str], n_c: int) -> tuple[list[dict], list[float], str | None]:
    channels = []
    for c in range(n_c):
        name = info.get(f"Information|Image|Channel|Name #{c + 1}")
        if name is None and n_c == 1:
            name = info.get("Information|Image|Channel|Name")
        channels.append(
            {
                "index": c,
                "name": name or f"ch{c}",
                "excitation_nm": _number(
                    info.get(f"Information|Image|Channel|ExcitationWavelength #{c + 1}")
                ),
                "emission_nm": _number(info.get(f"Information|Image|Channel|EmissionWavelength #{c + 1}")),
            }
        )
    offsets = info.get("Information|Image|T|List|Offsets", "")
    times = [float(v) for v in offsets.split()] if offsets.strip() else []
    return channels, times, info.get("Information|Image|Z|ZAxisShear")


def _from_ome(ome_xml: str, n_c: int) -> tuple[list[dict], list[float]]:
    import tifffile

    image = tifffile.xml2dict(ome_xml).get("OME", {}).get("Image", {})
    if isinstance(image, list):
        image = image[0]
    pixels = image.get("Pixels", {})
    entries = pixels.get("Channel", [])
    entries = entries if isinstance(entries, list) else [entries]
    channels = []
    for c in range(n_c):
        entry = entries[c] if c < len(entries) and isinstance(entries[c], dict) else {}
        channels.append(
            {
                "index": c,
                "name": str(entry.get("Name") or f"ch{c}"),
                "excitation_nm": _number(entry.get("ExcitationWavelength")),
                "emission_nm": _number(entry.get("EmissionWavelength")),
            }
        )
    planes = pixels.get("Plane", [])
    planes = planes if isinstance(planes, list) else [planes]
    times: dict[int, float] = {}
    for plane in planes:
        if isinstance(plane, dict) and plane.get("DeltaT") is not None and int(plane.get("TheZ", 0)) == 0:
            times.setdefault(int(plane.get("TheT", 0)), float(plane["DeltaT"]))
    return channels, [times[t] for t in sorted(times)]


def read_hyperstack_info(path: str | Path) -> HyperstackInfo:
    """Read an OME-TIFF's or ImageJ hyperstack's axes and metadata (no pixels)."""
    path = as_path(path)
    with open_tiff(path, expected="an OME-TIFF or ImageJ hyperstack") as tif:
        series = tif.series[0]
        axes, shape, dtype = (
            series.axes.replace("Q", "Z").replace("I", "Z"),
            tuple(series.shape),
            series.dtype,
        )
        voxel = file_voxel_size(tif)
        ome = tif.ome_metadata if tif.is_ome else None
        info = (tif.imagej_metadata or {}).get("Info", "") if tif.is_imagej else ""
    sizes = {a: int(n) for a, n in zip(axes, shape, strict=True)}
    extra = {a: n for a, n in sizes.items() if a not in "TCZYXS" and n != 1}
    if extra or sizes.get("S", 1) != 1:
        raise LlsmflowError(f"has axes {axes} {shape}; expected T, C, Z, Y, X (grey pixels)", path)
    n_c = sizes.get("C", 1)
    channels, times, shear, source = [], [], None, "tifffile"
    if ome:
        channels, times = _from_ome(ome, n_c)
        source = "OME-XML"
    elif isinstance(info, str) and "Information|Image|" in info:
        channels, times, shear = _from_czi_info(_info_lines(info), n_c)
        source = "ImageJ Info (Bio-Formats metadata of a Zeiss CZI)"
    if not channels:
        channels = [
            {"index": c, "name": f"ch{c}", "excitation_nm": None, "emission_nm": None} for c in range(n_c)
        ]
    notes = []
    if times and len(times) != sizes.get("T", 1):
        notes.append(f"{len(times)} time stamps for {sizes.get('T', 1)} timepoints: ignored")
        times = []
    angle = shear_angle_deg(shear)
    return HyperstackInfo(
        path=path,
        axes=axes,
        sizes=sizes,
        dtype=str(dtype),
        voxel_size_um=voxel,
        channels=channels,
        time_s=times,
        angle_deg=angle,
        scan_axis=LLS7_SCAN_AXIS if angle is not None else None,
        source=source,
        notes=notes,
    )


def is_hyperstack(path: Path) -> bool:
    """Whether a TIFF holds more than one volume (a C or T axis longer than 1); one volume per file is the
    generic layout (acquisition.json)."""
    if path.suffix.lower() not in (".tif", ".tiff") or path.name.startswith("."):
        return False
    try:
        with open_tiff(path) as tif:
            series = tif.series[0]
            return any(a in "CT" and n > 1 for a, n in zip(series.axes, series.shape, strict=True))
    except LlsmflowError:
        return False
