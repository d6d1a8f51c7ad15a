"""Sub-voxel refinement of a pairwise registration (after the coarse, integer search of :mod:`.pairwise`):
upsampled phase correlation then Gauss-Newton polishing, or, for tiles with validity masks, masked
Gauss-Newton alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from llsmflow.stitch._filters import _fill_invalid, _masked_normalised, _normalised, _prepared
from llsmflow.stitch.grid import _EPS, _MIN_NCC_VOXELS, _MIN_OVERLAP_VOX, _sample_valid, _tile_range

if TYPE_CHECKING:
    from llsmflow.stitch.tiles import Tile


def _sample_cubic(tile: Tile, offset: np.ndarray, ranges) -> np.ndarray:
    """Like :func:`_sample` but with cubic B-spline interpolation (nearly exact phase at mid frequencies).

    Invalid voxels of a tile with a validity mask are first given the value of their nearest valid voxel, so
    that the spline (whose prefilter reaches several voxels) sees no edge at the border of the valid region.
    """
    base = np.floor(np.asarray(offset) + _EPS).astype(int)
    frac = np.asarray(offset) - base  # tile voxel j at grid j + base + frac
    pad = 3
    src = []
    for (a, b), o, n in zip(ranges, base, tile.shape, strict=True):
        j0, j1 = a - o - pad, b - o + pad  # tile indices needed, with a margin for the spline
        src.append((max(0, j0), min(n, j1), j0, j1))
    window = tuple(slice(s0, s1) for s0, s1, _, _ in src)
    block = _fill_invalid(tile.read(window), tile.read_valid(window))
    block = np.pad(block, [(s0 - j0, j1 - s1) for s0, s1, j0, j1 in src], mode="edge")
    shifted = ndi.shift(block, frac, order=3, mode="nearest", prefilter=True)
    return shifted[tuple(slice(pad, pad + b - a) for a, b in ranges)].astype(np.float32, copy=False)


def _gauss_newton_step(crop_a: np.ndarray, crop_b: np.ndarray, inner) -> np.ndarray | None:
    """One Gauss-Newton (Lucas-Kanade) step for ``A(x) = B(x - shift)`` over the voxels ``inner`` (an index:
    slices or a boolean mask), clipped to one voxel per axis; None if the system is ill-conditioned."""
    grads = [g[inner].ravel() for g in np.gradient(crop_b)]
    diff = (crop_b - crop_a)[inner].ravel()
    hessian = np.array([[float(gi @ gj) for gj in grads] for gi in grads])
    rhs = np.array([float(g @ diff) for g in grads])
    if np.linalg.cond(hessian) > 1e8:
        return None
    return np.clip(np.linalg.solve(hessian, rhs), -1.0, 1.0)


def _refine(
    tile_a: Tile,
    tile_b: Tile,
    offset: np.ndarray,
    upsample_factor: int,
    reach: float = 2.0,
    iterations: int = 10,
):
    """Sub-voxel offset of b in a's grid from ``offset``; None if it fails or moves beyond ``reach``.

    First :func:`skimage.registration.phase_cross_correlation` with DFT upsampling (plain cross-correlation,
    ``normalization=None``, of the band-passed, tapered overlap: whitening the spectrum would amplify Poisson
    noise) gives a sub-voxel estimate; its taper pulls the estimate towards zero along axes where the overlap
    is thin, so the estimate is then polished by Gauss-Newton (Lucas-Kanade) iterations that minimise the
    squared difference of the lightly smoothed, normalised overlaps, b resampled by cubic splines each time.
    """
    upsample_factor = max(1, int(upsample_factor))
    start = np.asarray(offset, dtype=float)
    offset = start.copy()
    for step in range(iterations + 2):
        ranges = [
            _tile_range(o, n, 0, na) for o, n, na in zip(offset, tile_b.shape, tile_a.shape, strict=True)
        ]
        if any(b - a < _MIN_OVERLAP_VOX + 4 for a, b in ranges):
            return None
        block_a = tile_a.read(tuple(slice(a, b) for a, b in ranges))
        block_b = _sample_cubic(tile_b, offset, ranges)
        if step < 2:  # upsampled cross-correlation
            crop_a, crop_b = _prepared(block_a), _prepared(block_b)
            if not crop_a.any() or not crop_b.any():
                return None
            shift, _, _ = phase_cross_correlation(
                crop_a, crop_b, upsample_factor=upsample_factor, normalization=None
            )
            shift = np.asarray(shift, dtype=float)
        else:  # Gauss-Newton on A(x) = B(x - shift)
            crop_a, crop_b = _normalised(block_a), _normalised(block_b)
            if crop_a is None or crop_b is None:
                return None
            shift = _gauss_newton_step(crop_a, crop_b, (slice(2, -2),) * 3)  # away from the filter's borders
            if shift is None:
                return None
        offset = offset + shift
        if np.any(np.abs(offset - start) > reach):
            return None
        if step >= 2 and np.all(np.abs(shift) < 0.01):
            break
    return offset


def _refine_masked(tile_a: Tile, tile_b: Tile, offset: np.ndarray, reach: float = 2.0, iterations: int = 20):
    """:func:`_refine` for tiles with validity masks: Gauss-Newton over the voxels valid in both tiles.

    Each iteration resamples b (cubic splines, invalid voxels filled from their valid neighbours), smooths
    both overlaps by a 1-voxel Gaussian over the voxels valid in both (normalised convolution, so the border
    of the valid region adds no edge), normalises them over those voxels and solves for the shift that
    minimises their squared difference. The upsampled phase correlation of :func:`_refine` is left out: it
    cannot be masked, and the coarse masked NCC already starts within a voxel. Returns the sub-voxel offset
    of b in a's grid, or None if it fails or moves beyond ``reach``.
    """
    start = np.asarray(offset, dtype=float)
    offset = start.copy()
    cube = np.ones((3, 3, 3), bool)
    for _ in range(iterations):
        ranges = [
            _tile_range(o, n, 0, na) for o, n, na in zip(offset, tile_b.shape, tile_a.shape, strict=True)
        ]
        if any(b - a < _MIN_OVERLAP_VOX + 4 for a, b in ranges):
            return None
        window = tuple(slice(a, b) for a, b in ranges)
        block_a = tile_a.read(window)
        block_b = _sample_cubic(tile_b, offset, ranges)
        mask = np.ones(block_a.shape, bool)
        valid_a = tile_a.read_valid(window)
        if valid_a is not None:
            mask &= valid_a
        valid_b = _sample_valid(tile_b, offset, ranges)
        if valid_b is not None:  # the spline reads one voxel further than linear interpolation
            mask &= ndi.binary_erosion(valid_b, cube, border_value=1)
        inner = ndi.binary_erosion(mask, cube, border_value=0)  # where gradients see only masked voxels
        if inner.sum() < _MIN_NCC_VOXELS:
            return None
        crop_a = _masked_normalised(block_a, mask, inner)
        crop_b = _masked_normalised(block_b, mask, inner)
        if crop_a is None or crop_b is None:
            return None
        shift = _gauss_newton_step(crop_a, crop_b, inner)
        if shift is None:
            return None
        offset = offset + shift
        if np.any(np.abs(offset - start) > reach):
            return None
        if np.all(np.abs(shift) < 0.01):
            break
    return offset
