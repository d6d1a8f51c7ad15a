"""Kernels in frequency space: the OTF of a prepared PSF, cudaDecon's radial OTF, and the
Wiener–Butterworth back projector (Guo et al., Nat. Biotechnol. 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from llsmflow.decon.chunks import wb_kernel_shape
from llsmflow.decon.volumes import _check_volume
from llsmflow.errors import LlsmflowError

# Wiener–Butterworth defaults (Guo et al. 2020, BackProjector.m: alpha 0.001, beta from the forward
# projector's gain at the cutoff, Butterworth order 10, cutoff = _WB_CUTOFF_FWHM / PSF FWHM).
_WB_ALPHA = 1e-3
_WB_ORDER = 10
_WB_CUTOFF_FWHM = 1.0


def _fold_indices(psf_shape, grid_shape) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per axis: the distinct grid indices a centred kernel wraps onto, and each kernel index's slot in them."""
    targets, slots = [], []
    for k, n in zip(psf_shape, grid_shape, strict=True):
        wrapped = (np.arange(k) - k // 2) % n
        unique, slot = np.unique(wrapped, return_inverse=True)
        targets.append(unique)
        slots.append(slot)
    return targets, slots


def _folded(psf: np.ndarray, grid_shape, dtype) -> tuple[list[np.ndarray], np.ndarray]:
    """The centred ``psf`` folded (aliased) onto a cyclic grid: (per axis, the grid indices it covers; the
    folded values there, of ``dtype``)."""
    targets, slots = _fold_indices(psf.shape, grid_shape)
    small = np.zeros(tuple(t.size for t in targets), dtype=dtype)
    np.add.at(small, np.ix_(*slots), psf.astype(dtype))
    return targets, small


def _place_kernel(buffer, psf: np.ndarray, xp=np) -> None:
    """Zero ``buffer`` and put the centred ``psf`` in it with its central voxel at index 0 (cyclic wrap).

    A kernel longer than the buffer along an axis is folded (aliased) onto it, so that its sum is kept.
    """
    targets, small = _folded(psf, buffer.shape, buffer.dtype)
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
        import scipy.fft  # here, not at module level: 0.1–0.3 s per process, and the engine never needs it

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

    On a grid of ``n + 8`` voxels per axis (``n``: the PSF's size; ``BackProjector.m`` uses the PSF's own
    grid, which is too tight for a tightly cropped PSF: see :func:`~llsmflow.decon.chunks.wb_kernel_shape`),
    with the PSF's OTF ``H`` (1 at DC): ``B = conj(H) / (|H|² + α) · 1 / sqrt(1 + ee·w^order)``,
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
        float32, odd-sized (``n + 8``), centred on ``shape // 2``; sum ≈ ``1 / (1 + α)``.
    """
    psf = _check_volume(psf_prepared, "prepared PSF")
    _check_wb(alpha, beta, order)
    grid = wb_kernel_shape(psf.shape)
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
