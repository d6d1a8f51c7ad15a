"""PSF preparation (measured bead → centred, resampled, normalised kernel) and the data background.

A PSF comes in one of two geometries (``prepare_psf(geometry=...)``, config ``deconvolution.psf_geometry``):

- **objective**: planes stepped along the detection objective's axis (Janelia "Z galvo & piezo" scans,
  the synthetic PSFs): the bead is used as is.
- **skewed**: planes acquired like the data, by stage scan (Zeiss LLS7 PSFs, stage-scanned Janelia beads):
  the bead stack is deskewed with the same angle and scan axis (:func:`deskew_psf`, its own z step being the
  stage step) and cropped to the largest box around the bead that holds data only, then prepared as usual.

For data rotated to the coverslip frame (``deskew.rotate``) the kernel is prepared in the objective frame on
an isotropic grid and then rotated like the data (:func:`rotate_psf`), so that PSF and volume share one frame.
"""

from __future__ import annotations

import numpy as np

from llsmflow.decon.volumes import _check_volume
from llsmflow.deskew.frames import frame_rotation_matrix, shear_px_per_plane
from llsmflow.deskew.shear import deskew, deskewed_valid_mask
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
# PSF geometries (config deconvolution.psf_geometry); 'auto' resolves to one of the other two.
PSF_GEOMETRIES = ("auto", "skewed", "objective")
# 'auto': a PSF z step within this relative tolerance of the data's stage step counts as that stage step.
_SAME_STEP_RTOL = 1e-3
# A deskewed PSF is cropped to a box at least this many voxels long along z and the scan axis.
_MIN_CROP = 3


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
    from scipy import ndimage  # imported on use: 0.1-0.4 s per process, skipped when the kernel is cached

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


def resolve_psf_geometry(
    geometry: str = "auto",
    psf_voxel_um=None,
    angle_deg: float | None = None,
    stage_step_um: float | None = None,
    psf: np.ndarray | None = None,
    scan_axis: str = "x",
) -> tuple[str, str]:
    """Decide whether a PSF is ``'skewed'`` (deskew it first) or ``'objective'`` (use it as is), and why.

    ``'skewed'`` and ``'objective'`` are returned as given. ``'auto'`` is ``'objective'`` unless the data are
    stage-scanned (``angle_deg`` and ``stage_step_um`` given); then:

    - with the bead stack (``psf``): from how the bead moves between planes. In a stage scan a bead moves
      ``−s`` pixels per plane along the scan axis (``s`` from :func:`llsmflow.deskew.shear_px_per_plane` with
      the PSF's z step, the data's angle and the scan axis's pixel size: what deskewing undoes); in an
      objective scan it stays put. The measured drift (slope of the bead's per-plane centroid along the scan
      axis, over the planes holding at least 20 % of the peak) decides whichever it is closer to. This finds a
      stage-scanned PSF taken with any z step, and an objective-scanned one taken with the data's step.
    - without it, or when fewer than 3 planes hold the bead: skewed when the PSF's z step equals the data's
      stage step (relative tolerance 1e-3): a bead stack taken with the data's own stage step is a stage scan,
      while objective scans are stepped finer (e.g. 0.1 µm against a 0.3–0.5 µm stage step).

    Returns
    -------
    (geometry, reason) : (str, str)
        ``'skewed'`` or ``'objective'``, and one sentence saying why (for the deconvolution record).
    """
    if geometry not in PSF_GEOMETRIES:
        raise LlsmflowError(
            f"PSF geometry {geometry!r} is not understood; expected one of {', '.join(PSF_GEOMETRIES)}"
        )
    if geometry == "skewed":
        if angle_deg is None:
            raise LlsmflowError(
                "PSF geometry 'skewed' needs the data's sheet angle to deskew the PSF; expected an angle "
                "(angle_deg)"
            )
        return "skewed", "declared skewed (psf_geometry: skewed)"
    if geometry == "objective":
        return "objective", "declared in the objective frame (psf_geometry: objective)"
    if angle_deg is None or stage_step_um is None:
        return "objective", "data not stage-scanned (no angle / stage step given): PSF used as is"
    psf_voxel = require_positive_voxel_size(psf_voxel_um, what="PSF voxel size")
    psf_dz = float(psf_voxel[0])
    drift = None if psf is None else _bead_drift_px(psf, scan_axis)
    if drift is not None:
        scan_pixel = psf_voxel[2] if scan_axis == "x" else psf_voxel[1]
        expected = -shear_px_per_plane(psf_dz, scan_pixel, angle_deg)
        how = (
            f"the bead moves {drift:+.2f} px per plane along {scan_axis} (a stage scan at the PSF's z step "
            f"{psf_dz:g} µm and {float(angle_deg):g}° would move it {expected:+.2f}, an objective scan 0)"
        )
        return ("skewed" if abs(drift - expected) < abs(drift) else "objective"), how
    step = float(stage_step_um)
    if abs(psf_dz - step) <= _SAME_STEP_RTOL * step:
        return "skewed", f"PSF z step {psf_dz:g} µm equals the data's stage step {step:g} µm: a stage scan"
    return "objective", f"PSF z step {psf_dz:g} µm differs from the data's stage step {step:g} µm"


def _bead_drift_px(psf: np.ndarray, scan_axis: str) -> float | None:
    """Slope (pixels per plane) of the bead's centroid along the scan axis over the planes that hold it.

    Background (border median) removed and clamped, each plane smoothed by a 1-pixel Gaussian; planes whose
    maximum is at least 20 % of the stack's; in each, the centroid of the part above half the plane's maximum.
    None when fewer than 3 planes qualify (or the stack has no signal).
    """
    arr = _check_volume(psf, "PSF").astype(np.float64)
    if arr.ndim != 3 or min(arr.shape) < 2:
        return None
    arr = np.clip(arr - float(np.median(_border_voxels(arr))), 0.0, None)
    # in-plane only: smoothing across planes would mix the bead's positions in neighbouring planes
    from scipy import ndimage  # imported on use: 0.1-0.4 s per process, skipped when the kernel is cached

    smooth = ndimage.gaussian_filter(arr, (0.0, 1.0, 1.0), mode="nearest")
    peaks = smooth.max(axis=(1, 2))
    if not peaks.max() > 0:
        return None
    lit = np.flatnonzero(peaks >= 0.2 * peaks.max())
    if lit.size < 3:
        return None
    centroids = []
    for k in lit:
        plane = smooth[k]
        profile = np.where(plane >= 0.5 * plane.max(), plane, 0.0).sum(axis=0 if scan_axis == "x" else 1)
        centroids.append(float((np.arange(profile.size) * profile).sum() / profile.sum()))
    return float(np.polyfit(lit.astype(float), centroids, 1)[0])


def deskew_psf(
    psf: np.ndarray, psf_voxel_um, angle_deg: float, scan_axis: str = "x"
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Deskew a PSF acquired by stage scan and crop it to the bead: an objective-frame bead stack.

    The stack is deskewed (:func:`llsmflow.deskew.deskew`) with its own z step as the stage step, the data's
    sheet angle and scan axis; the empty wedges get the median of the raw stack's border (its background).
    The bead is the maximum of the deskewed stack smoothed by a 1-voxel Gaussian, among voxels holding
    data. The crop is the box centred on the bead, all of whose voxels hold data (one voxel in from the
    wedges), with the largest (z extent)² × (scan extent) in µm: the axial extent weighs twice because a
    light-sheet PSF is about three times longer along z than across (on a parallelogram ``n`` pixels wide
    this spends two thirds of the width on z); the other axis is kept whole.

    Parameters
    ----------
    psf : ndarray
        Raw ZYX bead stack (any real dtype), as acquired.
    psf_voxel_um : tuple of 3 floats
        ``(dz, dy, dx)`` µm of the raw stack; ``dz`` is the stage step of the PSF acquisition.
    angle_deg : float
        Sheet angle of the data (degrees).
    scan_axis : {'x', 'y'}
        Stage scan axis of the data (Zeiss LLS7: y).

    Returns
    -------
    (ndarray, tuple)
        float32 objective-frame bead stack, and its voxel size ``(dz·|sin θ|, dy, dx)`` µm.
    """
    arr = _check_volume(psf, "PSF").astype(np.float32)
    dz, dy, dx = require_positive_voxel_size(psf_voxel_um, what="PSF voxel size")
    background = float(np.median(_border_voxels(arr)))
    result = deskew(arr, dz, dx, angle_deg, dy_um=dy, scan_axis=scan_axis, fill_value=background)
    valid = deskewed_valid_mask(arr.shape, dz, dx, angle_deg, scan_axis=scan_axis, margin_px=1, dy_um=dy)
    scan = 2 if scan_axis == "x" else 1
    valid_2d = valid[:, 0, :] if scan == 2 else valid[:, :, 0]  # (z, scan axis); the same for every row
    from scipy import ndimage  # imported on use: 0.1-0.4 s per process, skipped when the kernel is cached

    smooth = ndimage.gaussian_filter(result.data, 1.0, mode="nearest")
    smooth[~valid] = -np.inf
    centre = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    zc, sc = int(centre[0]), int(centre[scan])
    voxel = result.voxel_size_um
    best = None
    for hz in range(0, min(zc, valid_2d.shape[0] - 1 - zc) + 1):
        columns = valid_2d[zc - hz : zc + hz + 1].all(axis=0)
        if not columns[sc]:
            break
        hs = 0
        while (
            sc - hs - 1 >= 0 and sc + hs + 1 < columns.size and columns[sc - hs - 1] and columns[sc + hs + 1]
        ):
            hs += 1
        # axial extent counts twice: a light-sheet PSF is ~3x longer along z than across
        score = ((2 * hz + 1) * voxel[0]) ** 2 * (2 * hs + 1) * voxel[scan]
        if 2 * hz + 1 >= _MIN_CROP and 2 * hs + 1 >= _MIN_CROP and (best is None or score > best[0]):
            best = (score, hz, hs)
    if best is None:
        raise LlsmflowError(
            f"skewed PSF of shape {arr.shape} (ZYX) leaves no box of at least {_MIN_CROP} voxels around the "
            f"bead at {tuple(int(c) for c in centre)} after deskewing; expected a stage-scan bead stack with "
            "the bead inside the scanned volume (or psf_geometry: objective for an objective-scanned PSF)"
        )
    _, hz, hs = best
    box = [slice(zc - hz, zc + hz + 1), slice(None), slice(None)]
    box[scan] = slice(sc - hs, sc + hs + 1)
    return np.ascontiguousarray(result.data[tuple(box)]), tuple(float(v) for v in voxel)


def prepare_psf(
    psf: np.ndarray,
    psf_voxel_um,
    data_voxel_um,
    background: float | str = "auto",
    geometry: str = "auto",
    angle_deg: float | None = None,
    stage_step_um: float | None = None,
    scan_axis: str = "x",
) -> np.ndarray:
    """Turn a measured PSF into a deconvolution kernel sampled like the data.

    A skewed PSF (``geometry``, see :func:`resolve_psf_geometry`) is first deskewed and cropped to the bead
    (:func:`deskew_psf`); ``psf_voxel_um`` is then the deskewed voxel size. Steps: subtract a constant
    background and clamp at 0; zero the noise floor outside the bead's support (see ``_psf_support``:
    without this, clamped noise carries most of a real PSF's sum); locate the peak as
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
    geometry : {'auto', 'skewed', 'objective'}
        How the PSF was acquired; ``'auto'`` decides from how the bead moves between planes, else from the
        z step (:func:`resolve_psf_geometry`).
    angle_deg, stage_step_um, scan_axis :
        The data's sheet angle, stage step (µm) and scan axis: what a skewed PSF is deskewed with
        (``angle_deg`` and ``scan_axis``; the PSF's own z step is its stage step) and what ``'auto'`` checks
        the bead's drift against. None for data that are not stage-scanned.

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
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")
    used, _ = resolve_psf_geometry(geometry, psf_voxel, angle_deg, stage_step_um, arr, scan_axis)
    if used == "skewed":
        arr, psf_voxel = deskew_psf(arr, psf_voxel, angle_deg, scan_axis)
        arr = arr.astype(np.float64)

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

    from scipy import ndimage  # imported on use: 0.1-0.4 s per process, skipped when the kernel is cached

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


def rotate_psf(kernel: np.ndarray, voxel_um: float, angle_deg: float, scan_axis: str = "x") -> np.ndarray:
    """Rotate a prepared objective-frame kernel into the coverslip frame, as :func:`llsmflow.deskew.deskew_rotate`
    rotates the data (about Y for scan axis x, about X for scan axis y).

    Parameters
    ----------
    kernel : ndarray
        A kernel from :func:`prepare_psf` on an isotropic grid of ``voxel_um`` (odd sizes, peak on the
        central voxel ``shape // 2``).
    voxel_um : float
        Its voxel size (µm), also the output's: the rotated data's isotropic voxel size.
    angle_deg, scan_axis :
        The data's sheet angle (degrees) and stage scan axis.

    Returns
    -------
    ndarray
        float32, odd sizes, the input's central voxel on the output's central voxel, clamped at 0, cropped to
        its non-zero voxels, sum 1. Linear interpolation (``scipy.ndimage.affine_transform``, order 1), the
        interpolation the data get.
    """
    arr = _check_volume(kernel, "PSF").astype(np.float64)
    (voxel,) = require_positive_voxel_size((voxel_um,), what="PSF voxel size")
    rotation = frame_rotation_matrix(angle_deg, scan_axis)  # objective (z, y, x) µm -> coverslip µm
    centre_in = np.array(arr.shape) // 2
    # the rotated box around the centre: |R| · half-extent, in voxels (the grids have the same spacing)
    half_out = np.ceil(np.abs(rotation) @ centre_in.astype(float)).astype(int)
    # output index o -> coverslip offset (o − c_out)·v -> objective offset Rᵀ·(...) -> input index
    matrix = rotation.T
    offset = centre_in - matrix @ half_out
    from scipy import ndimage  # imported on use: 0.1-0.4 s per process, skipped when the kernel is cached

    out = ndimage.affine_transform(
        arr, matrix, offset=offset, output_shape=tuple(2 * half_out + 1), order=1, mode="constant", cval=0.0
    )
    out = _crop_centred(np.clip(out, 0.0, None))
    total = float(out.sum())
    if not total > 0:
        raise LlsmflowError("PSF is empty after rotation to the coverslip frame; expected a centred kernel")
    return (out / total).astype(np.float32)


def prepare_psf_for_run(
    psf: np.ndarray,
    psf_voxel_um,
    data_voxel_um,
    background: float | str = "auto",
    geometry: str = "auto",
    angle_deg: float | None = None,
    stage_step_um: float | None = None,
    scan_axis: str = "x",
    rotate: bool = False,
) -> tuple[np.ndarray, str, str]:
    """A channel's PSF as the workflow deconvolves with it: ``(kernel, geometry, reason)``.

    The one sequence that the ``prepare_psf`` step runs, that ingest checks against the volume's size before
    a job starts and that the resource model sizes jobs with: the PSF's ``geometry`` resolved
    (:func:`resolve_psf_geometry`, config ``deconvolution.psf_geometry``; a skewed bead stack is deskewed with
    the data's ``angle_deg``, ``stage_step_um`` and ``scan_axis``), :func:`prepare_psf` on the grid of the
    volumes deconvolved (``data_voxel_um``, ZYX µm: the deskewed grid, or with ``rotate`` the rotated
    volumes' isotropic grid), and with ``rotate`` (config ``deskew.rotate``) :func:`rotate_psf` to the
    coverslip frame, as the data are rotated. ``geometry`` and ``reason`` say which geometry was used and why.
    """
    if rotate and (angle_deg is None or len({float(v) for v in data_voxel_um}) != 1):
        raise LlsmflowError(
            f"rotate=True with data voxel {tuple(data_voxel_um)} µm and angle {angle_deg}; expected the rotated "
            "volumes' isotropic voxel (dx, dx, dx) and the sheet angle"
        )
    geometry, reason = resolve_psf_geometry(geometry, psf_voxel_um, angle_deg, stage_step_um, psf, scan_axis)
    kernel = prepare_psf(
        psf,
        psf_voxel_um,
        data_voxel_um,
        background=background,
        geometry=geometry,
        angle_deg=angle_deg,
        stage_step_um=stage_step_um,
        scan_axis=scan_axis,
    )
    if rotate:
        kernel = rotate_psf(kernel, float(data_voxel_um[0]), angle_deg, scan_axis)
    return kernel, geometry, reason


# Prepared kernels kept per process, keyed by the PSF's content and the arguments: a job that deconvolves many
# volumes with one PSF prepares it once (the support, centring and resampling take 10–200 ms per call).
_PREPARED: dict = {}
_PREPARED_CACHE_SIZE = 4


def _prepare_psf_cached(
    psf, psf_voxel_um, data_voxel_um, background: float | str = "auto", geometry: str = "auto"
) -> np.ndarray:
    """:func:`prepare_psf` (its ``geometry``, no acquisition arguments), remembered for the last few PSFs in
    memory and on disk (:mod:`llsmflow.decon.kernel_cache`); the kernel is read-only."""
    import hashlib

    from llsmflow.decon import kernel_cache

    array = np.ascontiguousarray(psf)
    digest = hashlib.blake2b(array.view(np.uint8).reshape(-1), digest_size=16).hexdigest()
    arguments = (
        tuple(map(float, psf_voxel_um)), tuple(map(float, data_voxel_um)), str(background), str(geometry),
    )  # fmt: skip
    key = (digest, array.shape, str(array.dtype), *arguments)
    kernel = _PREPARED.pop(key, None)
    if kernel is None:
        path = kernel_cache.kernel_path(array, arguments)
        kernel = kernel_cache.load_kernel(path)
        if kernel is None:
            kernel = prepare_psf(array, psf_voxel_um, data_voxel_um, background=background, geometry=geometry)
            kernel_cache.save_kernel(path, kernel)
        kernel.flags.writeable = False
        while len(_PREPARED) >= _PREPARED_CACHE_SIZE:
            _PREPARED.pop(next(iter(_PREPARED)))
    _PREPARED[key] = kernel
    return kernel
