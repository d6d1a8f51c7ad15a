"""The pycudadecon backend: cudaDecon (uint16 only, its own padding rules) on one block."""

from __future__ import annotations

import warnings

import numpy as np

from llsmflow.decon.padding import _padding
from llsmflow.errors import LlsmflowError


def _to_uint16(volume: np.ndarray, background: float) -> tuple[np.ndarray, float, float]:
    """cudaDecon takes uint16 only: return (data, background, scale) with data ~= volume * scale."""
    if volume.dtype == np.uint16:
        return volume, background, 1.0
    vmax = float(volume.max()) if volume.size else 0.0
    integral = volume.dtype.kind in "ui" or bool(np.all(volume == np.round(volume)))
    if float(volume.min()) >= 0 and vmax <= 65535 and integral:
        scale = 1.0
    else:
        scale = 60000.0 / vmax if vmax > 0 else 1.0
    data = np.clip(np.rint(volume.astype(np.float64) * scale), 0, 65535).astype(np.uint16)
    return data, background * scale, scale


def _deconvolve_pycudadecon(volume, psf, voxel, iterations, background) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pycudadecon

    dz, _, dx = voxel
    data, bg, scale = _to_uint16(volume, background)
    # pad (reflect) to 5-smooth sizes so that cudaDecon does not crop, then cut back to the input shape
    pads = _padding(data.shape, psf.shape)
    padded = np.ascontiguousarray(np.pad(data, pads, mode="reflect"))
    # a uint16 PSF is never mistaken for an OTF (a float32 one with a zero [:, 1] slice would be)
    psf16 = np.rint(psf / psf.max() * 60000.0).astype(np.uint16)
    # cudaDecon radially averages about the peak: give it a square, centred XY field
    side = max(psf16.shape[1:])
    psf16 = np.pad(psf16, [(0, 0)] + [((side - n) // 2, (side - n) // 2) for n in psf16.shape[1:]])
    result = pycudadecon.decon(
        padded, psf16, dzpsf=dz, dxpsf=dx, dzdata=dz, dxdata=dx, background=float(bg), n_iters=int(iterations)
    )
    result = np.asarray(result)
    if result.shape != padded.shape:
        raise LlsmflowError(f"pycudadecon returned shape {result.shape}; expected {padded.shape}")
    inner = tuple(slice(b, b + n) for (b, _), n in zip(pads, volume.shape, strict=True))
    return np.ascontiguousarray(result[inner] / scale, dtype=np.float32)
