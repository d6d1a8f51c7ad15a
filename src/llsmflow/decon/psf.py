"""PSF preparation (measured bead → centred, resampled, normalised kernel) and the data background."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from llsmflow.decon.volumes import _check_volume
from llsmflow.errors import LlsmflowError, require_positive_voxel_size

# PSF "signal" must rise this many robust standard deviations (of the border voxels) above the background.
_PSF_MIN_SNR = 8.0
# PSF support: smoothed signal this many robust sigmas above the border; side lobes holding at least this
# fraction of the main lobe's intensity are kept; then dilated by this many voxels.
_PSF_SUPPORT_SIGMAS = 3.0
_PSF_MIN_LOBE = 0.02
_PSF_SUPPORT_DILATE = 2
# Voxel sizes closer than this (relative) count as equal: no PSF resampling.
_SAME_VOXEL_RTOL = 1e-6


def _check_background_value(background, what: str) -> float | str:
    if isinstance(background, str):
        if background != "auto":
            raise LlsmflowError(f"{what} {background!r} is not understood; expected 'auto' or a number")
        return background
    try:
        value = float(background)
    except (TypeError, ValueError):
        raise LlsmflowError(f"{what} {background!r} is not understood; expected 'auto' or a number") from None
    if not (np.isfinite(value) and value >= 0):
        raise LlsmflowError(f"{what} {value} is invalid; expected 'auto' or a finite number >= 0")
    return value


def resolve_background(volume: np.ndarray, background: float | str = "auto") -> float:
    """Return the constant background (input intensity units) that ``richardson_lucy`` subtracts.

    Parameters
    ----------
    volume : ndarray
        ZYX volume (NumPy or CuPy).
    background : float or 'auto'
        A number is returned as is. ``'auto'`` is cudaDecon's rule, the median of the last z plane, but taken
        over the *non-zero* voxels of that plane only, because a deskewed volume has zero-filled corners that
        would otherwise pull the median to 0. If that plane has no non-zero voxel the background is 0.

    Returns
    -------
    float
        Background in the volume's intensity units, >= 0.
    """
    background = _check_background_value(background, "background")
    if not isinstance(background, str):
        return float(background)
    last = volume[-1]
    last = last.get() if hasattr(last, "get") and not isinstance(last, np.ndarray) else np.asarray(last)
    nonzero = last[last != 0]
    if nonzero.size == 0:
        return 0.0
    return max(float(np.median(nonzero)), 0.0)


def _border_voxels(arr: np.ndarray) -> np.ndarray:
    faces = [arr[0], arr[-1], arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]]
    return np.concatenate([f.ravel() for f in faces])


def _psf_support(signed: np.ndarray) -> np.ndarray:
    """Mask of the bead (and its side lobes) in a background-subtracted PSF, excluding the noise floor.

    Clamping noise at 0 leaves a positive pedestal (about 0.4 sigma per voxel) over the whole stack; on a real
    61x128x128 bead stack that pedestal holds over two thirds of the clamped sum, i.e. it would dominate the
    kernel. The support is: smooth with a 1-voxel Gaussian, keep the connected regions more than
    ``_PSF_SUPPORT_SIGMAS`` robust standard deviations (of the smoothed border) above the smoothed border's
    median that hold at least ``_PSF_MIN_LOBE`` of the brightest region's intensity, then dilate by
    ``_PSF_SUPPORT_DILATE`` voxels to keep the faint edges. A noise-free PSF keeps all its non-zero voxels.
    """
    smooth = ndimage.gaussian_filter(signed, 1.0, mode="nearest")
    border = _border_voxels(smooth)
    level = float(np.median(border))
    sigma = 1.4826 * float(np.median(np.abs(border - level)))
    labels, count = ndimage.label(smooth > level + _PSF_SUPPORT_SIGMAS * sigma)
    if count == 0:
        return np.ones(signed.shape, dtype=bool)
    sums = np.atleast_1d(ndimage.sum(np.clip(signed, 0, None), labels, index=np.arange(1, count + 1)))
    keep = np.flatnonzero(sums >= _PSF_MIN_LOBE * sums.max()) + 1
    mask = np.isin(labels, keep)
    return ndimage.binary_dilation(mask, iterations=_PSF_SUPPORT_DILATE)


def _crop_centred(kernel: np.ndarray) -> np.ndarray:
    """Crop an odd-sized, centred kernel to the smallest centred box holding all its non-zero voxels."""
    nonzero = np.nonzero(kernel)
    if not nonzero[0].size:
        return kernel
    centre = np.array(kernel.shape) // 2
    half = [int(np.abs(idx - c).max()) for idx, c in zip(nonzero, centre, strict=True)]
    return kernel[tuple(slice(c - h, c + h + 1) for c, h in zip(centre, half, strict=True))]


def prepare_psf(
    psf: np.ndarray,
    psf_voxel_um,
    data_voxel_um,
    background: float | str = "auto",
) -> np.ndarray:
    """Turn a measured PSF into a deconvolution kernel sampled like the data.

    Steps: subtract a constant background and clamp at 0; zero the noise floor outside the bead's support
    (see ``_psf_support``: without this, clamped noise carries most of a real PSF's sum); locate the peak as
    the intensity-weighted centre of mass of the bright part (the connected region >= 50 % of the maximum
    holding the most intensity); resample to the data voxel size with linear interpolation (order 1) when
    the voxel sizes differ, on a grid centred on that centre of mass, otherwise shift by whole voxels;
    zero-pad/crop to the smallest odd-sized array with the peak on its central voxel that holds all non-zero
    voxels; normalise to sum 1.

    Parameters
    ----------
    psf : ndarray
        ZYX bead image (any real dtype), at least a few voxels of background around the bead.
    psf_voxel_um : tuple of 3 floats
        ``(dz, dy, dx)`` of the PSF in µm.
    data_voxel_um : tuple of 3 floats
        ``(dz, dy, dx)`` of the data to deconvolve in µm.
    background : float or 'auto'
        Constant to subtract (PSF intensity units). ``'auto'`` is the median of the PSF's outer border voxels
        (all six faces).

    Returns
    -------
    ndarray
        float32, odd size along every axis, peak on the central voxel ``shape // 2``, sum 1.

    Raises
    ------
    LlsmflowError
        Not 3-D (fewer than 2 voxels along an axis: a 2-D image is not a PSF), non-finite values, bad voxel
        sizes or background, or no signal above background.

    Notes
    -----
    The resampling is ``scipy.ndimage.affine_transform`` with a diagonal matrix (order 1): the same linear
    interpolation as ``scipy.ndimage.zoom(order=1)``, but with the *exact* requested spacing and the output
    grid centred on the PSF's centre of mass; ``zoom`` rounds the output shape and so changes the spacing
    by up to a few per cent, which would change the PSF's physical width.
    """
    arr = _check_volume(psf, "PSF").astype(np.float64)
    if min(arr.shape) < 2:
        # a 2-D image read as one plane would deconvolve as a PSF with no axial extent: refused
        raise LlsmflowError(
            f"PSF has shape {arr.shape} (ZYX), a single plane or line; expected a 3-D bead stack with more "
            "than one voxel along z, y and x"
        )
    psf_voxel = require_positive_voxel_size(psf_voxel_um, what="PSF voxel size")
    data_voxel = require_positive_voxel_size(data_voxel_um, what="data voxel size")
    if len(psf_voxel) != 3 or len(data_voxel) != 3:
        raise LlsmflowError(
            f"voxel sizes {psf_voxel} (PSF) and {data_voxel} (data) µm given; expected (dz, dy, dx) each"
        )
    background = _check_background_value(background, "PSF background")

    border = _border_voxels(arr)
    bg = float(np.median(border)) if background == "auto" else float(background)
    arr = arr - bg
    peak = float(arr.max())
    noise = 1.4826 * float(np.median(np.abs(border - np.median(border))))
    if not peak > 0 or peak <= _PSF_MIN_SNR * noise:
        raise LlsmflowError(
            f"PSF has no signal above background {bg:g} (peak {peak:g} above it, border noise {noise:g}); "
            f"expected a bead at least {_PSF_MIN_SNR:g}x the border noise above the background"
        )
    arr = np.clip(arr, 0.0, None) * _psf_support(arr)

    labels, count = ndimage.label(arr >= 0.5 * peak)
    sums = ndimage.sum(arr, labels, index=np.arange(1, count + 1))
    brightest = int(np.argmax(sums)) + 1
    com = np.array(ndimage.center_of_mass(arr, labels, brightest))

    # output voxel spacing in units of input voxels
    step = np.array(data_voxel) / np.array(psf_voxel)
    shape = np.array(arr.shape)
    if np.allclose(step, 1.0, rtol=_SAME_VOXEL_RTOL, atol=0):
        centre = np.rint(com).astype(int)
        half = np.maximum(centre, shape - 1 - centre)
        out = np.zeros(tuple(2 * half + 1), dtype=np.float64)
        dst = tuple(slice(h - c, h - c + n) for h, c, n in zip(half, centre, shape, strict=True))
        out[dst] = arr
    else:
        # output index K maps to input coordinate `com`; cover the PSF's far side, zero outside it
        half = np.floor(np.maximum(com, shape - 1 - com) / step).astype(int)
        out = ndimage.affine_transform(
            arr,
            step,
            offset=com - step * half,
            output_shape=tuple(2 * half + 1),
            order=1,
            mode="constant",
            cval=0.0,
        )
        out = np.clip(out, 0.0, None)
    out = _crop_centred(out)
    total = float(out.sum())
    if not total > 0:
        raise LlsmflowError("PSF is empty after resampling; expected a PSF with signal near its centre")
    return (out / total).astype(np.float32)
