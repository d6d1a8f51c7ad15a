"""Reading fused volumes back: one (:func:`read_fused`, for tracking) or all timepoints and channels as one
lazy array (:func:`stack_fused`, for the archive). Needs Zarr, not the fusion machinery; dask only for
:func:`stack_fused`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from llsmflow.errors import LlsmflowError
from llsmflow.stitch.grid import _voxel3

__all__ = ["read_fused", "stack_fused"]


def read_fused(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Read a volume written by :func:`fuse_to_zarr`.

    Returns
    -------
    data, origin_um, voxel_size_um
        The ZYX array (in memory), the physical position (µm) of voxel (0, 0, 0) and the voxel size (µm).
    """
    path = Path(path)
    if not path.exists():
        raise LlsmflowError("fused volume not found; expected a Zarr store written by llsmflow stitch", path)
    try:
        array = zarr.open_array(str(path), mode="r")
    except Exception as exc:
        raise LlsmflowError(f"cannot open as a Zarr array ({type(exc).__name__}: {exc})", path) from exc
    attrs = array.attrs.asdict()
    try:
        origin = tuple(float(v) for v in attrs["origin_um"])
        voxel = _voxel3(attrs["voxel_size_um"])
    except (KeyError, TypeError, ValueError, LlsmflowError) as exc:
        raise LlsmflowError(f"attributes origin_um/voxel_size_um missing or invalid ({exc})", path) from exc
    if array.ndim != 3 or len(origin) != 3:
        raise LlsmflowError(f"array of shape {array.shape} with origin {origin}; expected a ZYX volume", path)
    return np.asarray(array[...]), origin, voxel


def stack_fused(stores_tc: Sequence[Sequence[str | Path]]):
    """Stack fused volumes (one per timepoint and channel, ``stores_tc[t][c]``) into a lazy TCZYX array.

    Returns
    -------
    image, origin_um, voxel_size_um
        A dask array (T, C, Z, Y, X) reading the stores chunk by chunk, and the common grid of the mosaic
        (every fused volume of a dataset is fused on the same grid; checked by shape).
    """
    import dask.array as da  # here: the tracking job reads one volume with read_fused and needs no dask

    arrays = []
    for row in stores_tc:
        channels = []
        for store in row:
            try:
                channels.append(da.from_zarr(zarr.open_array(str(store), mode="r")))
            except Exception as exc:
                raise LlsmflowError(
                    f"cannot open as a Zarr array ({exc}); expected output of llsmflow stitch", store
                ) from exc
        arrays.append(channels)
    shapes = {a.shape for row in arrays for a in row}
    if len(shapes) != 1:
        raise LlsmflowError(f"fused volumes have different shapes {sorted(shapes)}; expected one mosaic grid")
    attrs = zarr.open_array(str(stores_tc[0][0]), mode="r").attrs.asdict()
    try:
        origin = tuple(float(v) for v in attrs["origin_um"])
        voxel = _voxel3(attrs["voxel_size_um"])
    except (KeyError, TypeError, ValueError, LlsmflowError) as exc:
        raise LlsmflowError(
            f"attributes origin_um/voxel_size_um missing or invalid ({exc})", stores_tc[0][0]
        ) from exc
    return da.stack([da.stack(row) for row in arrays]), origin, voxel
