"""Volumes as the deconvolution reads and writes them: validation of arrays and array-likes (zarr, h5py,
memmap, CuPy), and reading/writing blocks a few planes at a time to the host."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from llsmflow.errors import LlsmflowError

# Chunks are read and written in slabs of at most this many bytes (see _slabs).
_IO_SLAB_BYTES = 1 << 22


def _check_volume(volume, what: str = "volume") -> np.ndarray:
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise LlsmflowError(f"{what} has shape {arr.shape}; expected a 3-D ZYX array")
    if arr.dtype.kind not in "uif":
        raise LlsmflowError(f"{what} has dtype {arr.dtype}; expected real integer or floating point values")
    if min(arr.shape) < 1:
        raise LlsmflowError(f"{what} has shape {arr.shape}; expected at least one voxel along each axis")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise LlsmflowError(f"{what} contains NaN or infinite values; expected finite intensities")
    return arr


def _volume_like(volume, what: str = "volume"):
    """Validate an array-like's shape and dtype without reading it (a NumPy or CuPy array, a memmap, a zarr
    or h5py array: anything with ``shape``, ``dtype`` and slicing). Values are checked block by block."""
    if isinstance(volume, np.ndarray) or not (hasattr(volume, "shape") and hasattr(volume, "dtype")):
        volume = np.asarray(volume) if not isinstance(volume, np.ndarray) else volume
    shape = tuple(int(n) for n in volume.shape)
    dtype = np.dtype(volume.dtype)
    if len(shape) != 3:
        raise LlsmflowError(f"{what} has shape {shape}; expected a 3-D ZYX array")
    if dtype.kind not in "uif":
        raise LlsmflowError(f"{what} has dtype {dtype}; expected real integer or floating point values")
    if min(shape) < 1:
        raise LlsmflowError(f"{what} has shape {shape}; expected at least one voxel along each axis")
    return volume


def _read_block(volume, region, check: bool = True, what: str = "volume") -> np.ndarray:
    """Read ``volume[region]`` to the host as a NumPy array; ``check``: raise on NaN or infinite values."""
    block = volume[region]
    if not isinstance(block, np.ndarray):
        # a CuPy array has __array__ too, but it raises (no implicit device-to-host copy): .get() for it
        block = block.get() if hasattr(block, "__cuda_array_interface__") else np.asarray(block)
    if check and block.dtype.kind == "f" and not np.isfinite(block).all():
        raise LlsmflowError(f"{what} contains NaN or infinite values; expected finite intensities")
    return block


def _slabs(region: tuple[slice, ...], itemsize: int) -> Iterator[tuple[int, int]]:
    """(start, stop) plane offsets splitting ``region`` along z into reads/writes of <= ``_IO_SLAB_BYTES``.

    Reading and writing a chunk a few planes at a time bounds the memory an array library (zarr's decoded
    chunks, h5py's buffers) or a dtype conversion holds at once, whatever the chunk's size."""
    plane = itemsize * math.prod(r.stop - r.start for r in region[1:])
    step = max(1, _IO_SLAB_BYTES // max(plane, 1))
    n = region[0].stop - region[0].start
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _sub_z(region: tuple[slice, ...], start: int, stop: int) -> tuple[slice, ...]:
    z = region[0].start
    return (slice(z + start, z + stop), *region[1:])


def _to_host(array) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.get()
