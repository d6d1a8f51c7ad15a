"""Tile files: their headers (shape, axes, voxel size) and window-by-window reads of their pixels.

A tile is a ZYX TIFF or a Zarr array. An uncompressed, contiguous TIFF is read with ``os.preadv``
(:class:`_ContiguousTiff`), another ZYX TIFF through tifffile's Zarr interface, any other layout whole.
Zarr is imported only where a Zarr array is opened, so that registering TIFF tiles does not load it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import tifffile

from llsmflow.errors import LlsmflowError
from llsmflow.io import file_voxel_size, open_tiff, read_volume
from llsmflow.stitch.grid import _voxel3


def _tiff_peek(path: Path) -> tuple[tuple[int, int, int], str, tuple[float, float, float] | None]:
    """Return the ZYX shape, the series axes and the voxel size (µm) of a TIFF without reading its pixels."""
    with open_tiff(path, expected="a tile volume") as tif:
        series = tif.series[0]
        axes = series.axes.replace("Q", "Z").replace("I", "Z")
        shape = tuple(int(n) for n in series.shape)
        voxel = file_voxel_size(tif)
    if len(set(axes)) != len(axes):
        raise LlsmflowError(f"has axes {series.axes!r} and shape {shape}; expected a ZYX volume", path)
    sizes = dict(zip(axes, shape, strict=True))
    for name, size in sizes.items():
        if name not in "ZYX" and size != 1:
            raise LlsmflowError(
                f"has axis {name!r} of size {size} (axes {series.axes}, shape {shape}); "
                "expected one ZYX volume per tile",
                path,
            )
    if "Y" not in sizes or "X" not in sizes:
        raise LlsmflowError(f"has axes {series.axes!r}; expected a ZYX volume", path)
    zyx = (sizes.get("Z", 1), sizes["Y"], sizes["X"])
    return zyx, axes, voxel


def _is_zarr_path(path) -> bool:
    """Whether ``path`` is a directory holding a Zarr array (v2 or v3)."""
    if path is None:
        return False
    path = Path(path)
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zarray").is_file())


def _zarr_peek(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float] | None]:
    """Shape and voxel size (µm, from a ``voxel_size_um`` attribute as :func:`fuse_to_zarr` writes) of a
    ZYX Zarr array, without reading its data."""
    import zarr  # here: a mosaic of TIFF tiles never needs it

    try:
        array = zarr.open_array(str(path), mode="r")
    except Exception as exc:
        raise LlsmflowError(f"cannot open as a Zarr array ({type(exc).__name__}: {exc})", path) from exc
    if array.ndim != 3:
        raise LlsmflowError(f"Zarr array of shape {array.shape}; expected a ZYX volume", path)
    voxel = array.attrs.get("voxel_size_um")
    try:
        voxel = _voxel3(voxel) if voxel is not None else None
    except LlsmflowError:
        voxel = None
    return tuple(int(n) for n in array.shape), voxel


def _volume_peek(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float] | None]:
    """Shape and voxel size (µm, None if unknown) of a tile file: a TIFF or a Zarr array."""
    if _is_zarr_path(path):
        return _zarr_peek(path)
    shape, _, voxel = _tiff_peek(path)
    return shape, voxel


class _ContiguousTiff:
    """Window reads from an uncompressed ZYX TIFF whose pixels are one contiguous block of the file.

    A window is read plane by plane with ``os.preadv`` (whole rows of the window's row range, straight into
    the result's buffer, then cropped along x): no decoding, no strips beyond the window, no file position
    shared between threads. Supports numpy slicing with unit steps, like the arrays :class:`Tile` reads.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype, offset: int):
        self.path = str(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.offset = int(offset)
        self.chunks = (1, 1, self.shape[2])  # a read holds at least whole rows
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        bounds = []
        for k, n in zip(key, self.shape, strict=True):
            if not isinstance(k, slice) or k.step not in (None, 1):
                raise TypeError(f"window reads take slices with unit steps; got {key!r}")
            start, stop, _ = k.indices(n)
            bounds.append((start, max(start, stop)))
        (z0, z1), (y0, y1), (x0, x1) = bounds
        nz, ny, nx = self.shape
        rows = np.empty((z1 - z0, y1 - y0, nx), self.dtype)
        if rows.size:
            if self._fd is None:
                with self._lock:
                    if self._fd is None:
                        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            row_bytes = nx * self.dtype.itemsize
            for i, z in enumerate(range(z0, z1)):
                view = memoryview(rows[i]).cast("B")
                done = os.preadv(self._fd, [view], self.offset + (z * ny + y0) * row_bytes)
                if done != view.nbytes:
                    raise LlsmflowError(f"file ends early: {done} of {view.nbytes} bytes read", self.path)
        return rows[:, :, x0:x1] if (x0, x1) != (0, nx) else rows


def _open_contiguous_tiff(path: Path, shape: tuple[int, int, int]) -> _ContiguousTiff | None:
    """A :class:`_ContiguousTiff` for an uncompressed, contiguous ZYX TIFF of ``shape``, else None."""
    if not hasattr(os, "preadv"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            offset = series.dataoffset
            if offset is None or tuple(series.shape) != tuple(shape) or series.axes != "ZYX":
                return None
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
    except Exception:  # not readable this way: the generic path reports errors
        return None
    return _ContiguousTiff(path, shape, dtype, offset)


def _open_lazy(path: Path, shape: tuple[int, int, int]):
    import zarr  # here: registration reads its tiles whole, and only fusion opens them lazily

    if _is_zarr_path(path):
        arr = zarr.open_array(str(path), mode="r")
        if tuple(arr.shape) != tuple(shape):
            raise LlsmflowError(
                f"volume shape {tuple(arr.shape)} differs from the tile's shape {tuple(shape)}", path
            )
        return arr
    if not path.is_file():
        raise LlsmflowError("tile file not found; expected a TIFF volume or a Zarr array", path)
    _, axes, _ = _tiff_peek(path)
    arr = _open_contiguous_tiff(path, shape) if axes == "ZYX" else None
    if arr is not None:
        return arr
    if axes == "ZYX":
        try:
            arr = zarr.open_array(tifffile.imread(path, aszarr=True), mode="r")
        except Exception:  # fall back to reading the whole file
            arr = None
    if arr is None:
        arr = read_volume(path).data
    if tuple(arr.shape) != tuple(shape):
        raise LlsmflowError(
            f"volume shape {tuple(arr.shape)} differs from the tile's shape {tuple(shape)}", path
        )
    return arr
