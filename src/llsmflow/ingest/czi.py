"""Zeiss Lattice Lightsheet 7 CZI files: what the instrument wrote, as an acquisition.

Library: `czifile <https://pypi.org/project/czifile/>`_ (Christoph Gohlke, the author of tifffile, which
llsmflow already uses): pure Python, 20 kB, depends only on NumPy and tifffile, and reads a CZI's subblock
directory so that one (channel, timepoint) volume is read without the others. The alternatives were heavier
for the same result: ``pylibczirw`` (Zeiss' libCZI; its wheel requires the ``cmake`` package at run time,
~170 MB installed) and ``bioio-czi`` (a plugin of the bioio framework, which pulls in dask, xarray and
``pylibczirw`` or ``aicspylibczi``). On Python 3.11 (this project's) the newest czifile installable is
2019.7.2.3, which lacks ZEN's Zstd subblock compression: :mod:`llsmflow.io` decodes Zstd0/Zstd1 subblocks with
numcodecs (already installed with zarr). The pixels are read in :mod:`llsmflow.io` (``read_volume(path,
channel=, timepoint=)``); this module reads the metadata XML.

What is read (``ImageDocument/Metadata``): the axes sizes (T, C, Z, Y, X), voxel sizes
(``Scaling/Items/Distance``, metres → µm; Z is the stage step), the channels (``Information/Image/Dimensions/
Channels/Channel``: ``Name``, ``ExcitationWavelength``, ``EmissionWavelength``; ZEN writes ``NaN`` for an
emission it does not know, kept here as unknown, ``None``), the time of every timepoint (``Dimensions/T/
Positions/List/Offsets``, seconds from ``StartTime``), the sheet geometry (``Dimensions/Z/ZAxisShear``:
``Skew60`` means the planes are sheared by 60° against the stage scan, i.e. a light sheet at 90 − 60 = 30° to
the coverslip) and the scan axis (the LLS7 scans the stage along the camera's Y axis; ZEN does not write it).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from llsmflow.czi_io import czi_header, czi_voxel_size
from llsmflow.errors import LlsmflowError

INSTRUMENT = "Zeiss Lattice Lightsheet 7"
#: The LLS7 scans the stage along the camera's Y axis (Zeiss' LLS7 documentation; not written in the CZI).
LLS7_SCAN_AXIS = "y"


@dataclass
class CziInfo:
    """What one CZI file says about its acquisition (µm, s, degrees, nm)."""

    path: Path
    sizes: dict
    dtype: str
    voxel_size_um: tuple[float, float, float] | None
    channels: list[dict]
    time_s: list[float]
    z_axis_shear: str | None
    angle_deg: float | None
    scan_axis: str
    start_time: str | None = None
    application: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def shape_tczyx(self) -> tuple[int, int, int, int, int]:
        return tuple(int(self.sizes.get(a, 1)) for a in "TCZYX")


def _float_or_none(text: str | None) -> float | None:
    """A metadata number; ``None`` for absent, empty or ``NaN`` (ZEN's "unknown")."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def shear_angle_deg(shear: str | None) -> float | None:
    """The light sheet's angle to the coverslip from ZEN's ``ZAxisShear`` (``Skew60`` → 30°); None if none."""
    if not shear:
        return None
    match = re.fullmatch(r"\s*Skew(\d+(?:\.\d+)?)\s*", shear)
    if not match:
        return None
    return 90.0 - float(match.group(1))


def read_czi_info(path: str | Path) -> CziInfo:
    """Read a CZI's header and metadata (no pixels).

    Raises
    ------
    LlsmflowError
        The file is not a readable CZI, has scenes/rotations/views, or an unsupported compression.
    """
    path = Path(path)
    header = czi_header(path)
    try:
        root = ET.fromstring(header["xml"])
    except ET.ParseError as exc:
        raise LlsmflowError(
            f"has unreadable metadata XML ({exc}); expected a CZI as ZEN writes it", path
        ) from None
    image = root.find(".//Information/Image")
    channels = []
    if image is not None:
        for index, channel in enumerate(image.iterfind("./Dimensions/Channels/Channel")):
            channels.append(
                {
                    "index": index,
                    "name": channel.get("Name") or f"ch{index}",
                    "excitation_nm": _float_or_none(channel.findtext("ExcitationWavelength")),
                    "emission_nm": _float_or_none(channel.findtext("EmissionWavelength")),
                }
            )
    n_c = header["sizes"].get("C", 1)
    if len(channels) != n_c:
        channels = [
            {"index": i, "name": f"ch{i}", "excitation_nm": None, "emission_nm": None} for i in range(n_c)
        ]
    n_t = header["sizes"].get("T", 1)
    offsets = (image.findtext("./Dimensions/T/Positions/List/Offsets") if image is not None else None) or ""
    times = [float(v) for v in offsets.split()] if offsets.strip() else []
    notes = []
    if len(times) != n_t:
        if n_t > 1:
            notes.append("no time stamps in the file: times are timepoint × time_interval_s")
        times = []
    shear = image.findtext("./Dimensions/Z/ZAxisShear") if image is not None else None
    return CziInfo(
        path=path,
        sizes=header["sizes"],
        dtype=str(header["dtype"]),
        voxel_size_um=czi_voxel_size(header["xml"]),
        channels=channels,
        time_s=times,
        z_axis_shear=shear,
        angle_deg=shear_angle_deg(shear),
        scan_axis=LLS7_SCAN_AXIS,
        start_time=image.findtext("./Dimensions/T/StartTime") if image is not None else None,
        application=root.findtext(".//Information/Application/Name"),
        notes=notes,
    )


def is_psf_name(path: Path) -> bool:
    """Zeiss' PSF files are named after the bead acquisition, e.g. ``488_PSF.czi``."""
    return "psf" in path.stem.lower()


def psf_wavelength_nm(path: Path) -> float | None:
    """The wavelength a PSF file is named after (``488_PSF.czi`` → 488), or None."""
    match = re.search(r"(?<!\d)(\d{3})(?!\d)", path.stem)
    return float(match.group(1)) if match else None


def match_psfs(channels: list[dict], psf_paths: list[Path]) -> dict[int, Path]:
    """Each channel's PSF by excitation wavelength: the PSF file named after the nearest wavelength within
    15 nm (a 560 nm laser for a 561 nm PSF); channels without one are absent from the result."""
    found = {}
    named = [(p, psf_wavelength_nm(p)) for p in psf_paths]
    for channel in channels:
        wave = channel.get("excitation_nm")
        candidates = [(abs(w - wave), p) for p, w in named if w is not None and wave is not None]
        candidates = [c for c in candidates if c[0] <= 15]
        if candidates:
            found[channel["index"]] = min(candidates, key=lambda c: (c[0], c[1].name))[1]
    return found
