"""Richardson–Lucy deconvolution of ZYX volumes with a measured PSF, on the CPU or a CUDA GPU.

What is here and why it is hand-written
---------------------------------------
* ``prepare_psf`` turns a measured bead PSF into the kernel the deconvolution needs: background removed,
  resampled to the data voxel size, peak on the central voxel of an odd-sized array, sum 1.
* ``richardson_lucy`` is the Richardson–Lucy iteration as the reference tool cudaDecon runs it (constant
  background subtracted and clamped at 0, the raw data as first estimate, optional Biggs–Andrews
  acceleration with λ clamped to [0, 1]; see ``field-notes.md``, "Richardson–Lucy as the reference tools do
  it"). It is written once over an *array module* ``xp``: the same code runs with NumPy (CI, any CPU) and
  with CuPy (any CUDA GPU), because NumPy and CuPy share the array and ``fft`` APIs used here. No existing
  package offers that: ``skimage.restoration.richardson_lucy`` is NumPy-only and recomputes direct/FFT
  convolutions of the kernel every iteration, and pycudadecon needs a shared library that pip cannot
  install (see the notes, "pycudadecon packaging").
* Differences from cudaDecon, on purpose: the volume is *padded* (reflect mode, then up to a 5-smooth FFT
  size from ``scipy.fft.next_fast_len``) instead of cropped, so output and input shapes match and borders do
  not ring; the OTF is the full 3-D real FFT of the prepared PSF (not a radially averaged one), computed once.
* ``available_backends`` / ``choose_backend`` / ``deconvolve`` pick pycudadecon where its library really
  loads and a GPU is present, else CuPy on a GPU, else NumPy.

Units: voxel sizes are ``(dz_um, dy_um, dx_um)`` in µm; intensities are in the input's units (camera counts).
"""

from __future__ import annotations

import ctypes
import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from llsmflow.errors import LlsmflowError, require_positive_voxel_size

BACKENDS = ("pycudadecon", "cupy", "cpu")
"""Backend names, in the order ``choose_backend("auto")`` prefers them."""

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
        ZYX shape of the padded volume the OTF will multiply the spectrum of.
    xp : module
        Array module for the result: ``numpy`` (default) or ``cupy``.

    Returns
    -------
    array
        complex64 array of shape ``(Z, Y, X // 2 + 1)`` on ``xp``'s device.
    """
    psf = _check_volume(psf_prepared, "prepared PSF")
    padded_shape = tuple(int(n) for n in padded_shape)
    if len(padded_shape) != 3 or min(padded_shape) < 1:
        raise LlsmflowError(f"padded shape {padded_shape} is invalid; expected three positive integers")
    kernel = np.zeros(padded_shape, dtype=np.float32)
    index = [(np.arange(n) - n // 2) % size for n, size in zip(psf.shape, padded_shape, strict=True)]
    np.add.at(kernel, np.ix_(*index), psf.astype(np.float32))
    if xp is np:
        return scipy.fft.rfftn(kernel, workers=-1).astype(np.complex64, copy=False)
    return xp.fft.rfftn(xp.asarray(kernel)).astype(xp.complex64, copy=False)


def _fft_pair(xp, shape, workers: int = -1):
    if xp is np:

        def forward(a):
            return scipy.fft.rfftn(a, workers=workers)

        def inverse(a):
            return scipy.fft.irfftn(a, s=shape, workers=workers)

    else:

        def forward(a):
            return xp.fft.rfftn(a)

        def inverse(a):
            return xp.fft.irfftn(a, s=shape)

    return forward, inverse


def _padding(shape, psf_shape) -> list[tuple[int, int]]:
    """Per-axis (before, after) padding: at least the PSF half-width, up to a 5-smooth FFT length."""
    pads = []
    for n, k in zip(shape, psf_shape, strict=True):
        margin = k // 2
        total = scipy.fft.next_fast_len(n + 2 * margin, real=True) - n
        before = total // 2
        pads.append((before, total - before))
    return pads


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    return array.get()


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
        ZYX volume, any real dtype.
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
        ``numpy`` (FFT by ``scipy.fft`` on all cores) or ``cupy`` (runs on the current CUDA device).
    progress : callable, optional
        Called as ``progress(iteration, iterations)`` after each iteration (1-based).
    threads : int, optional
        CPU threads for the FFTs (NumPy backend); default all cores.
    initial : {'data', 'flat'}
        First estimate: the background-subtracted data (cudaDecon), or a constant equal to its mean
        (``skimage.restoration.richardson_lucy`` uses a constant; after one iteration any constant gives the
        same estimate).

    Returns
    -------
    ndarray
        float32 NumPy array with the shape of ``volume``, >= 0, in the volume's intensity units (background
        removed; total intensity approximately preserved).

    Notes
    -----
    The volume is padded by at least half the PSF size on each side (``numpy.pad`` reflect mode, so that the
    cyclic FFT convolution sees a continuous extension rather than a step at the border) and up to lengths
    from ``scipy.fft.next_fast_len(..., real=True)``; the OTF is computed once. Each iteration is
    ``x <- x * H^T(d / max(H x, eps))`` with ``eps = 1e-6 * max(d)``. Device memory: about 8 float32 copies
    of the padded volume (about 12 with acceleration), plus the host's float32 padded copy.
    """
    if not isinstance(volume, np.ndarray) and hasattr(volume, "get"):
        volume = volume.get()  # a CuPy array: prepare on the host like any other input
    volume = _check_volume(volume)
    psf = _check_volume(psf_prepared, "prepared PSF")
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer) or iterations < 1:
        raise LlsmflowError(f"iterations {iterations!r} is invalid; expected an integer >= 1")
    if initial not in ("data", "flat"):
        raise LlsmflowError(f"initial estimate {initial!r} is not understood; expected 'data' or 'flat'")
    bg = resolve_background(volume, background)
    shape = tuple(volume.shape)

    # background, clamp and padding on the host (NumPy's reflect mode handles pads longer than the axis)
    host = volume.astype(np.float32)
    if bg:
        host -= np.float32(bg)
    np.maximum(host, 0, out=host)
    pads = _padding(shape, psf.shape)
    data = xp.asarray(np.pad(host, pads, mode="reflect"))
    del host
    padded_shape = tuple(data.shape)
    inner = tuple(slice(b, b + n) for (b, _), n in zip(pads, shape, strict=True))

    otf = psf_to_otf(psf, padded_shape, xp=xp)
    otf_conj = xp.conj(otf)
    forward, inverse = _fft_pair(xp, padded_shape, workers=threads or -1)
    dmax = float(data.max())
    eps = xp.float32(_RATIO_EPS * dmax if dmax > 0 else np.finfo(np.float32).tiny)

    def rl_step(estimate):
        blurred = inverse(forward(estimate) * otf)
        xp.maximum(blurred, eps, out=blurred)
        xp.divide(data, blurred, out=blurred)  # now the ratio d / Hx
        update = inverse(forward(blurred) * otf_conj)
        update *= estimate
        xp.maximum(update, 0, out=update)  # FFT round-off can dip slightly below 0
        return update

    if initial == "flat":
        estimate = xp.full(padded_shape, xp.float32(float(data.mean())), dtype=xp.float32)
    else:
        estimate = data.copy()
    previous = None
    g1 = g2 = None  # the last two RL steps (x_k - y_{k-1}), for Biggs–Andrews
    for k in range(1, int(iterations) + 1):
        if acceleration and g1 is not None and g2 is not None:
            denom = float(xp.sum(g2 * g2, dtype=xp.float64))
            lam = float(xp.sum(g1 * g2, dtype=xp.float64)) / denom if denom > 0 else 0.0
            lam = min(max(lam, 0.0), 1.0)
        else:
            lam = 0.0
        if lam > 0:
            predicted = estimate + xp.float32(lam) * (estimate - previous)
            xp.maximum(predicted, 0, out=predicted)
        else:
            predicted = estimate
        new = rl_step(predicted)
        if acceleration:
            g2 = g1
            g1 = new - predicted
            previous = estimate
        estimate = new
        if progress is not None:
            progress(k, int(iterations))

    return np.ascontiguousarray(_to_numpy(estimate[inner]), dtype=np.float32)


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
        Deconvolved ZYX volume, float32, same shape as the input.
    backend : str
        Backend that ran: ``'cpu'``, ``'cupy'`` or ``'pycudadecon'``.
    iterations : int
        Number of RL iterations.
    background : float
        Constant background subtracted from the data (input intensity units).
    seconds : float
        Wall time of the deconvolution itself (PSF preparation included), in s.
    """

    data: np.ndarray
    backend: str
    iterations: int
    background: float
    seconds: float


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


def deconvolve(
    volume,
    psf,
    data_voxel_um,
    psf_voxel_um,
    iterations: int = 10,
    background: float | str = "auto",
    psf_background: float | str = "auto",
    backend: str = "auto",
    method: str = "rl",
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> DeconResult:
    """Deconvolve a ZYX volume with a measured PSF on the best available backend.

    Parameters
    ----------
    volume : ndarray
        ZYX volume (e.g. deskewed), any real dtype.
    psf : ndarray
        Measured ZYX bead PSF (raw; it is prepared with :func:`prepare_psf`).
    data_voxel_um, psf_voxel_um : tuple of 3 floats
        ``(dz, dy, dx)`` in µm of the volume and of the PSF.
    iterations : int
        Richardson–Lucy iterations (default 10, as pycudadecon).
    background : float or 'auto'
        Data background, see :func:`resolve_background`.
    psf_background : float or 'auto'
        PSF background, see :func:`prepare_psf`.
    threads : int, optional
        CPU threads for the FFTs of the NumPy backend (default: all cores).
    backend : {'auto', 'pycudadecon', 'cupy', 'cpu'}
        See :func:`choose_backend`. With ``'auto'``, pycudadecon is skipped when ``dy != dx`` (it assumes
        square pixels).
    method : {'rl'}
        ``'rl'``: Richardson–Lucy. (``'wb'``, Wiener–Butterworth, is not implemented yet.)
    progress : callable, optional
        ``progress(iteration, iterations)``; not called by the pycudadecon backend.

    Returns
    -------
    DeconResult
    """
    if method == "wb":
        raise LlsmflowError("method 'wb' (Wiener–Butterworth) is not implemented yet; expected 'rl'")
    if method != "rl":
        raise LlsmflowError(f"method {method!r} is not known; expected 'rl'")
    start = time.perf_counter()
    volume = _check_volume(volume)
    data_voxel = require_positive_voxel_size(data_voxel_um, what="data voxel size")
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer) or iterations < 1:
        raise LlsmflowError(f"iterations {iterations!r} is invalid; expected an integer >= 1")
    bg = resolve_background(volume, background)
    kernel = prepare_psf(psf, psf_voxel_um, data_voxel, background=psf_background)

    square = abs(data_voxel[1] - data_voxel[2]) <= 1e-3 * data_voxel[2]
    if backend == "auto" and not square:
        found = available_backends()
        name = next(n for n in BACKENDS if n != "pycudadecon" and found[n] == "available")
    else:
        name = choose_backend(backend)
    if name == "pycudadecon":
        if not square:
            raise LlsmflowError(
                f"data voxel size {data_voxel} µm has dy != dx; expected square pixels for pycudadecon "
                "(use backend 'cupy' or 'cpu')"
            )
        data = _deconvolve_pycudadecon(volume, kernel, data_voxel, iterations, bg)
    else:
        xp = np
        if name == "cupy":
            import cupy as xp
        data = richardson_lucy(
            volume, kernel, iterations=iterations, background=bg, xp=xp, progress=progress, threads=threads
        )
    return DeconResult(
        data=data,
        backend=name,
        iterations=int(iterations),
        background=bg,
        seconds=time.perf_counter() - start,
    )
