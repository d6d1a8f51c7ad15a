"""The common voxel grid of a mosaic: voxel sizes, the fused extent, and sampling tiles onto the grid.

Light on purpose (numpy only): the resource estimate (``llsmflow.hpc``) needs :func:`fused_extent` on every
Snakemake start, and both registration (:mod:`.pairwise`) and fusion (:mod:`.fusion`) sample tiles at
sub-voxel offsets with :func:`_sample`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from llsmflow.errors import LlsmflowError, require_positive_voxel_size

if TYPE_CHECKING:
    from llsmflow.stitch.tiles import Tile

__all__ = ["fused_extent"]

_EPS = 1e-6  # tolerance, in voxels, for positions that fall on a voxel centre
_MIN_OVERLAP_VOX = 3  # fewer voxels than this along any axis is not an overlap worth registering
_MIN_NCC_VOXELS = 64  # fewer overlapping voxels than this gives no meaningful correlation


def _voxel3(voxel_size_um) -> tuple[float, float, float]:
    values = require_positive_voxel_size(voxel_size_um)
    if len(values) != 3:
        raise LlsmflowError(f"voxel size {values} µm has {len(values)} entries; expected (dz, dy, dx)")
    return values


def fused_extent(
    positions: Mapping[str, Sequence[float]],
    shapes: Mapping[str, Sequence[int]],
    voxel_size_um,
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """The common grid of a fused volume.

    Parameters
    ----------
    positions:
        Tile key -> origin ``(z, y, x)`` µm (centre of voxel 0).
    shapes:
        Tile key -> shape ``(nz, ny, nx)`` voxels.
    voxel_size_um:
        ``(dz, dy, dx)`` µm.

    Returns
    -------
    origin_um, shape
        The grid origin is the minimum of the tile origins along each axis; the shape holds every grid voxel
        up to the farthest tile voxel centre (a fraction of a voxel beyond the last grid voxel is dropped).
    """
    voxel = np.array(_voxel3(voxel_size_um))
    if not positions:
        raise LlsmflowError("no tile positions given; expected at least one")
    missing = [k for k in positions if k not in shapes]
    if missing:
        raise LlsmflowError(f"no shape for tile(s) {', '.join(missing)}; expected one per positioned tile")
    starts = np.array([np.asarray(positions[k], dtype=float) for k in positions])
    ends = np.array(
        [np.asarray(positions[k], dtype=float) + (np.asarray(shapes[k]) - 1) * voxel for k in positions]
    )
    origin = starts.min(axis=0)
    shape = np.floor((ends.max(axis=0) - origin) / voxel + _EPS).astype(int) + 1
    return tuple(float(v) for v in origin), tuple(int(n) for n in shape)


def _tile_range(offset: float, n: int, lo: int, hi: int) -> tuple[int, int]:
    """Grid indices ``[a, b)`` in ``[lo, hi)`` covered by a tile of ``n`` voxels, voxel 0 at ``offset``."""
    a = max(lo, math.ceil(offset - _EPS))
    b = min(hi, math.floor(offset + n - 1 + _EPS) + 1)
    return a, b


def _sample_window(
    shape: Sequence[int], offset: np.ndarray, ranges: Sequence[tuple[int, int]]
) -> tuple[tuple[slice, ...], list[float], list[int]]:
    """The tile voxels that linear interpolation at grid ``ranges`` reads: slices, fractions, lengths."""
    slices, fracs, lengths = [], [], []
    for (a, b), off, n in zip(ranges, offset, shape, strict=True):
        u0 = a - off
        j0 = max(0, math.floor(u0 + _EPS))
        w = u0 - j0
        if w < _EPS:
            w = 0.0
        length = b - a
        stop = j0 + length + (1 if w > 0 else 0)
        slices.append(slice(j0, min(stop, n)))
        fracs.append(w)
        lengths.append(length + (1 if w > 0 else 0))
    return tuple(slices), fracs, lengths


def _sample(tile: Tile, offset: np.ndarray, ranges: Sequence[tuple[int, int]], read=None) -> np.ndarray:
    """Sample a tile at integer grid indices by separable linear interpolation.

    The tile's voxel ``j`` sits at grid position ``j + offset`` (voxels, per axis, fractional allowed).
    ``ranges`` are grid index ranges ``[a, b)`` that must lie inside the tile (see :func:`_tile_range`).
    ``read(slices)`` returns the tile's values on ``slices`` (default :meth:`Tile.read`; a volume on the
    tile's grid such as its validity can be sampled the same way). Returns float32 of shape ``(b - a)`` per
    axis.
    """
    slices, fracs, lengths = _sample_window(tile.shape, offset, ranges)
    block = (tile.read if read is None else read)(slices)
    pad = [(0, need - got) for need, got in zip(lengths, block.shape, strict=True)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    for axis, w in enumerate(fracs):
        if w > 0:
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis] = slice(0, -1)
            hi[axis] = slice(1, None)
            block = (1.0 - w) * block[tuple(lo)] + w * block[tuple(hi)]
    return block.astype(np.float32, copy=False)


def _sample_valid(tile: Tile, offset: np.ndarray, ranges: Sequence[tuple[int, int]]) -> np.ndarray | None:
    """Grid voxels whose linear interpolation from ``tile`` reads only valid voxels; None if no mask."""
    if tile.valid is None:
        return None
    sampled = _sample(tile, offset, ranges, read=lambda sl: tile.read_valid(sl).astype(np.float32))
    return sampled > 1.0 - 1e-3
