"""Zeiss CZI files: the header (axes, pixel type, metadata XML) and one channel's and timepoint's ZYX volume.

Parsing is czifile's (:mod:`llsmflow.ingest.czi` says why that library); what is written here is what czifile
(2019) lacks: the Zstd0/Zstd1 subblock compressions of ZEN 3 (decoded with numcodecs' Zstd, following Zeiss'
published CZI specification) and reading only the subblocks of the chosen volume. :mod:`llsmflow.io` dispatches
``.czi`` paths here; the names are re-exported there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llsmflow.errors import LlsmflowError, reading_errors, select_axis_index

CZI_SUFFIX = ".czi"
# CZI subblock compressions czifile (2019) lacks and numcodecs decodes: 5 = Zstd0, 6 = Zstd1 (ZEN's default).
_CZI_ZSTD = (5, 6)


def is_czi(path: Path) -> bool:
    """Whether ``path`` names a CZI file (by its suffix; its header is checked when it is read)."""
    return Path(path).suffix.lower() == CZI_SUFFIX


def _zstd_decode(compression: int, data: bytes, dtype, stored_shape) -> np.ndarray:
    """Decode a Zstd0/Zstd1 subblock (Zeiss' CZI specification: Zstd1 has a small header whose chunk 1 says
    whether the low and high bytes of 16-bit pixels were stored in two planes)."""
    from numcodecs import Zstd

    hilo = False
    if compression == 6:
        size = data[0]
        if size == 3 and data[1] == 1:
            hilo = bool(data[2] & 1)
        data = data[size:]
    raw = np.frombuffer(Zstd().decode(data), dtype=np.uint8)
    if hilo:
        half = raw.size // 2
        raw = np.stack([raw[:half], raw[half:]], axis=-1).reshape(-1)
    return raw.view(np.dtype(dtype)).reshape(stored_shape)


@contextlib.contextmanager
def _open_czi(path: Path) -> Iterator:
    if not path.is_file():
        raise LlsmflowError("file not found; expected a CZI file", path)
    import czifile

    with reading_errors("CZI", "a Zeiss CZI file", path), czifile.CziFile(path) as czi:
        yield czi


def czi_header(path: str | Path) -> dict:
    """Axes sizes (``{'T': 2, 'C': 3, 'Z': 81, 'Y': 11, 'X': 13}``), dtype and metadata XML of a CZI, without
    its pixels. Axes other than T, C, Z, Y, X must have one entry (scenes, rotations, … are not read)."""
    path = Path(path)
    with _open_czi(path) as czi:
        axes, shape, dtype = czi.axes, czi.shape, np.dtype(czi.dtype)
        xml = czi.metadata(raw=True)
        compressions = {int(e.compression) for e in czi.filtered_subblock_directory}
    sizes = {a: int(n) for a, n in zip(axes, shape, strict=True) if a != "0"}
    extra = {a: n for a, n in sizes.items() if a not in "TCZYX" and n != 1}
    if extra:
        raise LlsmflowError(
            f"has axes {extra} besides T, C, Z, Y, X; expected one scene, rotation and view per file "
            "(split the file in ZEN)",
            path,
        )
    if shape[-1] != 1 or dtype.kind not in "uif":
        raise LlsmflowError(f"has pixel type {dtype} × {shape[-1]}; expected grey pixels", path)
    unknown = sorted(compressions - {0, *_CZI_ZSTD})
    if unknown:
        raise LlsmflowError(
            f"uses subblock compression {unknown}; expected uncompressed or Zstd (export uncompressed in ZEN)",
            path,
        )
    if sizes.get("Z", 1) < 1 or 0 in sizes.values():
        raise LlsmflowError(f"has shape {sizes}; expected a volume with voxels", path)
    return {"sizes": sizes, "dtype": dtype, "xml": xml}


def czi_voxel_size(xml: str) -> tuple[float, float, float] | None:
    """Voxel size (µm, ZYX) from a CZI's ``Scaling/Items/Distance`` (metres in the file); None if absent."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    sizes = {}
    for distance in root.iterfind(".//Scaling/Items/Distance"):
        value = distance.findtext("Value")
        if value is not None:
            sizes[distance.get("Id")] = float(value) * 1e6
    if not all(a in sizes for a in "ZYX"):
        return None
    return (sizes["Z"], sizes["Y"], sizes["X"])


def read_czi(
    path: str | Path, channel: int | None = None, timepoint: int | None = None
) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """One ZYX volume (channel, timepoint) of a CZI and its voxel size (µm): only that volume's subblocks are
    read and decoded."""
    path = Path(path)
    header = czi_header(path)
    sizes = header["sizes"]
    c = select_axis_index(path, "C", sizes.get("C", 1), channel)
    t = select_axis_index(path, "T", sizes.get("T", 1), timepoint)
    out = np.zeros(tuple(sizes.get(a, 1) for a in "ZYX"), header["dtype"])
    filled = 0
    with _open_czi(path) as czi:
        start = dict(zip(czi.axes, czi.start, strict=True))
        for entry in czi.filtered_subblock_directory:
            at = {d.dimension: d.start - start.get(d.dimension, 0) for d in entry.dimension_entries}
            if at.get("C", 0) != c or at.get("T", 0) != t:
                continue
            segment = entry.data_segment()
            if entry.compression in _CZI_ZSTD:
                tile = _zstd_decode(
                    entry.compression, segment.data(raw=True), entry.dtype, entry.stored_shape
                )
            else:
                tile = segment.data()
            tile = tile.reshape([n for n in tile.shape if n != 1] or [1])
            z0, y0, x0 = at.get("Z", 0), at.get("Y", 0), at.get("X", 0)
            tile = tile.reshape((-1, *tile.shape[-2:]))
            out[z0 : z0 + tile.shape[0], y0 : y0 + tile.shape[1], x0 : x0 + tile.shape[2]] = tile
            filled += tile.shape[0]
    if filled < out.shape[0]:
        raise LlsmflowError(
            f"holds {filled} of the {out.shape[0]} planes of channel {c}, timepoint {t}; expected a complete "
            "CZI (copy it again from the instrument)",
            path,
        )
    return out, czi_voxel_size(header["xml"])
