"""Reading and writing volumes and acquisition metadata.

Volumes are ZYX arrays with a physical voxel size ``(dz_um, dy_um, dx_um)``. Input may be a plain TIFF stack
(ZYX), an OME-TIFF or an ImageJ hyperstack (any of T, C, Z, Y, X axes; pick one channel and timepoint).
Outputs are OME-TIFF files carrying ``PhysicalSize{X,Y,Z}`` in µm, written atomically: to a temporary name in the
destination directory first, renamed only when complete, so an interrupted step never leaves a file that looks
finished.

TIFF parsing is tifffile's; this module only maps its metadata to voxel sizes and gives clear errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from llsmflow.errors import LlsmflowError, require_positive_voxel_size


@dataclass
class Volume:
    """A ZYX volume and its physical voxel size (µm, ZYX order)."""

    data: np.ndarray
    voxel_size_um: tuple[float, float, float] | None
    path: Path | None = None
    metadata: dict = field(default_factory=dict)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block completes.

    Works for files and directories (Zarr stores). On error the temporary output is removed and ``path`` is
    left untouched. The temporary name starts with ``.`` and ends with ``.partial`` so that it never matches a
    workflow output pattern.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def _ome_voxel_size(ome_xml: str) -> tuple[float, float, float] | None:
    meta = tifffile.xml2dict(ome_xml)
    image = meta.get("OME", {}).get("Image", {})
    if isinstance(image, list):
        image = image[0]
    pixels = image.get("Pixels", {})
    factors = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6}
    sizes = []
    for axis in ("Z", "Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        sizes.append(float(value) * factors.get(unit, 1.0))
    return (sizes[0], sizes[1], sizes[2])


def _imagej_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    ij = tif.imagej_metadata or {}
    page = tif.pages.first
    try:
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
    except KeyError:
        return None
    dx = xres[1] / xres[0] if xres[0] else None
    dy = yres[1] / yres[0] if yres[0] else None
    dz = ij.get("spacing")
    if dx is None or dy is None or dz is None:
        return None
    scale = {"nm": 1e-3, "mm": 1e3}.get(str(ij.get("unit", "um")).replace("micron", "um"), 1.0)
    return (float(dz) * scale, float(dy) * scale, float(dx) * scale)


def file_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """Voxel size (µm, ZYX) an open TIFF declares in its OME or ImageJ metadata; None for a plain TIFF."""
    if tif.is_ome:
        return _ome_voxel_size(tif.ome_metadata)
    if tif.is_imagej:
        return _imagej_voxel_size(tif)
    return None


@contextlib.contextmanager
def open_tiff(path: Path, expected: str = "a readable TIFF") -> Iterator[tifffile.TiffFile]:
    """Open a TIFF for reading; any failure inside becomes one :class:`LlsmflowError` naming the file and,
    for an unreadable one, ``expected`` (what the caller needed the file to be)."""
    if not path.is_file():
        raise LlsmflowError("file not found; expected a TIFF volume", path)
    tifffile_log = logging.getLogger("tifffile")
    previous_level = tifffile_log.level
    # tifffile logs its own complaints about damaged files; the error raised here says it once, clearly.
    tifffile_log.setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(path) as tif:
            yield tif
    except LlsmflowError:
        raise
    except Exception as exc:  # tifffile raises many types for truncated/corrupt files
        raise LlsmflowError(
            f"cannot read as TIFF ({type(exc).__name__}: {exc}); expected {expected}", path
        ) from exc
    finally:
        tifffile_log.setLevel(previous_level)


def read_volume(
    path: str | Path,
    channel: int | None = None,
    timepoint: int | None = None,
    voxel_size_um: tuple[float, float, float] | None = None,
) -> Volume:
    """Read one ZYX volume from a TIFF, OME-TIFF or ImageJ hyperstack.

    Parameters
    ----------
    path:
        The TIFF file. It is opened read-only.
    channel, timepoint:
        Index to select when the file has C or T axes. Required if those axes have more than one entry.
    voxel_size_um:
        ``(dz, dy, dx)`` in µm overriding what the file says (e.g. from an acquisition metadata file).

    Returns
    -------
    Volume
        ``data`` is ZYX in the file's dtype; ``voxel_size_um`` is the override, else the file's, else None.
    """
    path = Path(path)
    with open_tiff(path) as tif:
        series = tif.series[0]
        axes = series.axes
        _check_not_empty(path, tuple(series.shape))
        _check_complete(path, _tiff_data_end(series))
        data = series.asarray()
        file_voxel = file_voxel_size(tif)

    axes = axes.replace("Q", "Z").replace("I", "Z")  # plain stacks of pages read as "IYX"/"QYX"
    for name, index in (("C", channel), ("T", timepoint)):
        if name in axes:
            pos = axes.index(name)
            size = data.shape[pos]
            if index is None:
                if size != 1:
                    raise LlsmflowError(
                        f"has {size} entries along {name}; expected one (choose {name.lower()}=0..{size - 1})",
                        path,
                    )
                index = 0
            if not 0 <= index < size:
                raise LlsmflowError(f"{name} index {index} out of range; expected 0..{size - 1}", path)
            data = np.take(data, index, axis=pos)
            axes = axes[:pos] + axes[pos + 1 :]
    for extra in [a for a in axes if a not in "ZYX"]:
        pos = axes.index(extra)
        if data.shape[pos] != 1:
            raise LlsmflowError(
                f"unexpected axis {extra!r} of size {data.shape[pos]} (axes {axes}); expected ZYX", path
            )
        data = np.take(data, 0, axis=pos)
        axes = axes.replace(extra, "")
    if axes == "YX":
        data = data[np.newaxis]
        axes = "ZYX"
    if data.ndim != 3 or axes != "ZYX":
        raise LlsmflowError(f"has axes {axes!r} and shape {data.shape}; expected a 3-D ZYX volume", path)
    if data.dtype.kind not in "uif":
        raise LlsmflowError(f"has dtype {data.dtype}; expected an integer or floating point image", path)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise LlsmflowError("contains NaN or infinite voxels; expected finite intensities", path)
    _check_fits_float32(path, data)

    voxel = voxel_size_um if voxel_size_um is not None else file_voxel
    if voxel is not None:
        voxel = require_positive_voxel_size(voxel, path)
    return Volume(data=data, voxel_size_um=voxel, path=path)


def _tiff_data_end(series) -> int:
    """Byte offset just past the last pixel data of a tifffile series (file offsets), without reading pixels."""
    if series.dataoffset is not None:  # contiguous, uncompressed data (plain stacks, ImageJ hyperstacks)
        return int(series.dataoffset) + int(series.nbytes)
    end = 0
    for page in series.pages:
        if page is None:
            continue
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets):
            end = max(end, max(int(o) + int(c) for o, c in zip(offsets, counts, strict=True)))
    return end


def _check_not_empty(path: Path, shape: tuple) -> None:
    """A TIFF whose series has an axis of size 0 holds no pixels: say so (its data offsets would otherwise
    point past the end of the file and read as "truncated")."""
    if 0 in shape:
        raise LlsmflowError(
            f"has shape {shape}, an axis of size 0; expected a volume with at least one voxel along each axis",
            path,
        )


def _check_fits_float32(path: Path, data: np.ndarray) -> None:
    """Refuse floating point values beyond float32's range: every step computes in float32, where they would
    become infinite, and the fault would then be reported on an intermediate file, not on this one."""
    if data.dtype.kind != "f" or data.dtype.itemsize <= 4 or data.size == 0:
        return
    largest = max(float(data.max()), -float(data.min()))  # no |data| copy of a large stack
    limit = float(np.finfo(np.float32).max)
    if largest > limit:
        raise LlsmflowError(
            f"has {data.dtype} values up to {largest:.3g}, beyond float32's largest {limit:.3g}; expected "
            "intensities that fit float32 (llsmflow computes in float32): rescale the data",
            path,
        )


def _check_complete(path: Path, end: int) -> None:
    size = path.stat().st_size
    if end > size:
        raise LlsmflowError(
            f"is truncated: {size} bytes on disk, its pixel data end at byte {end}; expected a readable TIFF "
            "with all its pixel data (copy it again from the instrument)",
            path,
        )


def read_header(path: str | Path) -> tuple[tuple[int, int, int], np.dtype]:
    """Shape (ZYX voxels) and dtype of the volume in a TIFF, checked without reading its pixels.

    Used by ingest to reject a damaged or inconsistent acquisition before any step runs: the file must parse,
    have no axis of size 0, hold all the pixel data its header announces (a file cut short by an interrupted
    copy does not), have real integer or floating point samples, and one ZYX volume (axes of size 1 are
    dropped; a single YX plane counts as one plane).

    Raises
    ------
    LlsmflowError
        Unreadable, truncated, wrong dtype or wrong dimensionality; the message names the file.
    """
    path = Path(path)
    with open_tiff(path) as tif:
        series = tif.series[0]
        axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
        end = _tiff_data_end(series)
    _check_not_empty(path, shape)
    _check_complete(path, end)
    if dtype.kind not in "uif":
        raise LlsmflowError(f"has dtype {dtype}; expected an integer or floating point image", path)
    axes = axes.replace("Q", "Z").replace("I", "Z")
    kept = [(a, n) for a, n in zip(axes, shape, strict=True) if n != 1 or a in "ZYX"]
    names = "".join(a for a, _ in kept)
    if names == "YX":
        kept = [("Z", 1), *kept]
        names = "ZYX"
    if names != "ZYX":
        raise LlsmflowError(
            f"has axes {axes!r} and shape {shape}; expected one 3-D ZYX volume per file", path
        )
    zyx = tuple(int(n) for _, n in kept)
    return (zyx[0], zyx[1], zyx[2]), dtype


def write_volume(
    path: str | Path,
    data: np.ndarray,
    voxel_size_um: tuple[float, float, float],
    metadata: dict | None = None,
    compression: str | None = "zlib",
) -> Path:
    """Write a ZYX volume as OME-TIFF with physical voxel sizes (µm), atomically.

    ``metadata`` (JSON-serialisable) is stored in the OME description's ``Description`` of the image so that
    processing parameters travel with the file.
    """
    path = Path(path)
    dz, dy, dx = require_positive_voxel_size(voxel_size_um, path)
    if data.ndim != 3:
        raise LlsmflowError(f"volume of shape {data.shape} given; expected 3-D ZYX", path)
    ome_meta = {
        "axes": "ZYX",
        "PhysicalSizeX": dx,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": dy,
        "PhysicalSizeYUnit": "µm",
        "PhysicalSizeZ": dz,
        "PhysicalSizeZUnit": "µm",
    }
    if metadata:
        ome_meta["Description"] = json.dumps(metadata, sort_keys=True, default=str)
    # A content-derived UUID (tifffile would use a random one) keeps identical results byte-identical.
    content = hashlib.sha256(np.ascontiguousarray(data).tobytes())
    content.update(json.dumps(ome_meta, sort_keys=True, default=str).encode())
    ome_meta["UUID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"llsmflow:{content.hexdigest()}"))
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp, data, ome=True, metadata=ome_meta, compression=compression, photometric="minisblack"
        )
    return path


def read_volume_description(path: str | Path) -> dict:
    """Return the JSON metadata stored by :func:`write_volume`, or ``{}`` if none."""
    with tifffile.TiffFile(path) as tif:
        if not tif.is_ome:
            return {}
        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        if isinstance(image, list):
            image = image[0]
        text = image.get("Description")
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 digest of a file (``hashlib.file_digest``, read in blocks).

    Raises
    ------
    LlsmflowError
        If ``path`` is not a readable file.
    """
    path = Path(path)
    if not path.is_file():
        raise LlsmflowError("not found or not a file; expected a file to checksum", path)
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise LlsmflowError(f"cannot read ({exc.strerror})", path) from exc
