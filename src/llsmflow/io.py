"""Reading and writing volumes and acquisition metadata.

Volumes are ZYX arrays with a physical voxel size ``(dz_um, dy_um, dx_um)``. Input may be a plain TIFF stack
(ZYX), an OME-TIFF or an ImageJ hyperstack (any of T, C, Z, Y, X axes; pick one channel and timepoint), or a
Zeiss CZI file (T, C, Z, Y, X; pick one channel and timepoint, see :func:`read_czi`).
Outputs are OME-TIFF files carrying ``PhysicalSize{X,Y,Z}`` in µm, written atomically: to a temporary name in the
destination directory first, renamed only when complete, so an interrupted step never leaves a file that looks
finished.

TIFF parsing is tifffile's, CZI reading :mod:`llsmflow.czi_io`'s (whose names are re-exported here); this
module only maps their metadata to voxel sizes and gives clear errors. A TIFF may also be a URL (``https://…``,
``s3://…``), opened through fsspec (the optional ``remote`` extra): only the pages of the chosen channel and
timepoint are fetched, and no message shows the URL's credentials (:func:`redact`).
"""

from __future__ import annotations

import contextlib
import errno
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

from llsmflow.czi_io import CZI_SUFFIX, czi_header, czi_voxel_size, is_czi, read_czi  # noqa: F401 (re-exported)
from llsmflow.errors import LlsmflowError, reading_errors, require_positive_voxel_size, select_axis_index
from llsmflow.urls import UrlPath, as_path, is_url, redact, url_filesystem  # noqa: F401 (re-exported)


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
    for an unreadable one, ``expected`` (what the caller needed the file to be). ``path`` may be a URL."""
    url = is_url(path)
    if not url and not path.is_file():
        raise LlsmflowError("file not found; expected a TIFF volume", path)
    tifffile_log = logging.getLogger("tifffile")
    previous_level = tifffile_log.level
    # tifffile logs its own complaints about damaged files; the error raised here says it once, clearly.
    tifffile_log.setLevel(logging.CRITICAL)
    try:
        with reading_errors("TIFF", expected, redact(path) if url else path, describe=redact):
            if url:  # range requests: small blocks (each page's IFD is read, pixels only if asked), each fetched
                # once (tifffile seeks back and forth: a one-block read-ahead cache fetched blocks again and again)
                fs, remote = url_filesystem(str(path))
                opened = fs.open(remote, "rb", block_size=1 << 12, cache_type="mmap")
                with opened as handle, tifffile.TiffFile(handle) as tif:
                    yield tif
            else:
                with tifffile.TiffFile(path) as tif:
                    yield tif
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
        The TIFF file, or its URL (``https://…``; ``s3://…`` with s3fs). It is opened read-only.
    channel, timepoint:
        Index to select when the file has C or T axes. Required if those axes have more than one entry.
    voxel_size_um:
        ``(dz, dy, dx)`` in µm overriding what the file says (e.g. from an acquisition metadata file).

    Returns
    -------
    Volume
        ``data`` is ZYX in the file's dtype; ``voxel_size_um`` is the override, else the file's, else None.
    """
    source = str(path) if is_url(path) else Path(path)
    path = redact(source) if is_url(source) else source  # what messages name: a URL without credentials
    _no_czi_url(source)
    if not is_url(source) and is_czi(path):
        data, file_voxel = read_czi(path, channel, timepoint)
        voxel = voxel_size_um if voxel_size_um is not None else file_voxel
        if voxel is not None:
            voxel = require_positive_voxel_size(voxel, path)
        return Volume(data=data, voxel_size_um=voxel, path=path)
    with open_tiff(source) as tif:
        series = tif.series[0]
        axes = series.axes
        _check_not_empty(path, tuple(series.shape))
        _check_complete(source, _tiff_data_end(series))
        data = _selected_pages(path, tif, series, channel, timepoint) if is_url(source) else None
        if data is not None:
            axes = "".join(a for a in axes.replace("Q", "Z").replace("I", "Z") if a not in "CT")
        else:
            data = series.asarray()
        file_voxel = file_voxel_size(tif)

    axes = axes.replace("Q", "Z").replace("I", "Z")  # plain stacks of pages read as "IYX"/"QYX"
    for name, index in (("C", channel), ("T", timepoint)):
        if name in axes:
            pos = axes.index(name)
            size = data.shape[pos]
            index = select_axis_index(path, name, size, index)
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
    if is_url(path):
        fs, remote = url_filesystem(path)
        size, path = fs.size(remote), redact(path)
    else:
        size = path.stat().st_size
    if end > size:
        raise LlsmflowError(
            f"is truncated: {size} bytes on disk, its pixel data end at byte {end}; expected a readable TIFF "
            "with all its pixel data (copy it again from the instrument)",
            path,
        )


def read_header(
    path: str | Path, channel: int | None = None, timepoint: int | None = None
) -> tuple[tuple[int, int, int], np.dtype]:
    """Shape (ZYX voxels) and dtype of the volume in a TIFF or CZI, checked without reading its pixels.

    ``channel``/``timepoint`` select one volume of a file with C or T axes (as in :func:`read_volume`); without
    them, such axes must have one entry.

    Used by ingest to reject a damaged or inconsistent acquisition before any step runs: the file must parse,
    have no axis of size 0, hold all the pixel data its header announces (a file cut short by an interrupted
    copy does not), have real integer or floating point samples, and one ZYX volume (axes of size 1 are
    dropped; a single YX plane counts as one plane).

    Raises
    ------
    LlsmflowError
        Unreadable, truncated, wrong dtype or wrong dimensionality; the message names the file (or URL).
    """
    source = str(path) if is_url(path) else Path(path)
    path = redact(source) if is_url(source) else source
    _no_czi_url(source)
    if not is_url(source) and is_czi(path):
        header = czi_header(path)
        select_axis_index(path, "C", header["sizes"].get("C", 1), channel)
        select_axis_index(path, "T", header["sizes"].get("T", 1), timepoint)
        return tuple(header["sizes"].get(a, 1) for a in "ZYX"), header["dtype"]
    with open_tiff(source) as tif:
        series = tif.series[0]
        axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
        end = _tiff_data_end(series)
    _check_not_empty(path, shape)
    _check_complete(source, end)
    if dtype.kind not in "uif":
        raise LlsmflowError(f"has dtype {dtype}; expected an integer or floating point image", path)
    axes = axes.replace("Q", "Z").replace("I", "Z")
    for name, index in (("C", channel), ("T", timepoint)):
        if name in axes and index is not None:  # without a selector, a C or T axis must have one entry
            pos = axes.index(name)
            select_axis_index(path, name, shape[pos], index)
            axes, shape = axes[:pos] + axes[pos + 1 :], shape[:pos] + shape[pos + 1 :]
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
    content = hashlib.sha256(np.ascontiguousarray(data).reshape(-1).view(np.uint8))  # no copy (tobytes: 25 MB)
    content.update(json.dumps(ome_meta, sort_keys=True, default=str).encode())
    ome_meta["UUID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"llsmflow:{content.hexdigest()}"))
    with atomic_output(path) as tmp:
        try:
            tifffile.imwrite(
                tmp, data, ome=True, metadata=ome_meta, compression=compression, photometric="minisblack"
            )
        except OSError as exc:
            # an uncompressed volume goes out through numpy's tofile, whose short write (a full disk or
            # quota) is an OSError without errno ("N requested and M written"): say what it is
            if exc.errno is None and "requested and" in str(exc):
                raise OSError(errno.ENOSPC, f"No space left on device (short write: {exc})", str(tmp)) from exc
            raise
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
    if is_url(path):  # streamed once through fsspec, in 4 MiB blocks (raw data by URL)
        fs, remote = url_filesystem(str(path))
        with reading_errors("file", "a file to checksum", redact(path), describe=redact):
            with fs.open(remote, "rb", block_size=1 << 22) as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
    path = Path(path)
    if not path.is_file():
        raise LlsmflowError("not found or not a file; expected a file to checksum", path)
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise LlsmflowError(f"cannot read ({exc.strerror})", path) from exc


def _no_czi_url(source) -> None:
    if is_url(source) and str(source).partition("?")[0].lower().endswith(CZI_SUFFIX):
        raise LlsmflowError(
            "is a CZI by URL, which is not supported (the CZI reader needs a local file); expected a TIFF or "
            "OME-TIFF by URL, or the CZI in a local folder",
            redact(source),
        )


def _selected_pages(path, tif: tifffile.TiffFile, series, channel, timepoint) -> np.ndarray | None:
    """Only the pages (YX planes) of the chosen channel and timepoint, for a file read over the network; None
    where the series is not one page per plane (the caller then reads it whole)."""
    axes, shape = series.axes.replace("Q", "Z").replace("I", "Z"), tuple(series.shape)
    planes = int(np.prod(shape[:-2]))
    if not axes.endswith("YX") or len(series.pages) != planes:
        return None
    index: list = [slice(None)] * (len(shape) - 2)
    for name, chosen in (("C", channel), ("T", timepoint)):
        if name in axes:
            index[axes.index(name)] = select_axis_index(path, name, shape[axes.index(name)], chosen)
    pages = np.arange(planes).reshape(shape[:-2])[tuple(index)]
    return tif.asarray(key=pages.ravel().tolist(), series=0).reshape(pages.shape + shape[-2:])
