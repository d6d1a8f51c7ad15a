"""Deconvolution of ZYX volumes with a measured PSF: Richardson–Lucy and Wiener–Butterworth, CPU or CUDA GPU.

What is here and why it is hand-written
---------------------------------------
* ``prepare_psf`` turns a measured bead PSF into the kernel the deconvolution needs: background removed,
  resampled to the data voxel size, peak on the central voxel of an odd-sized array, sum 1.
* ``richardson_lucy`` is the Richardson–Lucy iteration as the reference tool cudaDecon runs it (constant
  background subtracted and clamped at 0, the raw data as first estimate, optional Biggs–Andrews
  acceleration with λ clamped to [0, 1]; see ``field-notes.md``, "Richardson–Lucy as the reference tools do
  it"). ``wiener_butterworth`` is the same multiplicative iteration with the Wiener–Butterworth back
  projector of Guo et al. (Nat. Biotechnol. 2020): on bead-like data it reaches the quality of 10 RL
  iterations in 2–3 (measured in the tests and ``bench/bench_decon.py``). Both are written once over an
  *array module* ``xp``: the same code runs with NumPy (CI, any CPU) and with CuPy (any CUDA GPU). No
  existing package offers that: ``skimage.restoration.richardson_lucy`` is NumPy-only and recomputes both
  convolutions, kernel FFT included, every iteration (six full-size FFTs per iteration on one core, against
  four here), and pycudadecon needs a shared library that pip cannot install (see the notes, "pycudadecon
  packaging").
* The CPU engine is written for speed because deconvolution is the workflow's most expensive step:
  real-to-complex FFTs in float32/complex64; the OTF and the back projector computed once per padded
  shape; FFTW through pyFFTW when it is importable (planned transforms, ``FFTW_MEASURE``, multithreaded; a
  shape's plan is re-created from FFTW's in-process wisdom in well under a millisecond, and one workspace
  serves every chunk of a volume), ``scipy.fft`` otherwise (``USE_PYFFTW = False`` forces it); every
  buffer preallocated and every element-wise step done in place, slab by slab (cache-sized blocks along z)
  on all threads. The 1/N of the inverse FFT is folded into the OTFs, so no extra pass normalises.
* Volumes larger than a memory budget (``deconvolve(..., max_memory_gb=...)``) are deconvolved in
  overlapping chunks with a halo of real data around each (see ``plan_chunks``), read and written a few
  planes at a time (any array with slicing: zarr, h5py, memmap); away from the volume's border the result
  matches whole-volume deconvolution to a few 1e-4 of the maximum for RL (measured in the tests).
* ``radial_otf`` tabulates the radially averaged OTF the way cudaDecon writes it, to compare our PSF → OTF
  path with cudaDecon's.
* Differences from cudaDecon, on purpose: the volume is *padded* (reflect mode, then up to a fast FFT
  length) instead of cropped, so output and input shapes match and borders do not ring; the OTF is the full
  3-D real FFT of the prepared PSF (not a radially averaged one).
* ``available_backends`` / ``choose_backend`` / ``deconvolve`` pick pycudadecon where its library really
  loads and a GPU is present, else CuPy on a GPU, else NumPy.

Units: voxel sizes are ``(dz_um, dy_um, dx_um)`` in µm; intensities are in the input's units (camera counts);
memory in GB (10^9 bytes); spatial frequencies in cycles per voxel unless stated.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage

from llsmflow.errors import LlsmflowError, located, require_positive_voxel_size

log = logging.getLogger(__name__)


def _import_pyfftw():
    """Import pyFFTW (optional) with its OpenMP threads waiting passively.

    pyFFTW's wheels run FFTW's threads on a bundled libgomp, whose threads spin at every barrier by default.
    When another process takes a core, each barrier then waits for a descheduled thread: measured on a busy
    2-core machine, RL on 2 threads ran 3x slower than on 1 (7x for small blocks); with
    ``OMP_WAIT_POLICY=PASSIVE`` it ran as fast as on 1 thread. libgomp reads the variable once, when it is
    loaded, so it is set just around this import (unless the user set it) and removed again: other libraries
    and child processes never see it.
    """
    added = "OMP_WAIT_POLICY" not in os.environ
    if added:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import pyfftw as module
    except ImportError:  # pragma: no cover - the scipy.fft path is tested by setting USE_PYFFTW = False
        return None
    finally:
        if added:
            os.environ.pop("OMP_WAIT_POLICY", None)
    return module


pyfftw = _import_pyfftw()

BACKENDS = ("pycudadecon", "cupy", "cpu")
"""Backend names, in the order ``choose_backend("auto")`` prefers them."""

GPU_BACKENDS = ("pycudadecon", "cupy")
"""The backends that run on a GPU: a job with one of them requests a GPU and runs in the GPU image."""

METHODS = ("rl", "wb")
"""Deconvolution methods: Richardson–Lucy, Wiener–Butterworth."""

USE_PYFFTW: bool = pyfftw is not None
"""Use pyFFTW (FFTW) for the NumPy backend's FFTs; set to False to force ``scipy.fft``."""

FFTW_PLANNER_EFFORT = "FFTW_MEASURE"
"""FFTW planner flag for new shapes (``FFTW_ESTIMATE`` plans instantly but runs slower)."""

FFTW_PLANNING_TIMELIMIT_S: float | None = 30.0
"""Upper bound (s) on FFTW's planning of one transform; FFTW keeps the best plan found by then."""

FFTW_WISDOM_ENV = "LLSMFLOW_FFTW_WISDOM"
"""Environment variable naming a file where FFTW wisdom (the measured plans) is kept between processes:
read before the first plan, rewritten (atomically) after planning a new shape. Unset: plans live only as long
as the process. Worth setting when a workflow deconvolves many same-shaped volumes in separate processes on
the same kind of machine (``FFTW_MEASURE`` planning costs about 1 s per shape on one core, more with
threads)."""

DEFAULT_ITERATIONS = {"rl": 10, "wb": 3}
"""Default iteration counts: pycudadecon's 10 for RL; 3 for WB (dexp's default; the paper uses 1–3)."""

# PSF "signal" must rise this many robust standard deviations (of the border voxels) above the background.
_PSF_MIN_SNR = 8.0
# PSF support: smoothed signal this many robust sigmas above the border; side lobes holding at least this
# fraction of the main lobe's intensity are kept; then dilated by this many voxels.
_PSF_SUPPORT_SIGMAS = 3.0
_PSF_MIN_LOBE = 0.02
_PSF_SUPPORT_DILATE = 2
# Voxel sizes closer than this (relative) count as equal: no PSF resampling.
_SAME_VOXEL_RTOL = 1e-6
# Relative floor of the denominator in the RL ratio (times the largest data value).
_RATIO_EPS = 1e-6
# Element-wise steps run on blocks of about this many bytes per array (fits the L2 cache with 3 operands).
_SLAB_BYTES = 1 << 18
# Share of a memory budget left for allocator slack and the array library's own I/O buffers (see plan_chunks).
_BUDGET_RESERVE = 0.1
# Chunks are read and written in slabs of at most this many bytes (see _slabs).
_IO_SLAB_BYTES = 1 << 22
# Blocks with fewer voxels than this run on one thread.
_MIN_VOXELS_FOR_THREADS = 1 << 16
# Halo of a chunk, in units of the PSF half-size (at least 1): see plan_chunks.
_HALO_PSF_HALVES = 2
# Wiener–Butterworth defaults (Guo et al. 2020, BackProjector.m: alpha 0.001, beta from the forward
# projector's gain at the cutoff, Butterworth order 10, cutoff = _WB_CUTOFF_FWHM / PSF FWHM).
_WB_ALPHA = 1e-3
_WB_ORDER = 10
_WB_CUTOFF_FWHM = 1.0


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
        Not 3-D, non-finite values, bad voxel sizes or background, or no signal above background.

    Notes
    -----
    The resampling is ``scipy.ndimage.affine_transform`` with a diagonal matrix (order 1): the same linear
    interpolation as ``scipy.ndimage.zoom(order=1)``, but with the *exact* requested spacing and the output
    grid centred on the PSF's centre of mass; ``zoom`` rounds the output shape and so changes the spacing
    by up to a few per cent, which would change the PSF's physical width.
    """
    arr = _check_volume(psf, "PSF").astype(np.float64)
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


def _fold_indices(psf_shape, grid_shape) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per axis: the distinct grid indices a centred kernel wraps onto, and each kernel index's slot in them."""
    targets, slots = [], []
    for k, n in zip(psf_shape, grid_shape, strict=True):
        wrapped = (np.arange(k) - k // 2) % n
        unique, slot = np.unique(wrapped, return_inverse=True)
        targets.append(unique)
        slots.append(slot)
    return targets, slots


def _place_kernel(buffer, psf: np.ndarray, xp=np) -> None:
    """Zero ``buffer`` and put the centred ``psf`` in it with its central voxel at index 0 (cyclic wrap).

    A kernel longer than the buffer along an axis is folded (aliased) onto it, so that its sum is kept.
    """
    targets, slots = _fold_indices(psf.shape, buffer.shape)
    small = np.zeros(tuple(t.size for t in targets), dtype=buffer.dtype)
    np.add.at(small, np.ix_(*slots), psf.astype(buffer.dtype))
    buffer.fill(0)
    index = np.ix_(*targets) if xp is np else xp.ix_(*[xp.asarray(t) for t in targets])
    buffer[index] = xp.asarray(small)


def psf_to_otf(psf_prepared: np.ndarray, padded_shape: tuple[int, int, int], xp=np):
    """Return the real-FFT OTF of a prepared PSF for a volume padded to ``padded_shape``.

    The PSF is placed with its central voxel (``shape // 2``) at index ``(0, 0, 0)`` and the rest wrapped
    around (cyclic convolution); a PSF larger than ``padded_shape`` is folded (aliased) onto it so that its
    sum is kept.

    Parameters
    ----------
    psf_prepared : ndarray
        Output of :func:`prepare_psf` (odd-sized, centred, sum 1).
    padded_shape : tuple of 3 ints
        ZYX shape (voxels) of the padded volume the OTF will multiply the spectrum of.
    xp : module
        Array module for the result: ``numpy`` (default) or ``cupy``.

    Returns
    -------
    array
        complex64 array of shape ``(Z, Y, X // 2 + 1)`` on ``xp``'s device; ``otf[0, 0, 0]`` is the PSF's sum.
    """
    psf = _check_volume(psf_prepared, "prepared PSF")
    padded_shape = tuple(int(n) for n in padded_shape)
    if len(padded_shape) != 3 or min(padded_shape) < 1:
        raise LlsmflowError(f"padded shape {padded_shape} is invalid; expected three positive integers")
    kernel = np.empty(padded_shape, dtype=np.float32)
    _place_kernel(kernel, psf)
    if xp is np:
        return scipy.fft.rfftn(kernel, workers=-1).astype(np.complex64, copy=False)
    return xp.fft.rfftn(xp.asarray(kernel)).astype(xp.complex64, copy=False)


def radial_otf(psf_prepared: np.ndarray, grid_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Radially averaged OTF magnitude of a prepared PSF, tabulated like cudaDecon's radial OTF.

    The PSF is put on an FFT grid of ``(nz, nxy, nxy)`` voxels with its central voxel at the origin (wrapped,
    see :func:`psf_to_otf`), transformed with a full complex 3-D FFT, and for every axial frequency the
    complex OTF is averaged over rings of lateral frequency ``kr = sqrt(ky² + kx²)`` (in FFT bins), each
    sample shared between the two nearest integer radii with linear weights; the result is the magnitude of
    that average, normalised to 1 at DC. cudaDecon (``radialft``) averages the complex OTF over rings the
    same way and writes ``nxy // 2 + 1`` radial × ``nz`` axial complex values.

    Parameters
    ----------
    psf_prepared : ndarray
        Output of :func:`prepare_psf` (odd-sized, centred, sum 1), sampled at the voxel size of interest.
    grid_shape : (int, int), optional
        ``(nz, nxy)``: FFT grid in voxels. Default: the PSF's z length and its larger lateral length. With
        voxel sizes ``(dz, dx)`` µm the frequency steps are ``1 / (nz·dz)`` and ``1 / (nxy·dx)`` cycles/µm.

    Returns
    -------
    ndarray
        float64, shape ``(nz, nxy // 2 + 1)``: ``[kz, kr]`` with ``kz`` in FFT order (0, 1, …, −1) and
        ``kr = 0 … nxy // 2`` bins; value 1 at ``[0, 0]``.

    Raises
    ------
    LlsmflowError
        A PSF that is not 3-D, a bad grid, or a PSF with zero sum.
    """
    psf = _check_volume(psf_prepared, "prepared PSF")
    if grid_shape is None:
        grid_shape = (psf.shape[0], max(psf.shape[1:]))
    try:
        nz, nxy = (int(n) for n in grid_shape)
    except (TypeError, ValueError):
        raise LlsmflowError(f"OTF grid {grid_shape!r} is invalid; expected (nz, nxy) integers") from None
    if nz < 1 or nxy < 2:
        raise LlsmflowError(f"OTF grid {(nz, nxy)} is invalid; expected nz >= 1 and nxy >= 2")
    kernel = np.empty((nz, nxy, nxy), dtype=np.float32)
    _place_kernel(kernel, psf)
    otf = np.fft.fftn(kernel.astype(np.float64))
    n_r = nxy // 2 + 1
    k = np.fft.fftfreq(nxy) * nxy  # bins
    radius = np.hypot(k[:, None], k[None, :])
    lower = np.floor(radius).astype(int)
    frac = radius - lower
    inside = lower < n_r
    upper_ok = inside & (lower + 1 < n_r)
    weights = np.zeros(n_r)
    np.add.at(weights, lower[inside], 1 - frac[inside])
    np.add.at(weights, lower[upper_ok] + 1, frac[upper_ok])
    rings = np.zeros((nz, n_r), dtype=np.complex128)
    for iz in range(nz):
        plane = otf[iz]
        np.add.at(rings[iz], lower[inside], plane[inside] * (1 - frac[inside]))
        np.add.at(rings[iz], lower[upper_ok] + 1, plane[upper_ok] * frac[upper_ok])
    magnitude = np.abs(rings / np.where(weights > 0, weights, 1.0))
    if not magnitude[0, 0] > 0:
        raise LlsmflowError("PSF has zero sum; expected a prepared PSF (sum 1)")
    return magnitude / magnitude[0, 0]


def _fwhm_voxels(profile: np.ndarray) -> float:
    """FWHM (voxels) of a 1-D peak at its maximum, by linear interpolation; the profile length if not closed."""
    p = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(p))
    half = p[i] / 2
    if p.size < 3 or not half > 0:
        return float(p.size)
    left = i
    while left > 0 and p[left - 1] > half:
        left -= 1
    right = i
    while right < p.size - 1 and p[right + 1] > half:
        right += 1
    if left == 0 or right == p.size - 1:
        return float(p.size)
    x_left = left - (p[left] - half) / (p[left] - p[left - 1])
    x_right = right + (p[right] - half) / (p[right] - p[right + 1])
    return float(x_right - x_left)


def _wb_parameters(psf: np.ndarray, otf_host_planes: Callable[[int, int], np.ndarray], shape, alpha, beta):
    """Cutoffs (cycles/voxel, per axis) and the Butterworth ``ee`` of the WB back projector (Guo et al.).

    ``otf_host_planes(axis, index)`` returns ``|OTF|`` (DC = 1) on the plane ``index`` normal to ``axis``.
    """
    centre = tuple(n // 2 for n in psf.shape)
    profiles = (psf[:, centre[1], centre[2]], psf[centre[0], :, centre[2]], psf[centre[0], centre[1], :])
    # resolution = PSF FWHM (BackProjector.m resFlag 1), at least 1 voxel; cutoff frequency = 1 / resolution
    cutoffs = tuple(min(_WB_CUTOFF_FWHM / max(_fwhm_voxels(p), 1.0), 0.5) for p in profiles)
    half = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    index = tuple(min(round(c * n), h) for c, n, h in zip(cutoffs, shape, half, strict=True))
    # gain of the forward projector at the cutoff, per axis: max of |OTF| on the cutoff plane
    gains = [float(otf_host_planes(axis, index[axis]).max()) for axis in range(3)]
    if beta is None:
        beta = float(np.mean(gains))
    beta = min(max(beta, 1e-6), 1.0)
    # gain of the Wiener filter at the x cutoff (in the kz = 0 plane), as BackProjector.m measures it
    line = otf_host_planes(2, index[2])[0]
    wiener_gain = float((line / (line**2 + alpha)).max())
    ee = max(wiener_gain / beta**2 - 1.0, 0.0)
    return cutoffs, ee, beta


def wb_back_projector(
    psf_prepared: np.ndarray,
    alpha: float = _WB_ALPHA,
    beta: float | None = None,
    order: int = _WB_ORDER,
) -> np.ndarray:
    """Wiener–Butterworth back projector of a prepared PSF, as a spatial kernel (Guo et al. 2020).

    On a grid of ``2·n − 1`` voxels per axis (``n``: the PSF's size; ``BackProjector.m`` uses the PSF's own
    grid), with the PSF's OTF ``H`` (1 at DC): ``B = conj(H) / (|H|² + α) · 1 / sqrt(1 + ee·w^order)``,
    ``w = Σ_i (k_i / kc_i)²``. The cutoffs ``kc_i = 1 / FWHM_i`` (cycles per voxel; FWHM of the PSF through
    its centre, at least 1 voxel; at most Nyquist); ``ee = g_W / β² − 1`` with ``g_W`` the Wiener filter's
    gain at the x cutoff in the kz = 0 plane, as in ``BackProjector.m``. Then ``B`` is transformed back and
    centred.

    Parameters
    ----------
    psf_prepared : ndarray
        Output of :func:`prepare_psf` (odd-sized, centred, sum 1).
    alpha : float
        Wiener parameter (relative to ``|H|² <= 1``), > 0.
    beta : float, optional
        Gain of the back projector at the cutoff, in (0, 1]; ``None``: the PSF's own gain there (``|H|`` on
        the cutoff planes, averaged over the axes).
    order : int
        Butterworth order, >= 1.

    Returns
    -------
    ndarray
        float32, odd-sized (``2·n − 1``), centred on ``shape // 2``; sum ≈ ``1 / (1 + α)``.
    """
    psf = _check_volume(psf_prepared, "prepared PSF")
    _check_wb(alpha, beta, order)
    grid = tuple(2 * n - 1 for n in psf.shape)
    kernel = np.empty(grid, dtype=np.float64)
    _place_kernel(kernel, psf)
    otf = np.fft.rfftn(kernel)
    magnitude = np.abs(otf)

    def plane(axis, index):
        return np.take(magnitude, index, axis=axis)

    cutoffs, ee, _ = _wb_parameters(psf, plane, grid, alpha, beta)
    w = (
        (np.fft.fftfreq(grid[0]) / cutoffs[0])[:, None, None] ** 2
        + (np.fft.fftfreq(grid[1]) / cutoffs[1])[None, :, None] ** 2
        + (np.fft.rfftfreq(grid[2]) / cutoffs[2])[None, None, :] ** 2
    )
    window = 1.0 / np.sqrt(1.0 + ee * w**order)
    back = np.conj(otf) / (magnitude**2 + alpha) * window
    return np.fft.fftshift(np.fft.irfftn(back, s=grid, axes=(0, 1, 2))).astype(np.float32)


# ------------------------------------------------------------------------------------- padding and FFT sizes


def _odd_factors(m: int) -> int | None:
    """Number of prime factors 3, 5, 7 of ``m`` (with multiplicity); None if ``m`` has a factor above 7."""
    while m % 2 == 0:
        m //= 2
    count = 0
    for p in (3, 5, 7):
        while m % p == 0:
            m //= p
            count += 1
    return count if m == 1 else None


@functools.lru_cache(maxsize=4096)
def _fast_length(n: int) -> int:
    """FFT length >= n with prime factors 2, 3, 5, 7 only, cheapest by a simple cost model.

    Radix-2 passes are the cheapest in FFTW and pocketfft alike, so a length is charged 10 % more per odd
    prime factor: ``cost = m · (1 + 0.1 · #odd factors)``, and the cheapest length up to ``2n`` wins (ties:
    the shorter). Measured with FFTW (float32, one core) for 84 x L x L real transforms: L = 270 (2·3³·5)
    took 24.7 ms, L = 280 (2³·5·7) 22.8 ms and L = 288 (2⁵·3²) 22.6 ms, though they hold 7 % and 14 % more
    voxels; the model picks 280 for a 266-voxel axis, where the smallest 5-smooth length is 270.
    """
    n = max(int(n), 1)
    best, best_cost = None, math.inf
    for m in range(n, 2 * n + 1):
        odd = _odd_factors(m)
        if odd is None:
            continue
        cost = m * (1 + 0.1 * odd)
        if cost < best_cost:
            best, best_cost = m, cost
        if m > best_cost:  # any longer length costs more than the best so far
            break
    return best


def padded_shape(shape, psf_shape) -> tuple[int, int, int]:
    """Padded FFT shape of a block: at least the PSF half-size on each side, then a fast FFT length."""
    return tuple(_fast_length(n + 2 * (k // 2)) for n, k in zip(shape, psf_shape, strict=True))


def _padding(shape, psf_shape) -> list[tuple[int, int]]:
    """Per-axis (before, after) padding: at least the PSF half-width, up to a fast FFT length (`_fast_length`)."""
    return _centred_pads(shape, padded_shape(shape, psf_shape))


def _centred_pads(shape, padded_shape) -> list[tuple[int, int]]:
    pads = []
    for n, m in zip(shape, padded_shape, strict=True):
        before = (m - n) // 2
        pads.append((before, m - n - before))
    return pads


def _reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Indices into an axis of length ``n`` for positions ``index`` (any integers), mirrored like numpy.pad
    ``'reflect'`` (edge not repeated), periodically for positions farther than one length away."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    j = np.mod(index, period)
    return np.where(j >= n, period - j, j)


def _reflect_fill(arr, inner: tuple[slice, ...], xp=np) -> None:
    """Fill ``arr`` outside the box ``inner`` with the reflection (numpy.pad 'reflect') of the box, in place."""
    for axis in range(arr.ndim):
        start, stop = inner[axis].start, inner[axis].stop
        n, size = stop - start, arr.shape[axis]
        # axes before this one are already padded (take them whole); axes after it are not yet
        sel = [slice(None) if ax < axis else inner[ax] for ax in range(arr.ndim)]
        for lo, hi in ((0, start), (stop, size)):
            if hi <= lo:
                continue
            src_index = _reflect_index(np.arange(lo - start, hi - start), n) + start
            dst, src = list(sel), list(sel)
            dst[axis] = slice(lo, hi)
            src[axis] = src_index if xp is np else xp.asarray(src_index)
            arr[tuple(dst)] = arr[tuple(src)]


# ------------------------------------------------------------------------------------------------- engine


def _resolve_threads(threads) -> int:
    if threads is None:
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return max(os.cpu_count() or 1, 1)
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise LlsmflowError(f"threads {threads!r} is invalid; expected an integer >= 1 or None (all cores)")
    return int(threads)


def _is_numpy(xp) -> bool:
    return xp is np


class _Runner:
    """Run an in-place element-wise function block by block: slabs of planes along axis 0, small enough to
    stay in cache across the steps of the function, split over ``threads`` threads (NumPy releases the GIL
    in its loops). With CuPy the function runs once on the whole arrays."""

    def __init__(self, xp, shape, threads: int):
        self.xp = xp
        self.pool = None
        plane_bytes = 4 * math.prod(shape[1:])
        step = max(1, _SLAB_BYTES // max(plane_bytes, 1))
        slabs = [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)]
        parts = min(threads, len(slabs)) if _is_numpy(xp) else 1
        bounds = np.linspace(0, len(slabs), parts + 1).round().astype(int)
        self.parts = [slabs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        if len(self.parts) > 1:
            self.pool = ThreadPoolExecutor(max_workers=len(self.parts), thread_name_prefix="llsmflow-decon")

    @staticmethod
    def _run_part(fn, arrays, slabs) -> list:
        return [fn(*(a[s] for a in arrays)) for s in slabs]

    def __call__(self, fn, *arrays) -> list:
        """``fn(*blocks)`` for matching blocks of ``arrays`` (same length along axis 0); the list of results."""
        if not _is_numpy(self.xp):
            return [fn(*arrays)]
        if self.pool is None:
            return self._run_part(fn, arrays, self.parts[0])
        futures = [self.pool.submit(self._run_part, fn, arrays, part) for part in self.parts]
        return [result for future in futures for result in future.result()]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


_wisdom_read_from: str | None = None
_PLANNED: set[tuple] = set()  # (shape, threads, planner effort) planned in this process


def _wisdom_file() -> Path | None:
    value = os.environ.get(FFTW_WISDOM_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _load_wisdom() -> None:
    """Import FFTW wisdom from the file named by ``LLSMFLOW_FFTW_WISDOM`` (once per file and process)."""
    global _wisdom_read_from
    path = _wisdom_file()
    if path is None or _wisdom_read_from == str(path):
        return
    _wisdom_read_from = str(path)
    try:
        parts = tuple(path.read_bytes().split(b"\0"))
    except OSError:
        return  # no file yet (or unreadable): plan from scratch
    if len(parts) == 3:
        pyfftw.import_wisdom(parts)


def _save_wisdom() -> None:
    """Write all FFTW wisdom of this process to the ``LLSMFLOW_FFTW_WISDOM`` file, atomically; failures
    (read-only file system, ...) only cost the next process a new planning."""
    path = _wisdom_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(b"\0".join(pyfftw.export_wisdom()))
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("could not save FFTW wisdom to %s: %s", path, exc)


class _Workspace:
    """Preallocated buffers and FFTs for one padded shape: ``n_real`` float32 arrays and one complex64
    half-spectrum ``spec``. Transforms are unnormalised both ways (the OTFs carry the 1/N).

    With pyFFTW, all buffers are SIMD-aligned and the two plans (real → ``spec``, ``spec`` → real) are made
    once, before any data is written (``FFTW_MEASURE`` overwrites its arrays while planning), then pointed
    at whichever buffer a step needs (``update_arrays``). With ``scipy.fft`` or CuPy each transform returns a
    new array (pocketfft and cuFFT cannot write into a given output)."""

    def __init__(self, shape, xp, threads: int, n_real: int):
        self.shape = tuple(int(n) for n in shape)
        self.spec_shape = (*self.shape[:-1], self.shape[-1] // 2 + 1)
        self.xp = xp
        self.threads = threads
        self.fftw = _is_numpy(xp) and USE_PYFFTW and pyfftw is not None
        empty = pyfftw.empty_aligned if self.fftw else xp.empty
        self.reals = [empty(self.shape, dtype=np.float32) for _ in range(n_real)]
        self.spec = empty(self.spec_shape, dtype=np.complex64)
        if self.fftw:
            _load_wisdom()
            start = time.perf_counter()
            # FFTW_ESTIMATE cannot judge threading: its threaded plans can be pathological (measured: 40 FFTs of
            # 56x75x75 took 2.6 s on 2 threads, 0.09 s on 1, with 17,000 context switches per FFT); measured
            # plans (FFTW_MEASURE and up) only use the threads where they pay
            fft_threads = 1 if FFTW_PLANNER_EFFORT == "FFTW_ESTIMATE" else threads
            key = (self.shape, fft_threads, FFTW_PLANNER_EFFORT)
            common = {
                "axes": (0, 1, 2),
                "threads": fft_threads,
                "planning_timelimit": FFTW_PLANNING_TIMELIMIT_S,
            }
            if key in _PLANNED:  # planned before in this process: FFTW has the plans in memory
                self._plan(common)
                return
            _PLANNED.add(key)
            try:  # plans another process measured and saved in the wisdom file: no measuring at all
                self._plan(common, "FFTW_WISDOM_ONLY")
                log.info(
                    "FFTW plans for %s on %d threads taken from wisdom %s", self.shape, key[1], _wisdom_file()
                )
            except RuntimeError:
                # no wisdom for this problem: measure, and keep the plans for the next process
                self._plan(common)
                seconds = time.perf_counter() - start
                log.info(
                    "FFTW planned %s with %s on %d threads in %.2f s", self.shape, key[2], key[1], seconds
                )
                _save_wisdom()

    def _plan(self, common: dict, *extra_flags: str) -> None:
        self._forward = pyfftw.FFTW(
            self.reals[0],
            self.spec,
            direction="FFTW_FORWARD",
            flags=(FFTW_PLANNER_EFFORT, *extra_flags),
            **common,
        )
        self._inverse = pyfftw.FFTW(
            self.spec,
            self.reals[0],
            direction="FFTW_BACKWARD",
            flags=(FFTW_PLANNER_EFFORT, "FFTW_DESTROY_INPUT", *extra_flags),
            **common,
        )

    def forward(self, real):
        """Half-spectrum of ``real`` (unchanged): the workspace's ``spec`` with pyFFTW, else a new array."""
        if self.fftw:
            self._forward.update_arrays(real, self.spec)
            self._forward.execute()
            return self.spec
        if _is_numpy(self.xp):
            return scipy.fft.rfftn(real, workers=self.threads)
        return self.xp.fft.rfftn(real)

    def inverse(self, spec, out):
        """Unnormalised inverse of ``spec`` (destroyed): written into ``out`` with pyFFTW, else a new array."""
        if self.fftw:
            self._inverse.update_arrays(spec, out)
            self._inverse.execute()
            return out
        if _is_numpy(self.xp):
            return scipy.fft.irfftn(
                spec, s=self.shape, norm="forward", workers=self.threads, overwrite_x=True
            )
        return self.xp.fft.irfftn(spec, s=self.shape, norm="forward")


def _working_set(padded_shape, acceleration: bool, fftw: bool) -> int:
    """Working set (bytes) of the engine on one padded block.

    float32 arrays: the data, the estimate and one work array, plus the predicted estimate and the last two
    steps with Biggs–Andrews acceleration; complex64 half-spectra (4 bytes per padded voxel each): the
    spectrum, the OTF and the back projector; without pyFFTW each transform also returns a new array (one
    real, one complex more). Plus staging for reading and writing the block: two slabs (``_IO_SLAB_BYTES``),
    or one float32 copy of the block if that is smaller.
    """
    voxels = math.prod(padded_shape)
    n_real = 5 if acceleration else 3
    n_complex = 3
    if not fftw:
        n_real += 1
        n_complex += 1
    staging = min(4 * voxels, 2 * _IO_SLAB_BYTES)
    return 4 * voxels * (n_real + n_complex) + staging


class _Engine:
    """Deconvolve blocks of one padded shape: workspace, OTF and back projector made once, reused per block."""

    def __init__(
        self,
        psf: np.ndarray,
        padded_shape,
        xp,
        threads: int,
        method: str = "rl",
        acceleration: bool = False,
        wb_alpha: float = _WB_ALPHA,
        wb_beta: float | None = None,
        wb_order: int = _WB_ORDER,
    ):
        self.xp = xp
        self.method = method
        self.acceleration = bool(acceleration)
        if math.prod(padded_shape) < _MIN_VOXELS_FOR_THREADS:
            threads = 1  # thread start-up and barriers cost more than they save on tiny blocks
        self.ws = _Workspace(padded_shape, xp, threads, 5 if acceleration else 3)
        self.run_blocks = _Runner(xp, self.ws.shape, threads)
        scale = np.float32(1.0 / math.prod(self.ws.shape))
        buffer = self.ws.reals[0]
        _place_kernel(buffer, psf, xp)
        spec = self.ws.forward(buffer)
        self.otf = xp.empty(self.ws.spec_shape, dtype=xp.complex64)
        self.otf_bp = xp.empty(self.ws.spec_shape, dtype=xp.complex64)

        def scaled(otf, s):
            xp.multiply(s, scale, out=otf)

        self.run_blocks(scaled, self.otf, spec)
        if method == "rl":

            def adjoint(bp, otf):
                xp.conjugate(otf, out=bp)

            self.run_blocks(adjoint, self.otf_bp, self.otf)
        else:
            # the WB back projector is a spatial kernel (like the PSF), so that every FFT window, whole volume
            # or chunk, applies the same filter
            _place_kernel(buffer, wb_back_projector(psf, wb_alpha, wb_beta, wb_order), xp)
            spec = self.ws.forward(buffer)
            self.run_blocks(scaled, self.otf_bp, spec)

    def close(self) -> None:
        self.run_blocks.close()

    # --------------------------------------------------------------------------------------------- blocks

    def load(self, volume, region, background: float, offset, check: bool = False) -> None:
        """Read ``volume[region]`` (a few planes at a time) into the data buffer at ``offset`` (ZYX voxels),
        background subtracted and clamped at 0, and fill the rest of the buffer with its reflection (numpy.pad
        'reflect'). ``check``: raise on NaN or infinite values."""
        xp = self.xp
        data = self.ws.reals[0]
        inner = tuple(slice(o, o + r.stop - r.start) for o, r in zip(offset, region, strict=True))
        for a, b in _slabs(region, np.dtype(volume.dtype).itemsize):
            view = data[_sub_z(inner, a, b)]
            view[...] = xp.asarray(_read_block(volume, _sub_z(region, a, b), check))
            if background:
                view -= xp.float32(background)
            xp.maximum(view, 0, out=view)
        _reflect_fill(data, inner, xp)

    def data_max(self) -> float:
        return float(self.ws.reals[0].max())

    def iterate(self, iterations: int, eps: float, initial: str = "data", progress=None):
        """Run the iterations on the loaded block; return the padded estimate (a workspace buffer)."""
        xp, ws, run = self.xp, self.ws, self.run_blocks
        data = ws.reals[0]
        eps = xp.float32(eps)
        otf, otf_bp = self.otf, self.otf_bp

        def multiply(spec, h):
            xp.multiply(spec, h, out=spec)

        def ratio(t, d):  # t <- d / max(t, eps)
            xp.maximum(t, eps, out=t)
            xp.divide(d, t, out=t)

        def correction(y, t):  # H^T (d / H y), into t where the FFT library allows
            spec = ws.forward(y)
            run(multiply, spec, otf)
            t = ws.inverse(spec, t)
            run(ratio, t, data)
            spec = ws.forward(t)
            run(multiply, spec, otf_bp)
            return ws.inverse(spec, t)

        def times_clamped(t, y):  # t <- max(t * y, 0); FFT round-off (or the WB filter) can dip below 0
            xp.multiply(t, y, out=t)
            xp.maximum(t, 0, out=t)

        x = ws.reals[1]
        if initial == "flat":
            x.fill(float(data.mean(dtype=xp.float64)))
        else:
            x[...] = data
        if not self.acceleration:
            t = ws.reals[2]
            for k in range(1, iterations + 1):
                t = correction(x, t)
                run(times_clamped, x, t)
                if progress is not None:
                    progress(k)
            return x

        # Biggs–Andrews: y_k = max(x_k + λ_k (x_k − x_{k−1}), 0); x_{k+1} = ψ(y_k); g_k = x_{k+1} − y_k;
        # λ_{k+1} = Σ g_k g_{k−1} / Σ g_{k−1}², clamped to [0, 1]. Buffers rotate: x, d = x_k − x_{k−1},
        # g = g_{k−1}, f free (5 arrays with the data).
        def predict(y, x_, d_):
            xp.multiply(d_, xp.float32(lam), out=y)
            y += x_
            xp.maximum(y, 0, out=y)

        def subtract(out, a, b):
            xp.subtract(a, b, out=out)

        def dots(a, b):
            return float(xp.vdot(a.ravel(), b.ravel())), float(xp.vdot(b.ravel(), b.ravel()))

        d, g, f = ws.reals[2], ws.reals[3], ws.reals[4]
        lam, have_g = 0.0, False
        for k in range(1, iterations + 1):
            if lam > 0:
                run(predict, f, x, d)
                y = f
            else:
                y = x
            t = correction(y, d)
            run(times_clamped, t, y)  # t = x_{k+1}
            run(subtract, f, t, y)  # f = g_k (y may be f itself: element-wise in place is fine)
            if have_g:
                sums = run(dots, f, g)
                num, den = sum(s[0] for s in sums), sum(s[1] for s in sums)
                lam = min(max(num / den, 0.0), 1.0) if den > 0 else 0.0
            have_g = True
            run(subtract, x, t, x)  # x buffer <- x_{k+1} − x_k
            x, d, g, f = t, x, f, g
            if progress is not None:
                progress(k)
        return x


# ------------------------------------------------------------------------------------------------ chunking


@dataclass(frozen=True)
class ChunkPlan:
    """How :func:`deconvolve` splits a volume to fit a memory budget.

    Attributes
    ----------
    shape : tuple of 3 ints
        ZYX shape of the volume (voxels).
    core : tuple of 3 ints
        Size of each chunk's core (the part of the output it writes) along z, y, x (voxels).
    halo : tuple of 3 ints
        Least context on each side of a core along z, y, x (voxels; 0 where the axis is not split): real data
        where the volume has it, its reflection beyond the volume's border.
    padded_shape : tuple of 3 ints
        FFT window of every chunk (voxels), the same for all chunks.
    count : int
        Number of chunks.
    bytes : int
        Estimated working set of one chunk (bytes), see :func:`estimate_memory`.
    """

    shape: tuple[int, int, int]
    core: tuple[int, int, int]
    halo: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    count: int
    bytes: int

    def boxes(self) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
        """Yield ``(window_start, region, core)`` for each chunk.

        ``window_start``: ZYX index (may be negative) of the first voxel of the chunk's FFT window of
        ``padded_shape`` voxels, centred on the core; ``region``: the part of the window inside the volume
        (the block to read, real data all the way to the window's edge where the volume has it; the rest
        of the window is filled by reflection at the volume's border); ``core``: where the chunk's output
        goes in the volume.
        """
        ranges = []
        for n, c, p in zip(self.shape, self.core, self.padded_shape, strict=True):
            axis = []
            for start in range(0, n, c):
                stop = min(start + c, n)
                if c >= n:  # axis not split: the whole axis, centred in its padding
                    lo = -((p - n) // 2)
                else:
                    lo = start - (p - (stop - start)) // 2
                axis.append((lo, slice(max(lo, 0), min(lo + p, n)), slice(start, stop)))
            ranges.append(axis)
        for bz in ranges[0]:
            for by in ranges[1]:
                for bx in ranges[2]:
                    yield tuple(zip(bz, by, bx, strict=True))


def reach_shape(psf_shape, method: str) -> tuple[int, ...]:
    """Support (voxels) of the widest kernel an iteration applies: the PSF for RL, the back projector
    (``2·n − 1``, see :func:`wb_back_projector`) for WB. Padding and halos are sized on it."""
    if method == "wb":
        return tuple(2 * int(k) - 1 for k in psf_shape)
    return tuple(int(k) for k in psf_shape)


def estimate_memory(shape, psf_shape, acceleration: bool = False, method: str = "rl") -> int:
    """Estimated working set (bytes) of deconvolving a block of ``shape`` voxels with a ``psf_shape`` kernel.

    Six float32 copies of the padded block for RL or WB (data, estimate, one work array, and three complex64
    half-spectra: spectrum, OTF, back projector), 8 with acceleration, one real and one complex more without
    pyFFTW; plus staging for reading and writing the block (at most 32 MB; one copy of a smaller block). Input
    and output arrays held by the caller, and the buffers of the library they live in (e.g. zarr's decoded
    chunks), are not included: :func:`plan_chunks` leaves 10 % of the budget for those.

    Parameters
    ----------
    shape, psf_shape : tuple of 3 ints
        ZYX sizes (voxels) of the block and of the prepared PSF.
    acceleration : bool
        Biggs–Andrews acceleration (two more arrays).
    method : {'rl', 'wb'}
        WB pads by the back projector's half-size (about twice the PSF's), so its blocks are larger.

    Returns
    -------
    int
        Bytes.
    """
    padded = padded_shape(shape, reach_shape(psf_shape, method))
    fftw = USE_PYFFTW and pyfftw is not None
    return _working_set(padded, acceleration, fftw)


def _candidate_sizes(n: int) -> list[int]:
    """Core sizes that split ``n`` into equal-ish parts: ceil(n / m) for m = 1 .. n, without repeats."""
    return sorted({-(-n // m) for m in range(1, n + 1)}, reverse=True)


def plan_chunks(
    shape,
    psf_shape,
    max_memory_gb: float | None = None,
    acceleration: bool = False,
    halo=None,
    method: str = "rl",
) -> ChunkPlan:
    """Split a volume into overlapping chunks (along z, y and x as needed) whose working set fits a budget.

    Each chunk is deconvolved in an FFT window of one common shape centred on its core: real data fill the
    window wherever the volume has data (so the context around a core is at least the halo, usually more),
    the reflection of the volume fills it beyond the volume's border exactly as for whole-volume
    deconvolution, and only the core is kept. The halo defaults to twice the PSF half-size (at least the
    half-size): each RL iteration carries information about one PSF size further, with quickly decaying
    weight (measured: 10 RL iterations, real LLSM PSF, chunked vs whole differ by ~1e-4 of the maximum with
    this halo, ~2e-3 with one half-size). Among the splits whose working set (:func:`estimate_memory`) fits
    in 90 % of the budget (the rest is left for allocator slack and the I/O buffers of the array library the
    volume lives in), the one with the least padded volume in total (least FFT work) is chosen. For a
    deskewed LLSM stack (few planes, long y and x axes) that often splits y and x rather than z, because a
    z split needs a halo on a short axis.

    Parameters
    ----------
    shape : tuple of 3 ints
        ZYX shape of the volume (voxels).
    psf_shape : tuple of 3 ints
        Shape of the prepared PSF (voxels).
    max_memory_gb : float, optional
        Budget for the working set in GB (10^9 bytes); ``None``: no limit, one chunk (the whole volume).
    acceleration : bool
        Biggs–Andrews acceleration (a larger working set).
    halo : tuple of 3 ints, optional
        Halo (voxels) along z, y, x when that axis is split; default ``_HALO_PSF_HALVES`` half-sizes of the
        widest kernel (the PSF for RL, the back projector, about twice as wide, for WB).
    method : {'rl', 'wb'}
        Deconvolution method (sets the kernel the padding and halo are sized on).

    Returns
    -------
    ChunkPlan

    Raises
    ------
    LlsmflowError
        A non-positive budget, a bad halo, or a budget too small for even the smallest chunk.
    """
    shape = tuple(int(n) for n in shape)
    psf_shape = reach_shape(psf_shape, method)
    halves = tuple(k // 2 for k in psf_shape)
    if halo is None:
        halo = tuple(max(_HALO_PSF_HALVES * h, h) for h in halves)
    else:
        halo = tuple(int(h) for h in halo)
        if len(halo) != 3 or min(halo) < 0:
            raise LlsmflowError(
                f"halo {halo} is invalid; expected three integers >= 0 (voxels along z, y, x)"
            )
    fftw = USE_PYFFTW and pyfftw is not None

    whole = padded_shape(shape, psf_shape)

    def layout(core):
        halo_used = tuple(h if c < n else 0 for c, n, h in zip(core, shape, halo, strict=True))
        # a split axis: window = core + context on both sides (the context covers the kernel half-size)
        padded = tuple(
            _fast_length(c + 2 * h) if h else w for c, h, w in zip(core, halo_used, whole, strict=True)
        )
        count = math.prod(-(-n // c) for n, c in zip(shape, core, strict=True))
        return halo_used, padded, count, _working_set(padded, acceleration, fftw)

    if max_memory_gb is None:
        halo_used, padded, count, nbytes = layout(shape)
        return ChunkPlan(shape, shape, halo_used, padded, count, nbytes)
    try:
        budget = float(max_memory_gb) * 1e9 * (1 - _BUDGET_RESERVE)
    except (TypeError, ValueError):
        raise LlsmflowError(f"max_memory_gb {max_memory_gb!r} is not a number; expected GB > 0") from None
    if not (budget > 0 and math.isfinite(budget)):
        raise LlsmflowError(f"max_memory_gb {max_memory_gb!r} is invalid; expected a finite number of GB > 0")

    best = None
    xs = _candidate_sizes(shape[2])  # descending: the working set shrinks along the list
    for cz in _candidate_sizes(shape[0]):
        for cy in _candidate_sizes(shape[1]):
            # the longest x core that fits, by bisection
            lo, hi = 0, len(xs)
            while lo < hi:
                mid = (lo + hi) // 2
                if layout((cz, cy, xs[mid]))[3] <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            if lo == len(xs):
                continue
            core = (cz, cy, xs[lo])
            halo_used, padded, count, nbytes = layout(core)
            cost = (count * math.prod(padded), count)  # FFT work, then fewer chunks
            if best is None or cost < best[0]:
                best = (cost, core, halo_used, padded, count, nbytes)
    if best is None:
        _, padded, _, nbytes = layout((1, 1, 1))
        raise LlsmflowError(
            f"max_memory_gb {max_memory_gb} is too small for a {shape} volume with a {psf_shape} kernel; expected "
            f"at least {nbytes / 1e9:.3g} GB (a one-voxel chunk with its halo, padded to {padded})"
        )
    _, core, halo_used, padded, count, nbytes = best
    return ChunkPlan(shape, core, halo_used, padded, count, nbytes)


# ----------------------------------------------------------------------------------------------- iterations


def _check_iterations(iterations) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer) or iterations < 1:
        raise LlsmflowError(f"iterations {iterations!r} is invalid; expected an integer >= 1")
    return int(iterations)


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
        block = (
            block.get() if hasattr(block, "get") and not hasattr(block, "__array__") else np.asarray(block)
        )
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


def _run_plan(
    volume,
    psf: np.ndarray,
    plan: ChunkPlan,
    background: float,
    iterations: int,
    *,
    xp=np,
    threads=None,
    method: str = "rl",
    acceleration: bool = False,
    initial: str = "data",
    progress: Callable[[int, int], None] | None = None,
    out=None,
    wb=None,
    checked: bool = True,
    client=None,
):
    """Deconvolve ``volume`` chunk by chunk following ``plan``; write into ``out`` (default: a new array).

    ``checked``: the caller has already verified that every value is finite (``_check_volume``); otherwise
    each block is checked as it is read. ``client``: a ``distributed.Client`` whose workers deconvolve the
    chunks (:func:`_run_plan_on`) when there is more than one.
    """
    threads = _resolve_threads(threads)
    total = iterations * plan.count
    if plan.count > 1:
        # the RL floor eps = 1e-6 * max(data - background) must be the whole volume's, as without chunks
        if checked:
            vmax = float(volume.max())
        else:  # one streaming pass, which also checks the values before any output is written
            vmax = -math.inf
            itemsize = np.dtype(volume.dtype).itemsize
            for _, _, core in plan.boxes():
                for a, b in _slabs(core, itemsize):
                    vmax = max(vmax, float(_read_block(volume, _sub_z(core, a, b)).max()))
            checked = True
        dmax = max(vmax - background, 0.0)
    if out is None:
        out = np.empty(plan.shape, dtype=np.float32)
    if client is not None and plan.count > 1:
        eps = _RATIO_EPS * dmax if dmax > 0 else float(np.finfo(np.float32).tiny)
        engine_args = (psf, plan.padded_shape, xp.__name__, None, method, acceleration, wb)
        run = (background, iterations, eps, initial)
        return _run_plan_on(client, volume, plan, engine_args, run, out, checked, progress)
    engine = _Engine(psf, plan.padded_shape, xp, threads, method, acceleration, **(wb or {}))
    try:
        for index, (window_start, region, core) in enumerate(plan.boxes()):
            offset = tuple(r.start - w for r, w in zip(region, window_start, strict=True))
            engine.load(volume, region, background, offset, check=not checked)
            if plan.count == 1:
                dmax = engine.data_max()
            eps = _RATIO_EPS * dmax if dmax > 0 else float(np.finfo(np.float32).tiny)

            def step(k, index=index):
                if progress is not None:
                    progress(index * iterations + k, total)

            estimate = engine.iterate(iterations, eps, initial, step)
            within = tuple(slice(c.start - w, c.stop - w) for c, w in zip(core, window_start, strict=True))
            for a, b in _slabs(core, 4):
                out[_sub_z(core, a, b)] = _to_host(estimate[_sub_z(within, a, b)])
    finally:
        engine.close()
    return out


def _deconvolve_chunk(block, offset, within, engine_args, run) -> np.ndarray:
    """On a dask worker: deconvolve one chunk's ``block`` (placed at ``offset`` in its FFT window) and return
    the core ``within`` the window, as a NumPy array. The worker's cores are its threads (``threads=None``)."""
    import importlib

    psf, padded_shape, xp_name, threads, method, acceleration, wb = engine_args
    background, iterations, eps, initial = run
    xp = importlib.import_module(xp_name)
    engine = _Engine(psf, padded_shape, xp, _resolve_threads(threads), method, acceleration, **(wb or {}))
    try:
        region = tuple(slice(0, n) for n in block.shape)
        engine.load(block, region, background, offset)
        estimate = engine.iterate(iterations, eps, initial)
        return np.array(_to_host(estimate[within]), dtype=np.float32, copy=True)
    finally:
        engine.close()


def _run_plan_on(client, volume, plan: ChunkPlan, engine_args, run, out, checked: bool, progress):
    """:func:`_run_plan` on a distributed client: this process reads each chunk's block and writes its core;
    the workers deconvolve, at most two chunks per worker thread in flight (bounded memory here)."""
    from distributed import as_completed

    from llsmflow.parallel import client_threads

    iterations = run[1]
    boxes = iter(enumerate(plan.boxes()))
    remote_args = client.scatter(engine_args, broadcast=True, hash=False)
    cores = {}

    def submit():
        item = next(boxes, None)
        if item is None:
            return None
        index, (window_start, region, core) = item
        block = _read_block(volume, region, check=not checked)
        offset = tuple(r.start - w for r, w in zip(region, window_start, strict=True))
        within = tuple(slice(c.start - w, c.stop - w) for c, w in zip(core, window_start, strict=True))
        future = client.submit(_deconvolve_chunk, block, offset, within, remote_args, run, pure=False)
        cores[future.key] = core
        return future

    first = [f for f in (submit() for _ in range(2 * client_threads(client))) if f is not None]
    in_flight = {f.key: f for f in first}
    done = 0
    pending = as_completed(first)
    try:
        for future in pending:
            in_flight.pop(future.key, None)
            out[cores.pop(future.key)] = future.result()
            done += 1
            if progress is not None:
                progress(done * iterations, plan.count * iterations)
            nxt = submit()
            if nxt is not None:
                in_flight[nxt.key] = nxt
                pending.add(nxt)
    except BaseException:
        # a failed chunk (e.g. out of GPU memory) must not leave its siblings holding the workers' memory
        # while deconvolve() retries in smaller chunks
        client.cancel(list(in_flight.values()))
        raise
    return out


def _prepare_run(volume, psf_prepared, iterations, background, initial):
    if not isinstance(volume, np.ndarray) and hasattr(volume, "get"):
        volume = volume.get()  # a CuPy array: prepare on the host like any other input
    volume = _check_volume(volume)
    psf = _check_volume(psf_prepared, "prepared PSF")
    iterations = _check_iterations(iterations)
    if initial not in ("data", "flat"):
        raise LlsmflowError(f"initial estimate {initial!r} is not understood; expected 'data' or 'flat'")
    bg = resolve_background(volume, background)
    return volume, psf, iterations, bg


def richardson_lucy(
    volume,
    psf_prepared,
    iterations: int = 10,
    background: float | str = "auto",
    acceleration: bool = False,
    xp=np,
    progress: Callable[[int, int], None] | None = None,
    *,
    initial: str = "data",
    threads: int | None = None,
) -> np.ndarray:
    """Deconvolve a ZYX volume by Richardson–Lucy iterations, in float32, with NumPy or CuPy.

    Parameters
    ----------
    volume : ndarray
        ZYX volume, any real dtype (NumPy or CuPy).
    psf_prepared : ndarray
        Kernel from :func:`prepare_psf`, sampled like ``volume``.
    iterations : int
        Number of RL iterations (cudaDecon/pycudadecon default: 10), >= 1.
    background : float or 'auto'
        Constant subtracted before deconvolution (then clamped at 0), in the volume's intensity units; see
        :func:`resolve_background` for ``'auto'``.
    acceleration : bool
        Biggs–Andrews vector extrapolation (as in cudaDecon), λ clamped to [0, 1]. Reaches a given sharpness
        in fewer iterations; it also amplifies noise sooner.
    xp : module
        ``numpy`` (FFTs by pyFFTW, or ``scipy.fft`` when ``USE_PYFFTW`` is False or pyFFTW is missing) or
        ``cupy`` (runs on the current CUDA device).
    progress : callable, optional
        Called as ``progress(iteration, iterations)`` after each iteration (1-based).
    initial : {'data', 'flat'}
        First estimate: the background-subtracted data (cudaDecon), or a constant equal to its mean
        (``skimage.restoration.richardson_lucy`` uses a constant; after one iteration any constant gives the
        same estimate).
    threads : int, optional
        CPU threads for the FFTs and element-wise steps (NumPy backend); default all available cores.

    Returns
    -------
    ndarray
        float32 NumPy array with the shape of ``volume``, >= 0, in the volume's intensity units (background
        removed; total intensity approximately preserved).

    Notes
    -----
    The volume is padded by at least half the PSF size on each side (``numpy.pad`` 'reflect' mode, so that the
    cyclic FFT convolution sees a continuous extension rather than a step at the border) and up to fast
    lengths; the OTF is computed once. Each iteration is ``x <- max(x * H^T(d / max(H x, eps)), 0)`` with
    ``eps = 1e-6 * max(d)``: four real FFTs. Memory: see :func:`estimate_memory` (about 7 float32 copies of
    the padded volume, 9 with acceleration, staging included), plus the input and the result.
    """
    volume, psf, iterations, bg = _prepare_run(volume, psf_prepared, iterations, background, initial)
    plan = plan_chunks(volume.shape, psf.shape, None, acceleration=acceleration)
    report = None if progress is None else (lambda k, _total: progress(k, iterations))
    return _run_plan(
        volume,
        psf,
        plan,
        bg,
        iterations,
        xp=xp,
        threads=threads,
        acceleration=acceleration,
        initial=initial,
        progress=report,
    )


def wiener_butterworth(
    volume,
    psf_prepared,
    iterations: int = 3,
    background: float | str = "auto",
    xp=np,
    progress: Callable[[int, int], None] | None = None,
    *,
    alpha: float = _WB_ALPHA,
    beta: float | None = None,
    order: int = _WB_ORDER,
    initial: str = "data",
    threads: int | None = None,
) -> np.ndarray:
    """Deconvolve a ZYX volume with the Wiener–Butterworth back projector (Guo et al., Nat. Biotechnol. 2020).

    The RL iteration ``x <- max(x * B(d / max(H x, eps)), 0)`` with the unmatched back projector
    ``B = conj(H) / (|H|² + α) · 1 / sqrt(1 + ee·w^order)``, ``w = Σ_i (k_i / kc_i)²`` (see
    :func:`wb_back_projector`): a Wiener filter times a Butterworth window whose cutoffs ``kc_i`` are
    1 / FWHM of the PSF along each axis and whose ``ee`` sets the back projector's gain at the cutoff to
    ``β``. Each iteration costs the same four FFTs as an RL iteration. Measured (``bench/bench_decon.py``):
    on beads, 2–3 WB iterations match the correlation with the truth of 10 RL iterations; on a dense,
    smooth texture WB levels off at about the quality of 8 RL iterations; more than 3 iterations amplify
    noise.

    Unlike RL, whose matched back projector keeps the total intensity, WB does not: starting from the data
    (cudaDecon's start, the default) isolated beads grow about 3x brighter in 3 iterations (in the tests),
    dense structure much less. Use RL where intensities are measured.

    Parameters
    ----------
    volume, psf_prepared, background, xp, progress, initial, threads
        As in :func:`richardson_lucy`.
    iterations : int
        Number of iterations (default 3), >= 1.
    alpha : float
        Wiener parameter (relative to ``|H|² <= 1``), > 0; larger is smoother. Default 0.001 (Guo et al.).
    beta : float, optional
        Gain of the back projector at the cutoff, in (0, 1]; default (``None``): the forward projector's own
        gain there, ``|H|`` on the cutoff planes averaged over the three axes (``BackProjector.m``, beta=1).
    order : int
        Butterworth order (steepness), >= 1; default 10.

    Returns
    -------
    ndarray
        float32 NumPy array with the shape of ``volume``, >= 0, in the volume's intensity units.
    """
    volume, psf, iterations, bg = _prepare_run(volume, psf_prepared, iterations, background, initial)
    wb = _check_wb(alpha, beta, order)
    plan = plan_chunks(volume.shape, psf.shape, None, method="wb")
    report = None if progress is None else (lambda k, _total: progress(k, iterations))
    return _run_plan(
        volume, psf, plan, bg, iterations, xp=xp, threads=threads, method="wb", initial=initial,
        progress=report, wb=wb,
    )  # fmt: skip


def _check_wb(alpha, beta, order) -> dict:
    if not (isinstance(alpha, int | float | np.floating) and math.isfinite(alpha) and alpha > 0):
        raise LlsmflowError(f"Wiener–Butterworth alpha {alpha!r} is invalid; expected a number > 0")
    if beta is not None and not (isinstance(beta, int | float | np.floating) and 0 < beta <= 1):
        raise LlsmflowError(f"Wiener–Butterworth beta {beta!r} is invalid; expected None or 0 < beta <= 1")
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise LlsmflowError(f"Wiener–Butterworth order {order!r} is invalid; expected an integer >= 1")
    return {
        "wb_alpha": float(alpha),
        "wb_beta": None if beta is None else float(beta),
        "wb_order": int(order),
    }


# --------------------------------------------------------------------------------------------- backends


def _cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 when no driver/GPU), without importing CuPy."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except Exception:
            return 0
    return 0


def _check_cupy() -> str:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return f"cupy cannot be imported ({type(exc).__name__}: {exc})"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return f"cupy finds no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return "cupy finds no CUDA device"
    try:
        probe = cupy.fft.rfftn(cupy.ones((2, 2, 2), dtype=cupy.float32))
        float(probe.real.sum())
    except Exception as exc:
        return f"cupy cannot run a CUDA FFT ({type(exc).__name__}: {exc})"
    return "available"


def _check_pycudadecon() -> str:
    # importing pycudadecon without libcudaDecon only warns; its calls then raise FileNotFoundError.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pycudadecon
    except Exception as exc:
        return f"pycudadecon cannot be imported ({type(exc).__name__}: {exc})"
    try:
        lib = pycudadecon.lib
        lib.lib  # noqa: B018 - the stub installed when the library is missing raises here
        lib.otf_lib  # noqa: B018
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"pycudadecon is installed but its shared library libcudaDecon does not load ({first})"
    if _cuda_device_count() < 1:
        return "pycudadecon loads but the CUDA driver reports no GPU"
    return "available"


@functools.lru_cache(maxsize=1)
def _detect_backends() -> tuple[tuple[str, str], ...]:
    return (("cpu", "available"), ("cupy", _check_cupy()), ("pycudadecon", _check_pycudadecon()))


def available_backends() -> dict[str, str]:
    """Report which deconvolution backends can run here (detected once per process, then cached).

    Returns
    -------
    dict
        ``{"cpu": ..., "cupy": ..., "pycudadecon": ...}``, each ``"available"`` or the reason it is not.
        ``cpu`` is always available; ``cupy`` needs CuPy and a CUDA device; ``pycudadecon`` needs its shared
        library (conda-forge ``cudadecon``) to load and a CUDA device.
    """
    return dict(_detect_backends())


def choose_backend(requested: str = "auto") -> str:
    """Resolve a backend request to a backend name that can run here.

    Parameters
    ----------
    requested : {'auto', 'pycudadecon', 'cupy', 'cpu'}
        ``'auto'`` picks the first available of pycudadecon, cupy, cpu.

    Returns
    -------
    str
        The backend name.

    Raises
    ------
    LlsmflowError
        Unknown name, or an explicitly requested backend that is not available (with the reason).
    """
    if requested not in ("auto", *BACKENDS):
        raise LlsmflowError(
            f"backend {requested!r} is not known; expected one of 'auto', {', '.join(BACKENDS)}"
        )
    found = available_backends()
    if requested == "auto":
        return next(name for name in BACKENDS if found[name] == "available")
    if found[requested] != "available":
        raise LlsmflowError(
            f"backend {requested!r} is not available here: {found[requested]}; expected 'auto' or "
            "'cpu', or a machine with a CUDA GPU and that backend installed"
        )
    return requested


@dataclass
class DeconResult:
    """Output of :func:`deconvolve`.

    Attributes
    ----------
    data : ndarray
        Deconvolved ZYX volume, float32, same shape as the input (the ``out`` array when one was given).
    backend : str
        Backend that ran: ``'cpu'``, ``'cupy'`` or ``'pycudadecon'``.
    iterations : int
        Number of iterations.
    background : float
        Constant background subtracted from the data (input intensity units).
    seconds : float
        Wall time of the deconvolution itself (PSF preparation included), in s.
    method : str
        ``'rl'`` or ``'wb'``.
    chunks : int
        Number of chunks the volume was deconvolved in (1: whole volume).
    fallbacks : list of str
        What happened before the run that produced ``data`` when a GPU backend ran out of memory (retries in
        more chunks, then the CPU), one sentence each; empty when the first attempt succeeded.
    """

    data: np.ndarray
    backend: str
    iterations: int
    background: float
    seconds: float
    method: str = "rl"
    chunks: int = 1
    fallbacks: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What ran, for metadata and provenance: backend, method, iterations, chunks, background, and (only
        when a GPU ran out of memory) ``fallbacks``, the retries that led to the result."""
        summary = {
            "backend": self.backend,
            "method": self.method,
            "iterations": self.iterations,
            "chunks": self.chunks,
            "background": self.background,
        }
        if self.fallbacks:
            summary["fallbacks"] = list(self.fallbacks)
        return summary


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


GPU_OOM_RETRIES = 3
"""How many times :func:`deconvolve` halves the memory budget and retries on a GPU that ran out of memory
before it falls back to the CPU."""


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says a device (or the host) ran out of memory.

    CuPy raises ``cupy.cuda.memory.OutOfMemoryError`` (a ``MemoryError``); cuFFT reports a failed plan
    allocation as ``CUFFT_ALLOC_FAILED``; cudaDecon's errors carry the CUDA error name or text.
    """
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    markers = ("out of memory", "outofmemory", "alloc_failed", "cudaerrormemoryallocation", "cuda_error_out")
    return any(marker in text for marker in markers)


def _deconvolve_on(name, volume, kernel, plan, bg, iterations, data_voxel, **kwargs):
    """Deconvolve ``volume`` following ``plan`` on backend ``name`` (``'cpu'``, ``'cupy'``, ``'pycudadecon'``)."""
    out = kwargs.pop("out")
    if name == "pycudadecon":
        if out is None:
            out = np.empty(volume.shape, dtype=np.float32)
        for _, region, core in plan.boxes():
            block = _read_block(volume, region)
            within = tuple(
                slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region, strict=True)
            )
            out[core] = _deconvolve_pycudadecon(block, kernel, data_voxel, iterations, bg)[within]
        return out
    xp = np
    if name == "cupy":
        import cupy as xp
    return _run_plan(volume, kernel, plan, bg, iterations, xp=xp, out=out, **kwargs)


def _free_gpu_memory(name: str) -> None:
    """Give CuPy's cached blocks back to the driver after an out-of-memory error, before a retry."""
    if name != "cupy":
        return
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
        cupy.fft.config.get_plan_cache().clear()
    except Exception:  # pragma: no cover - best effort: the retry reports its own error
        pass


def deconvolve(
    volume,
    psf,
    data_voxel_um,
    psf_voxel_um,
    iterations: int | None = None,
    background: float | str = "auto",
    psf_background: float | str = "auto",
    backend: str = "auto",
    method: str = "rl",
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    *,
    acceleration: bool = False,
    max_memory_gb: float | None = None,
    out=None,
    client=None,
    psf_path: str | Path | None = None,
) -> DeconResult:
    """Deconvolve a ZYX volume with a measured PSF on the best available backend.

    A GPU backend that runs out of memory is retried in smaller chunks (halving the budget up to
    ``GPU_OOM_RETRIES`` times), then on the CPU; ``DeconResult.fallbacks`` says what happened.

    Parameters
    ----------
    volume : array-like
        ZYX volume (e.g. deskewed), any real dtype: a NumPy array, or with ``max_memory_gb`` / ``out`` any
        array with ``shape``, ``dtype`` and slicing (``numpy.memmap``, zarr, h5py), read chunk by chunk.
    psf : ndarray
        Measured ZYX bead PSF (raw; it is prepared with :func:`prepare_psf`).
    data_voxel_um, psf_voxel_um : tuple of 3 floats
        ``(dz, dy, dx)`` in µm of the volume and of the PSF.
    iterations : int, optional
        Iterations; default 10 for RL (as pycudadecon), 3 for WB (see ``DEFAULT_ITERATIONS``).
    background : float or 'auto'
        Data background, see :func:`resolve_background` (resolved once, on the whole volume).
    psf_background : float or 'auto'
        PSF background, see :func:`prepare_psf`.
    backend : {'auto', 'pycudadecon', 'cupy', 'cpu'}
        See :func:`choose_backend`. With ``'auto'``, pycudadecon is skipped when ``dy != dx`` (it assumes
        square pixels) or for ``method='wb'`` (it has RL only).
    method : {'rl', 'wb'}
        ``'rl'``: Richardson–Lucy (:func:`richardson_lucy`); ``'wb'``: Wiener–Butterworth
        (:func:`wiener_butterworth`, default parameters).
    progress : callable, optional
        ``progress(step, steps)`` after each iteration, ``steps = iterations × chunks``; not called by the
        pycudadecon backend.
    threads : int, optional
        CPU threads for the FFTs and element-wise steps of the NumPy backend (default: all available cores).
    acceleration : bool
        Biggs–Andrews acceleration of RL (CPU/CuPy backends; cudaDecon applies its own). With chunks, λ is
        computed per chunk, so the result differs a little more from whole-volume deconvolution.
    max_memory_gb : float, optional
        Budget (GB, 10^9 bytes) for the deconvolution's working set: host memory for 'cpu', GPU memory for
        'cupy' and 'pycudadecon'. Volumes whose working set (:func:`estimate_memory`) exceeds it are
        deconvolved in overlapping chunks (:func:`plan_chunks`). ``None`` (default): the whole volume at once.
        The input and the output array are not counted: pass ``out`` (and a lazily read ``volume``) to keep
        them out of memory too.
    out : array-like, optional
        Where to write the result (shape of ``volume``; e.g. a zarr array or ``numpy.memmap``), chunk by chunk.
        Default: a new float32 NumPy array.
    client : distributed.Client, optional
        With a chunked plan and the 'cpu' or 'cupy' backend, the chunks are deconvolved on this client's
        workers (e.g. SLURM jobs from :func:`llsmflow.cluster.dask_cluster`); this process reads and writes.
    psf_path : str or Path, optional
        The file ``psf`` was read from, named in errors about the PSF.

    Returns
    -------
    DeconResult

    Raises
    ------
    LlsmflowError
        Bad volume, PSF, voxel sizes, iterations, method, backend, budget or ``out`` shape.
    """
    if method not in METHODS:
        raise LlsmflowError(
            f"method {method!r} is not known; expected one of {', '.join(map(repr, METHODS))}"
        )
    if backend not in ("auto", *BACKENDS):
        raise LlsmflowError(
            f"backend {backend!r} is not known; expected one of 'auto', {', '.join(BACKENDS)}"
        )
    iterations = _check_iterations(DEFAULT_ITERATIONS[method] if iterations is None else iterations)
    start = time.perf_counter()
    lazy = max_memory_gb is not None or out is not None
    volume = _volume_like(volume) if lazy else _check_volume(volume)
    if out is not None and tuple(out.shape) != tuple(volume.shape):
        raise LlsmflowError(f"out has shape {tuple(out.shape)}; expected the volume's shape {volume.shape}")
    data_voxel = require_positive_voxel_size(data_voxel_um, what="data voxel size")
    bg = resolve_background(volume, background)
    with located(psf_path):
        kernel = prepare_psf(psf, psf_voxel_um, data_voxel, background=psf_background)

    square = abs(data_voxel[1] - data_voxel[2]) <= 1e-3 * data_voxel[2]
    if backend == "auto" and (not square or method != "rl"):
        found = available_backends()
        name = next(n for n in BACKENDS if n != "pycudadecon" and found[n] == "available")
    else:
        name = choose_backend(backend)
    if name == "pycudadecon" and method != "rl":
        raise LlsmflowError(f"method {method!r} is not available with pycudadecon; expected method 'rl'")
    if name == "pycudadecon" and not square:
        raise LlsmflowError(
            f"data voxel size {data_voxel} µm has dy != dx; expected square pixels for pycudadecon "
            "(use backend 'cupy' or 'cpu')"
        )
    plan = plan_chunks(volume.shape, kernel.shape, max_memory_gb, acceleration=acceleration, method=method)
    options = dict(
        threads=threads,
        method=method,
        acceleration=acceleration,
        progress=progress,
        out=out,
        checked=not lazy,
        client=client,
    )
    fallbacks: list[str] = []
    for attempt in range(GPU_OOM_RETRIES + 2):
        if plan.count > 1:
            log.info(
                "deconvolving %s voxels in %d chunks: cores %s, halo %s, FFT window %s, ~%.2f GB each",
                volume.shape, plan.count, plan.core, plan.halo, plan.padded_shape, plan.bytes / 1e9,
            )  # fmt: skip
        try:
            out = _deconvolve_on(name, volume, kernel, plan, bg, iterations, data_voxel, **options)
            break
        except Exception as error:
            if name == "cpu" or not _is_out_of_memory(error):
                raise
            _free_gpu_memory(name)
            what = f"{name} ran out of GPU memory in {plan.count} chunk(s) of ~{plan.bytes / 1e9:.3g} GB"
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            log.warning("%s (%s: %s)", what, type(error).__name__, first_line)
            # halve the budget (from this plan's working set) and retry in more, smaller chunks
            smaller = None
            if attempt < GPU_OOM_RETRIES:
                budget_gb = plan.bytes / 1e9 / (1 - _BUDGET_RESERVE) / 2
                try:
                    smaller = plan_chunks(
                        volume.shape, kernel.shape, budget_gb, acceleration=acceleration, method=method
                    )
                except LlsmflowError:
                    smaller = None
            if smaller is not None and smaller.count > plan.count:
                fallbacks.append(f"{what}; retried in {smaller.count} chunks (budget {budget_gb:.3g} GB)")
                plan = smaller
                continue
            # the CPU with the caller's (host) budget: max_memory_gb was meant for the GPU's memory, but it
            # is the only budget the caller gave
            fallbacks.append(f"{what}; fell back to the CPU")
            name = "cpu"
            plan = plan_chunks(
                volume.shape, kernel.shape, max_memory_gb, acceleration=acceleration, method=method
            )
    else:  # pragma: no cover - the CPU attempt always ends the loop (result or exception)
        raise AssertionError("unreachable")
    return DeconResult(
        data=out,
        backend=name,
        iterations=iterations,
        background=bg,
        seconds=time.perf_counter() - start,
        method=method,
        chunks=plan.count,
        fallbacks=fallbacks,
    )
