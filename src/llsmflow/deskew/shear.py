"""Deskew by shear: a per-plane linear-interpolated shift along the scan axis into the objective frame, and
the mask of where a deskewed volume holds data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llsmflow.deskew.frames import (
    checked_stage_scan,
    deskewed_plane_spacing_um,
    deskewed_shape,
    shear_px_per_plane,
)
from llsmflow.deskew.workers import _run_parallel, _split, default_workers
from llsmflow.errors import LlsmflowError

# A plane whose sub-pixel shift is below this fraction of a pixel is copied, not interpolated (and its first
# column is then valid); deskewed_valid_mask mirrors this rule.
_EXACT_SHIFT_PX = 1e-6


@dataclass
class DeskewResult:
    """A deskewed volume in the objective frame (or, from :func:`llsmflow.deskew.deskew_stack` with
    ``rotate=True``, in the coverslip frame).

    ``origin_offset_um`` is the objective-frame position (z, y, x, µm) of output voxel (0, 0, 0) relative to
    the position of raw voxel (0, 0, 0); it is non-zero along the scan axis for negative angles.
    """

    data: np.ndarray
    voxel_size_um: tuple[float, float, float]
    origin_offset_um: tuple[float, float, float]
    shear_px_per_plane: float


def deskew(
    raw_zyx: np.ndarray,
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    scan_axis: str = "x",
    fill_value: float = 0.0,
    *,
    workers: int | None = None,
    out: np.ndarray | None = None,
) -> DeskewResult:
    """Deskew a stage-scanned stack into the objective frame by a per-plane linear-interpolated shift.

    Raw plane ``k`` is shifted by ``base + k·s`` pixels along the scan axis (``s`` from
    :func:`shear_px_per_plane`; ``base = |s|·(nz − 1)`` for negative angles, else 0) with linear interpolation:
    ``out[x] = p[x − i] + f·(p[x − i − 1] − p[x − i])``, ``i = floor(shift)``, ``f = shift − i``.

    Parameters
    ----------
    raw_zyx : numpy.ndarray
        Raw stack, ZYX, any real dtype (e.g. uint16 camera counts; converted plane by plane, never as a whole).
        Plane ``k`` was acquired after a stage move of ``k·dz_um``.
    dz_um : float
        Stage step between planes (µm), measured along the scan axis.
    dx_um : float
        Camera pixel size along X (µm).
    angle_deg : float
        Angle between light sheet and scan axis (degrees, 0 < |θ| < 90; negative flips the shear).
    dy_um : float, optional
        Camera pixel size along Y (µm); defaults to ``dx_um``.
    scan_axis : {"x", "y"}
        ``"x"`` for LLSM, ``"y"`` for oblique-plane microscopes that scan along Y.
    fill_value : float
        Value of output voxels that no pair of raw voxels maps to (the two wedges).
    workers : int, optional
        Threads that process planes in parallel; defaults to :func:`default_workers`.
    out : numpy.ndarray, optional
        C-contiguous float32 array of shape :func:`deskewed_shape` to write into (e.g. reused across the
        timepoints of a series, which saves allocating and page-faulting a new output every time).

    Returns
    -------
    DeskewResult
        float32 data of shape :func:`deskewed_shape`, voxel size ``(dz·|sin θ|, dy, dx)`` µm; where it holds
        data is :func:`deskewed_valid_mask` with ``margin_px=0``.
    """
    raw = np.asarray(raw_zyx)
    dy_um = checked_stage_scan(raw.shape, dz_um, dx_um, dy_um, scan_axis, min_planes=2)
    scan_pixel_um = dx_um if scan_axis == "x" else dy_um
    shear = shear_px_per_plane(dz_um, scan_pixel_um, angle_deg)
    out_shape = deskewed_shape(raw.shape, dz_um, scan_pixel_um, angle_deg, scan_axis)
    # np.empty, not np.full: every voxel is written exactly once (data or wedge), by the thread owning its plane
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)
    elif out.shape != out_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise LlsmflowError(
            f"out array is {out.dtype} {out.shape}; expected a C-contiguous float32 array of shape {out_shape}"
        )
    nz = raw.shape[0]
    # For negative angles the planes shift towards smaller x: offset so that every index stays >= 0.
    base = -shear * (nz - 1) if shear < 0 else 0.0
    shift_plane = _shift_plane_x if scan_axis == "x" else _shift_plane_y

    def run(planes: range) -> None:
        # per-thread scratch: one plane as float32 and one interpolated plane, both cache-sized
        scratch = np.empty((2, raw.shape[1] * raw.shape[2]), dtype=np.float32)
        for k in planes:
            shift_plane(out[k], raw[k], base + k * shear, fill_value, scratch)

    # several chunks per thread so that a thread slowed by other load does not hold up the rest
    _run_parallel(run, _split(nz, 4 * (default_workers() if workers is None else workers)), workers)
    origin_offset = -base * scan_pixel_um
    dzp = deskewed_plane_spacing_um(dz_um, angle_deg)
    if scan_axis == "y":
        return DeskewResult(out, (dzp, dy_um, dx_um), (0.0, origin_offset, 0.0), shear)
    return DeskewResult(out, (dzp, dy_um, dx_um), (0.0, 0.0, origin_offset), shear)


def _shift_plane_x(out_yx: np.ndarray, plane_yx: np.ndarray, shift_px: float, fill, scratch) -> None:
    """Write ``plane`` shifted by ``shift_px`` (>= 0 pixels) along x into ``out``, linear interpolation.

    ``out[:, x] = p1 + f·(p0 − p1)`` with ``p1 = plane[:, x − i]``, ``p0 = plane[:, x − i − 1]``,
    ``i = floor(shift)``, ``f = shift − i``. Columns whose source falls outside the plane (and, for a fractional
    shift, column ``i``, which lacks its left neighbour) get ``fill``. The arithmetic runs on the flattened
    plane (one long contiguous pass per ufunc, in cache); the values that straddle two rows are never copied out.
    """
    ny, nx = plane_yx.shape
    whole = math.floor(shift_px)
    frac = shift_px - whole
    if frac < _EXACT_SHIFT_PX:
        out_yx[:, :whole] = fill
        np.copyto(out_yx[:, whole : whole + nx], plane_yx, casting="unsafe")
        out_yx[:, whole + nx :] = fill
        return
    out_yx[:, : whole + 1] = fill
    out_yx[:, whole + nx :] = fill
    if nx == 1:
        return
    p, d = scratch[0, : ny * nx], scratch[1, : ny * nx]
    np.copyto(p.reshape(ny, nx), plane_yx, casting="unsafe")
    _lerp_pairs(p, 1, frac, d[:-1])
    # d[y·nx + x] = value for output column whole + 1 + x, valid for x < nx − 1
    np.copyto(out_yx[:, whole + 1 : whole + nx], d.reshape(ny, nx)[:, : nx - 1])


def _shift_plane_y(out_yx: np.ndarray, plane_yx: np.ndarray, shift_px: float, fill, scratch) -> None:
    """As :func:`_shift_plane_x`, shifting along y (rows): the interpolated rows are one contiguous block."""
    ny, nx = plane_yx.shape
    whole = math.floor(shift_px)
    frac = shift_px - whole
    if frac < _EXACT_SHIFT_PX:
        out_yx[:whole] = fill
        np.copyto(out_yx[whole : whole + ny], plane_yx, casting="unsafe")
        out_yx[whole + ny :] = fill
        return
    out_yx[: whole + 1] = fill
    out_yx[whole + ny :] = fill
    if ny == 1:
        return
    p = scratch[0, : ny * nx]
    np.copyto(p.reshape(ny, nx), plane_yx, casting="unsafe")
    _lerp_pairs(p, nx, frac, out_yx[whole + 1 : whole + ny].reshape(-1))


def _lerp_pairs(p: np.ndarray, step: int, frac: float, out: np.ndarray) -> None:
    """``out[n] = p[n + step] + frac·(p[n] − p[n + step])`` over flat float32 arrays, without temporaries.

    The same three float32 operations in the same order for both scan axes, so that deskewing along y equals
    deskewing the transposed stack along x bit for bit.
    """
    p0, p1 = p[:-step], p[step:]
    np.subtract(p0, p1, out=out)
    np.multiply(out, np.float32(frac), out=out)
    np.add(p1, out, out=out)


def deskewed_valid_mask(
    raw_shape_zyx: tuple[int, int, int],
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    scan_axis: str = "x",
    margin_px: int = 1,
    dy_um: float | None = None,
) -> np.ndarray:
    """Where a deskewed volume holds data: True for voxels that :func:`deskew` interpolated from raw voxels.

    Deskewing shifts raw plane ``k`` by ``base + k·s`` pixels along the scan axis, so the data fill a
    parallelogram in (z, scan axis) and the two wedges beside it keep the fill value. Columns that a plane's
    sub-pixel shift leaves without a full pair of raw neighbours (its first column when the shift is
    fractional) are invalid, exactly as :func:`deskew` leaves them at the fill value.

    Parameters
    ----------
    raw_shape_zyx:
        Shape ``(nz, ny, nx)`` of the raw stack.
    dz_um, dx_um, angle_deg, scan_axis, dy_um:
        As for :func:`deskew` (``dy_um`` defaults to ``dx_um`` and matters only for ``scan_axis="y"``).
    margin_px:
        Pixels dropped at both ends of each plane's valid run along the scan axis (erosion), e.g. to keep
        away from interpolation or deconvolution edge effects; 0 keeps every interpolated voxel.

    Returns
    -------
    numpy.ndarray
        bool, of shape :func:`deskewed_shape`.
    """
    raw_shape = tuple(int(n) for n in raw_shape_zyx)
    if len(raw_shape) != 3 or min(raw_shape) < 1:
        raise LlsmflowError(
            f"raw shape {tuple(raw_shape_zyx)} is invalid; expected three positive sizes (z, y, x)"
        )
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")
    margin = int(margin_px)
    if margin < 0:
        raise LlsmflowError(f"margin_px={margin_px!r} is invalid; expected a non-negative number of pixels")
    dy_um = dx_um if dy_um is None else dy_um
    scan_pixel_um = dx_um if scan_axis == "x" else dy_um
    shear = shear_px_per_plane(dz_um, scan_pixel_um, angle_deg)
    nz, ny, nx = raw_shape if scan_axis == "x" else (raw_shape[0], raw_shape[2], raw_shape[1])
    out_nx = nx + math.floor(nz * abs(shear))
    base = -shear * (nz - 1) if shear < 0 else 0.0  # as in deskew
    columns = np.arange(out_nx)
    valid = np.zeros((nz, out_nx), dtype=bool)
    for k in range(nz):
        shift = base + k * shear
        whole = math.floor(shift)
        first = whole if shift - whole < _EXACT_SHIFT_PX else whole + 1  # as in _shift_plane_x
        valid[k] = (columns >= first + margin) & (columns < min(whole + nx, out_nx) - margin)
    mask = np.broadcast_to(valid[:, None, :], (nz, ny, out_nx))
    if scan_axis == "y":
        mask = mask.transpose(0, 2, 1)
    return np.ascontiguousarray(mask)
