"""Deskew and deskew + rotation written against an array module ``xp`` (NumPy or CuPy), so that a volume can
be deskewed on a GPU and stay there for deconvolution (``llsmflow.decon.pipeline.deskew_deconvolve``).

The CPU kernels (:mod:`llsmflow.deskew.shear`, :mod:`llsmflow.deskew.rotate`) are hand-written for CPU caches
and threads and are NumPy/SciPy only. Here:

* :func:`deskew_xp` computes exactly what :func:`llsmflow.deskew.deskew` computes — the same per-plane shift
  ``base + k·s``, the same rule for exact (copied) planes, the same three float32 operations
  ``p1 + f·(p0 − p1)`` in the same order, the same fill of the wedges — but as gathers over blocks of planes
  (a few whole-array operations per block instead of a thread per plane). With NumPy it equals the CPU
  deskew bit for bit (tested); with CuPy each operation is an IEEE float32 operation too.
* :func:`deskew_rotate_xp` is the general affine resampler of the array module
  (``scipy.ndimage.affine_transform`` / ``cupyx.scipy.ndimage.affine_transform``, order 1, mode
  ``'constant'``) with the transform of the CPU code (``frames._deskew_rotate_geometry``): what the CPU
  kernel's reference computes, so equal to :func:`llsmflow.deskew.deskew_rotate` within float32 round-off
  (tested). A general resampler is slow on a CPU (the reason for the CPU kernel) but takes milliseconds on
  a GPU (measured on an H200: 1.5 ms for a 201×1024×768 stack, issue 18).

Inputs may live on the host or on the device; outputs are float32 arrays of ``xp`` (on the device with CuPy).
"""

from __future__ import annotations

import math

import numpy as np

from llsmflow.deskew.frames import (
    checked_stage_scan,
    deskewed_plane_spacing_um,
    deskewed_shape,
    shear_px_per_plane,
)
from llsmflow.deskew.shear import _EXACT_SHIFT_PX
from llsmflow.errors import require_positive_voxel_size

# Planes per block of the gather: bounds the temporaries to a few float32 copies of this many output bytes.
_BLOCK_BYTES = 64 << 20


def _module_of(array):
    """The array module of ``array``: CuPy for a CuPy array, else NumPy."""
    if isinstance(array, np.ndarray) or not hasattr(array, "__cuda_array_interface__"):
        return np
    import cupy

    return cupy


def _ndimage(xp):
    if xp is np:
        from scipy import ndimage
    else:
        from cupyx.scipy import ndimage
    return ndimage


def _affine_options(affine_transform) -> dict:
    """Keyword arguments that make ``affine_transform`` compute its coordinates in float64, as SciPy does.

    From CuPy 13 on, ``cupyx.scipy.ndimage.affine_transform`` computes the sampling coordinates of a float32
    input in float32 unless ``float64_coords=True``: about 6e-5 px of error 1000 px from the origin, a
    relative difference from the CPU kernel of order 1e-5 instead of 1e-7 (CuPy 14.2's source, checked without
    a GPU). Older CuPy has no such argument and computes them in double; SciPy always does."""
    import inspect

    try:
        parameters = inspect.signature(affine_transform).parameters
    except (TypeError, ValueError):  # pragma: no cover - a compiled function without a signature
        return {}
    return {"float64_coords": True} if "float64_coords" in parameters else {}


def deskew_xp(
    raw_zyx,
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    scan_axis: str = "x",
    fill_value: float = 0.0,
    *,
    xp=None,
):
    """:func:`llsmflow.deskew.deskew` on the array module ``xp`` (default: the module of ``raw_zyx``).

    Parameters are those of :func:`llsmflow.deskew.deskew`; ``raw_zyx`` may be a NumPy array (copied to the
    device when ``xp`` is CuPy) or an array of ``xp``.

    Returns
    -------
    data : array of ``xp``
        float32, shape :func:`llsmflow.deskew.deskewed_shape`, equal to the CPU deskew (bit for bit with NumPy).
    voxel_size_um : tuple of float
        ``(dz·|sin θ|, dy, dx)`` µm.
    origin_offset_um : tuple of float
        As :class:`llsmflow.deskew.DeskewResult`.
    shear : float
        Pixels per plane along the scan axis.
    """
    xp = _module_of(raw_zyx) if xp is None else xp
    dy_um = checked_stage_scan(raw_zyx.shape, dz_um, dx_um, dy_um, scan_axis, min_planes=2)
    raw = xp.asarray(raw_zyx)
    scan_pixel_um = dx_um if scan_axis == "x" else dy_um
    shear = shear_px_per_plane(dz_um, scan_pixel_um, angle_deg)
    out_shape = deskewed_shape(raw.shape, dz_um, scan_pixel_um, angle_deg, scan_axis)
    nz = raw.shape[0]
    axis = 2 if scan_axis == "x" else 1
    n_scan, n_out = raw.shape[axis], out_shape[axis]
    base = -shear * (nz - 1) if shear < 0 else 0.0  # as in deskew
    # per plane, on the host, exactly as shear._shift_plane_x computes them
    whole = np.empty(nz, dtype=np.int64)
    frac = np.empty(nz, dtype=np.float32)
    first = np.empty(nz, dtype=np.int64)
    for k in range(nz):
        shift = base + k * shear
        whole[k] = math.floor(shift)
        f = shift - whole[k]
        exact = f < _EXACT_SHIFT_PX
        frac[k] = 0.0 if exact else f
        first[k] = whole[k] if exact else whole[k] + 1
    out = xp.empty(out_shape, dtype=xp.float32)
    fill = xp.float32(fill_value)
    columns = xp.arange(n_out)
    plane_bytes = 4 * math.prod(out_shape[1:])
    step = max(1, _BLOCK_BYTES // plane_bytes)
    other = xp.arange(raw.shape[3 - axis])
    for z0 in range(0, nz, step):
        z1 = min(z0 + step, nz)
        w = xp.asarray(whole[z0:z1])[:, None]
        src1 = columns[None, :] - w  # (planes, n_out): raw index of p1
        valid = (columns[None, :] >= xp.asarray(first[z0:z1])[:, None]) & (columns[None, :] < w + n_scan)
        i1 = xp.clip(src1, 0, n_scan - 1)
        i0 = xp.clip(src1 - 1, 0, n_scan - 1)
        kk = xp.arange(z0, z1)[:, None, None]
        if axis == 2:
            p1 = raw[kk, other[None, :, None], i1[:, None, :]].astype(xp.float32)
            p0 = raw[kk, other[None, :, None], i0[:, None, :]].astype(xp.float32)
            valid = valid[:, None, :]
        else:
            p1 = raw[kk, i1[:, :, None], other[None, None, :]].astype(xp.float32)
            p0 = raw[kk, i0[:, :, None], other[None, None, :]].astype(xp.float32)
            valid = valid[:, :, None]
        # the CPU's three float32 operations, in its order: d = p0 − p1; d *= f; out = p1 + d
        xp.subtract(p0, p1, out=p0)
        xp.multiply(p0, xp.asarray(frac[z0:z1])[:, None, None], out=p0)
        xp.add(p1, p0, out=p0)
        out[z0:z1] = xp.where(valid, p0, fill)
    origin_offset = -base * scan_pixel_um
    dzp = deskewed_plane_spacing_um(dz_um, angle_deg)
    origin = (0.0, origin_offset, 0.0) if scan_axis == "y" else (0.0, 0.0, origin_offset)
    return out, (dzp, dy_um, dx_um), origin, shear


def deskew_rotate_xp(
    raw_zyx,
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    output_voxel_um: float | None = None,
    fill_value: float = 0.0,
    scan_axis: str = "x",
    *,
    xp=None,
):
    """:func:`llsmflow.deskew.deskew_rotate` on the array module ``xp`` (default: the module of ``raw_zyx``).

    One trilinear interpolation (``affine_transform`` of ``xp``'s ndimage, order 1, mode ``'constant'``) with
    the CPU code's own geometry: the same output shape, origin and fill, equal to the CPU result within
    float32 round-off.

    Returns
    -------
    (volume, voxel_size_um, origin_um)
        As :func:`llsmflow.deskew.deskew_rotate`; ``volume`` is a float32 array of ``xp``.
    """
    from llsmflow.deskew.frames import _deskew_rotate_geometry
    from llsmflow.deskew.rotate import rotated_valid_mask

    xp = _module_of(raw_zyx) if xp is None else xp
    dy_um = checked_stage_scan(raw_zyx.shape, dz_um, dx_um, dy_um, scan_axis)
    out_um = float(output_voxel_um or dx_um)
    require_positive_voxel_size((out_um,), what="output voxel size")
    raw = xp.asarray(raw_zyx)
    if scan_axis == "y":
        # as the CPU kernel computes it: y and x swapped (a view), the scan axis x with pixel size dy; the
        # same geometry to the last bit, so the same voxels count as inside the stack
        out, voxel, origin = deskew_rotate_xp(
            raw.transpose(0, 2, 1), dz_um, dy_um, angle_deg, dy_um=dx_um, output_voxel_um=out_um,
            fill_value=fill_value, xp=xp,
        )  # fmt: skip
        return xp.ascontiguousarray(out.transpose(0, 2, 1)), voxel, (origin[0], origin[2], origin[1])
    # float32 and C order (the y-swapped view of scan axis y is copied once, as the CPU kernel's layout does)
    raw = xp.ascontiguousarray(raw.astype(xp.float32, copy=False))
    out_shape, origin, matrix, offset = _deskew_rotate_geometry(
        tuple(raw.shape), float(dz_um), float(dx_um), float(angle_deg), float(dy_um), out_um, scan_axis
    )
    # The axis across the scan (y for scan axis x) is resampled first, separately, exactly as the CPU kernel
    # does it (same positions, same clamping of the last pair, same float32 operations); the affine then maps
    # it one to one. A single trilinear affine is the same interpolation, but its round-off can put the last
    # row a hair outside the stack (then filled), where the CPU kernel keeps it.
    across = 1 if scan_axis == "x" else 2
    pixel = dy_um if scan_axis == "x" else dx_um
    n, n_out = raw.shape[across], out_shape[across]
    matrix, offset = np.array(matrix, dtype=float), np.array(offset, dtype=float)
    if (n_out != n or abs(out_um - pixel) > 1e-9 * pixel) and n > 1:
        j = np.arange(n_out) * (out_um / pixel)
        j0 = np.clip(np.floor(j), 0, n - 2).astype(np.intp)
        weight = xp.asarray((j - j0).astype(np.float32))
        lower = xp.asarray(j0)
        if across == 1:
            p0, p1, weight = raw[:, lower], raw[:, lower + 1], weight[None, :, None]
        else:
            p0, p1, weight = raw[:, :, lower], raw[:, :, lower + 1], weight[None, None, :]
        xp.subtract(p1, p0, out=p1)
        xp.multiply(p1, weight, out=p1)
        xp.add(p0, p1, out=p0)
        raw = p0
    matrix[across] = 0.0
    matrix[across, across] = 1.0
    offset[across] = 0.0
    # mode "nearest", then the CPU kernel's own inside/outside rule (rotated_valid_mask, the same float64
    # expressions as its plan): a position on the stack's edge, a hair outside after round-off, keeps its
    # data as on the CPU instead of becoming fill_value; inside, "nearest" and "constant" interpolate alike
    affine_transform = _ndimage(xp).affine_transform
    out = affine_transform(
        raw,
        xp.asarray(matrix),
        offset=tuple(float(v) for v in offset),
        output_shape=tuple(out_shape),
        order=1,
        mode="nearest",
        prefilter=False,
        **_affine_options(affine_transform),
    )
    inside = rotated_valid_mask(
        tuple(raw_zyx.shape), dz_um, dx_um, angle_deg, dy_um, out_um, scan_axis="x", margin_px=0
    )
    out = xp.where(xp.asarray(np.ascontiguousarray(inside[:, :1, :])), out, xp.float32(fill_value))
    if out.dtype != xp.float32:
        out = out.astype(xp.float32)
    return out, (out_um, out_um, out_um), tuple(float(v) for v in origin)
