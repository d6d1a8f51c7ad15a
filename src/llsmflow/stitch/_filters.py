"""Filters of overlap blocks for registration: band-pass, taper, smoothing and normalisation, each also over
the voxels of a validity mask only (normalised convolution), so that the border of a tile's valid region
adds no edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_DOG_SIGMAS_VOX = (1.0, 4.0)  # band-pass before cross-correlation, voxels


def _fill_invalid(block: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Copy of ``block`` with every invalid voxel set to the value of its nearest valid voxel (no edges)."""
    if valid is None or valid.all() or not valid.any():
        return block
    index = ndi.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return block[tuple(index)]


def _masked_smooth(block: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: the Gaussian-weighted mean of ``block`` over ``mask`` voxels only (0 off it).

    Unlike a plain Gaussian filter it sees no edge where the mask ends, so the border of a tile's valid
    region (the empty wedges of a deskewed volume) leaves no trace in the filtered data.
    """
    weight = mask.astype(np.float32)
    num = ndi.gaussian_filter(block.astype(np.float32) * weight, sigma, mode="constant")
    den = ndi.gaussian_filter(weight, sigma, mode="constant")
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=mask & (den > 0))
    return out


def _masked_bandpass(block: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`_bandpass` computed over the voxels of ``mask`` only (normalised convolution); 0 off the mask."""
    low = _masked_smooth(block, mask, _DOG_SIGMAS_VOX[1])
    return _masked_smooth(block, mask, _DOG_SIGMAS_VOX[0]) - low


def _bandpass(block: np.ndarray) -> np.ndarray:
    """Difference of Gaussians (1 and 4 voxels): drops the noise-dominated highest frequencies and the smooth
    background that would flatten a correlation peak."""
    block = block.astype(np.float32, copy=False)
    return ndi.gaussian_filter(block, _DOG_SIGMAS_VOX[0], mode="nearest") - ndi.gaussian_filter(
        block, _DOG_SIGMAS_VOX[1], mode="nearest"
    )


def _prepared(block: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Band-pass, centre and taper a block (Tukey window, ``alpha``) so that FFT wrap-around adds no edges."""
    # here, not at the top: scipy.signal takes most of a second to import, and only tiles without validity
    # masks come here (the workflow's deskewed tiles have masks)
    from scipy.signal import windows

    block = _bandpass(block)
    block = block - block.mean(dtype=np.float64)
    for axis, n in enumerate(block.shape):
        if n >= 3:
            shape = [1, 1, 1]
            shape[axis] = n
            block = block * windows.tukey(n, alpha).reshape(shape)
    return block.astype(np.float32, copy=False)


def _masked_normalised(block: np.ndarray, mask: np.ndarray, where: np.ndarray) -> np.ndarray | None:
    """:func:`_normalised` over ``mask`` voxels: smoothed within the mask, zero mean and unit variance over
    ``where``; None if flat."""
    block = _masked_smooth(block, mask, 1.0).astype(np.float64)
    values = block[where]
    std = values.std()
    if not std > 0:
        return None
    return (block - values.mean()) / std


def _normalised(block: np.ndarray) -> np.ndarray | None:
    """Gaussian-smoothed (1 voxel), zero-mean, unit-variance copy of a block; None if it is flat."""
    block = ndi.gaussian_filter(block.astype(np.float64), 1.0, mode="nearest")
    block -= block.mean()
    std = block.std()
    return block / std if std > 0 else None
