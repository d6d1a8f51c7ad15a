"""Growing an OME-Zarr image by timepoints, readable at every moment (``llsmflow watch``'s live archive).

An image written by :func:`llsmflow.archive.ome_zarr.write_ome_zarr` (axes ``t c z y x``, a pyramid of
block-mean levels) gets one more timepoint at the end of ``t``:

1. every level's chunks for the new timepoint are written first, beyond the arrays' current shapes, where
   no reader looks (zarr reads only the chunks inside an array's shape);
2. then each level's array metadata (``zarr.json`` for zarr v3, ``.zarray`` for v2) is replaced by one with
   ``t + 1``, written to a temporary name and renamed over the old one (an atomic rename on POSIX): a reader
   sees the old shape or the new one, never a half-written document, and the new shape only once its chunks
   are all there. The coarsest level goes first and level 0 last, so a viewer that takes the number of
   timepoints from level 0 finds the new timepoint at every level.

The multiscale metadata does not change (the ``t`` scale is the time interval, not a count). What is not
updated: the ``omero`` contrast windows (from the first timepoints) and an archive's ``checksums.sha256``;
``llsmflow watch``'s final run writes the dataset archive anew, as a batch run.

zarr-python has no append that keeps the metadata unchanged until the data are in (``Array.append`` resizes
first, so readers would see the fill value for a moment): the chunks are written through an array object
that carries the enlarged shape in memory only (zarr's own ``Array``/``AsyncArray`` over the same store).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from llsmflow.errors import LlsmflowError

_METADATA_KEYS = ("zarr.json", ".zarray")


def level_paths(root: Path) -> list[str]:
    """The paths of an OME-Zarr image's pyramid levels, level 0 first."""
    import zarr

    group = zarr.open_group(str(root), mode="r")
    attrs = group.attrs.asdict()
    multiscales = (attrs.get("ome") or attrs).get("multiscales")
    if not multiscales:
        raise LlsmflowError("has no OME-Zarr multiscales metadata; expected an image written by llsmflow", root)
    return [d["path"] for d in multiscales[0]["datasets"]]


def _block_mean(volume: np.ndarray, factors) -> np.ndarray:
    """Block means with a trailing partial block dropped (as ``skimage.transform.downscale_local_mean`` on
    the cropped volume, which :mod:`llsmflow.archive.ome_zarr` uses for its levels)."""
    factors = tuple(int(f) for f in factors)
    if all(f == 1 for f in factors):
        return volume
    shape = [n // f for n, f in zip(volume.shape, factors, strict=True)]
    cropped = volume[tuple(slice(0, n * f) for n, f in zip(shape, factors, strict=True))]
    blocks = cropped.reshape([x for n, f in zip(shape, factors, strict=True) for x in (n, f)])
    return blocks.mean(axis=tuple(range(1, 2 * len(shape), 2)), dtype=np.float64)


def _write_metadata(array, metadata) -> None:
    """Replace the array's metadata document by ``metadata``'s, atomically (temporary name, then rename)."""
    from zarr.core.buffer import default_buffer_prototype

    store_root = Path(str(array.store.root)) if hasattr(array.store, "root") else None
    if store_root is None:
        raise LlsmflowError("is not on a local file system; expected a local OME-Zarr directory", array.store)
    folder = store_root / array.path if array.path else store_root
    for key, buffer in metadata.to_buffer_dict(default_buffer_prototype()).items():
        if key not in _METADATA_KEYS:
            continue  # .zattrs (zarr v2) is unchanged
        target = folder / key
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_bytes(buffer.to_bytes())
        os.replace(tmp, target)


def append_timepoint(path: str | Path, volume_czyx) -> int:
    """Append one timepoint ``volume_czyx`` (C, Z, Y, X on level 0's grid) to the OME-Zarr image at ``path``;
    returns the new number of timepoints. Readable at every moment (module docstring).

    Raises
    ------
    LlsmflowError
        Not an llsmflow OME-Zarr image, or a volume whose channels or shape differ from level 0's.
    """
    import zarr
    from zarr.core.array import Array, AsyncArray

    path = Path(path)
    volume = np.asarray(volume_czyx)
    levels = level_paths(path)
    arrays = [zarr.open_array(str(path / level), mode="r+") for level in levels]
    base = arrays[0].shape
    if volume.ndim != 4 or tuple(volume.shape) != tuple(base[1:]):
        raise LlsmflowError(
            f"timepoint of shape {tuple(volume.shape)} (CZYX) cannot be appended; expected {tuple(base[1:])}", path
        )
    t = base[0]
    if any(a.shape[0] != t for a in arrays):
        raise LlsmflowError(
            f"levels hold {[a.shape[0] for a in arrays]} timepoints; expected the same number at every level", path
        )
    grown = []
    for array in arrays:
        factors = [max(1, round(n / m)) for n, m in zip(base[2:], array.shape[2:], strict=True)]
        level = np.stack([_block_mean(volume[c], factors) for c in range(volume.shape[0])])
        level = level[(slice(None), *(slice(0, n) for n in array.shape[2:]))]
        if np.issubdtype(array.dtype, np.integer):
            level = np.trunc(level)
        metadata = dataclasses.replace(array.metadata, shape=(t + 1, *array.shape[1:]))
        wider = Array(AsyncArray(metadata=metadata, store_path=array.async_array.store_path,
                                 config=array.async_array.config))
        wider[t] = level.astype(array.dtype)  # chunks beyond the visible shape: no reader sees them yet
        grown.append((array, metadata))
    for array, metadata in reversed(grown):  # the coarsest level first, level 0 last
        _write_metadata(array, metadata)
    return t + 1
