"""Stage-scan lattice light-sheet geometry: deskew, deskew + rotation, and frame conversions.

Frames (all in µm, axis order ZYX):

- **raw**: the camera stack. Plane ``k`` was taken after the stage moved ``k·dz`` along the scan axis.
- **objective** (deskewed): orthogonal frame of the detection objective. The light sheet lies in its YX
  plane; successive sheets are ``dz' = dz·|sin θ|`` apart along its Z; a sample-fixed point moves by
  ``dz·cos θ`` along X between planes. Deskewing maps raw to this frame with a pure shear of
  ``s = dz·cos θ / dx`` pixels per plane (sign of θ gives the direction), see ``../shared/notes/field-notes.md``.
- **coverslip**: rotated so that Z is normal to the coverslip and X runs along the stage scan. Rotation by θ
  about Y from the objective frame.

Why the resampling is hand-written rather than done by ``scipy.ndimage.affine_transform``:

- **Deskew** is a per-plane 1-D shift along the scan axis by ``base + k·s`` pixels. Each plane is one
  sub-pixel shift with the same two linear weights for every voxel: a cast, three contiguous ufunc passes
  (``p1 + f·(p0 − p1)``) in a small per-thread buffer that stays in cache, and one copy into the output slice;
  only the two empty wedges are filled. Planes are independent, so they run in a thread pool (NumPy releases
  the GIL). A general affine resampler instead evaluates a 3-D coordinate and 8 neighbours per voxel: the
  hand-written shear is tens of times faster (``bench/bench_deskew.py``).
- **Deskew + rotation** (to the coverslip frame, isotropic voxels) is one affine from the raw stack so that
  the data are interpolated only once (PetaKit5D "DSR combined", pyclesperanto ``deskew_x``). The rotation is
  about Y and the shear is along X, so the map from an output (Z, X) position to the raw (plane k, column i)
  position is the *same* 2-D affine for every camera row y. The bilinear neighbours and weights are therefore
  computed once for the 2-D output grid (a sparse matrix with 4 entries per output (Z, X) point) and applied
  to all rows at once: ``scipy.sparse`` multiplies it with the raw stack laid out as (k·nx + i, y), one C loop
  of four multiply-adds over contiguous y vectors per output point, in Z blocks across threads. A different
  output voxel size along Y is a separate linear resampling of y before that product, which is exactly the
  trilinear interpolation (the weights are separable). The general resampler stays as the reference
  (:func:`_deskew_rotate_reference`, used by the tests) and for degenerate stacks.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage, sparse

from llsmflow.errors import LlsmflowError, require_positive_voxel_size

# A plane whose sub-pixel shift is below this fraction of a pixel is copied, not interpolated (and its first
# column is then valid); deskewed_valid_mask mirrors this rule.
_EXACT_SHIFT_PX = 1e-6
# Output voxels per Z block of the combined deskew + rotation (bounds the per-thread temporary: 4 MiB float32).
_BLOCK_VOXELS = 1 << 20


def default_workers() -> int:
    """Threads used by :func:`deskew` and :func:`deskew_rotate` when ``workers`` is not given.

    ``$LLSMFLOW_THREADS`` if set (e.g. by a workflow rule's ``threads``), else the CPUs this process may run on,
    at most 8 (the resampling is bound by memory bandwidth beyond a few cores).
    """
    env = os.environ.get("LLSMFLOW_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise LlsmflowError(f"LLSMFLOW_THREADS={env!r} is invalid; expected a positive integer") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


@lru_cache(maxsize=4)
def _executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llsmflow-geometry")


def _run_parallel(func, chunks: list, workers: int | None) -> None:
    """Call ``func(chunk)`` for every chunk, on ``workers`` threads (serially for one worker or one chunk)."""
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise LlsmflowError(f"workers={workers} is invalid; expected at least 1 thread")
    if workers == 1 or len(chunks) <= 1:
        for chunk in chunks:
            func(chunk)
        return
    for future in [_executor(workers).submit(func, chunk) for chunk in chunks]:
        future.result()  # re-raises a worker's exception here


def _split(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into at most ``parts`` contiguous, non-empty, near-equal ranges."""
    parts = max(1, min(parts, n))
    bounds = [round(p * n / parts) for p in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _check_angle(angle_deg: float) -> float:
    angle = float(angle_deg)
    if not (math.isfinite(angle) and 0 < abs(angle) < 90):
        raise LlsmflowError(f"sheet angle {angle_deg}° is out of range; expected 0 < |angle| < 90 degrees")
    return angle


def shear_px_per_plane(dz_um: float, dx_um: float, angle_deg: float) -> float:
    """Shift along the scan axis between successive raw planes, in pixels: ``s = dz·cos θ / dx · sign θ``.

    For dz = 0.5 µm, θ = 31.5°, dx = 0.104 µm this is ≈ 4.10 px per plane.
    """
    angle = _check_angle(angle_deg)
    require_positive_voxel_size((dz_um, dx_um), what="stage step dz / pixel size dx")
    return math.copysign(dz_um * math.cos(math.radians(angle)) / dx_um, angle)


def deskewed_plane_spacing_um(dz_um: float, angle_deg: float) -> float:
    """Distance between deskewed planes along the objective axis: ``dz' = dz·|sin θ|`` (µm)."""
    angle = _check_angle(angle_deg)
    return dz_um * abs(math.sin(math.radians(angle)))


def deskewed_shape(
    raw_shape_zyx: tuple[int, int, int], dz_um: float, dx_um: float, angle_deg: float, scan_axis: str = "x"
) -> tuple[int, int, int]:
    """Shape of the deskewed volume: the scan axis grows by ``floor(Nz·dz·|cos θ|/dx)`` pixels."""
    nz, ny, nx = raw_shape_zyx
    extra = math.floor(nz * abs(shear_px_per_plane(dz_um, dx_um, angle_deg)))
    if scan_axis == "x":
        return (nz, ny, nx + extra)
    if scan_axis == "y":
        return (nz, ny + extra, nx)
    raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")


@dataclass
class DeskewResult:
    """A deskewed volume in the objective frame.

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
    if raw.ndim != 3:
        raise LlsmflowError(f"raw stack has shape {raw.shape}; expected a 3-D ZYX stack")
    if raw.shape[0] < 2:
        # a single plane (e.g. a 2-D image) has nothing to shear against: almost surely the wrong file
        raise LlsmflowError(
            f"raw stack has shape {raw.shape}; expected a stage-scan stack of at least 2 planes (ZYX)"
        )
    dy_um = dx_um if dy_um is None else dy_um
    require_positive_voxel_size((dz_um, dy_um, dx_um), what="voxel size (dz, dy, dx)")
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")
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


def objective_to_coverslip_matrix(angle_deg: float) -> np.ndarray:
    """3×3 rotation taking objective-frame (z, y, x) µm vectors to coverslip-frame (Z, Y, X) µm vectors.

    ``X = z·sin θ + x·cos θ`` runs along the stage scan; ``Z = z·cos θ − x·sin θ`` is normal to the coverslip
    (θ taken with the sign convention of :func:`stage_to_objective_um`).
    """
    angle = math.radians(_check_angle(angle_deg))
    sign = math.copysign(1.0, angle)
    sin_t, cos_t = abs(math.sin(angle)), math.cos(angle) * sign
    return np.array([[cos_t, 0.0, -sin_t], [0.0, 1.0, 0.0], [sin_t, 0.0, cos_t]])


def stage_to_objective_um(stage_xyz_um, angle_deg: float) -> tuple[float, float, float]:
    """Convert a stage displacement (x along the scan, y, z normal to the coverslip; µm) to objective (z, y, x) µm.

    A stage move of ``Δ`` along the scan axis moves the sample by ``(Δ·|sin θ|, 0, Δ·cos θ·sign θ)`` in the
    objective frame, which is exactly the per-plane step that deskewing compensates.
    """
    sx, sy, sz = (float(v) for v in stage_xyz_um)
    rotation = objective_to_coverslip_matrix(angle_deg)
    # objective = Rᵀ · coverslip, with coverslip (Z, Y, X) = (sz, sy, sx)
    z, y, x = rotation.T @ np.array([sz, sy, sx])
    return (float(z), float(y), float(x))


def deskew_rotate(
    raw_zyx: np.ndarray,
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    output_voxel_um: float | None = None,
    fill_value: float = 0.0,
    *,
    workers: int | None = None,
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Deskew and rotate a raw stack into the coverslip frame with isotropic voxels, in ONE interpolation.

    Trilinear interpolation of the raw stack at the raw position of every output voxel, as
    ``scipy.ndimage.affine_transform(order=1, mode="constant")`` computes it (:func:`_deskew_rotate_reference`;
    equal to float32 rounding), but using that the map is the same 2-D affine for every camera row (see the
    module docstring). Output voxels whose raw position falls outside the raw stack get ``fill_value``.

    Parameters
    ----------
    raw_zyx : numpy.ndarray
        Raw stack, ZYX, any real dtype, scan axis x (as for :func:`deskew`).
    dz_um : float
        Stage step between planes (µm).
    dx_um : float
        Camera pixel size along X (µm).
    angle_deg : float
        Angle between light sheet and scan axis (degrees, 0 < |θ| < 90).
    dy_um : float, optional
        Camera pixel size along Y (µm); defaults to ``dx_um``.
    output_voxel_um : float, optional
        Isotropic output voxel size (µm); defaults to ``dx_um``.
    fill_value : float
        Value of output voxels outside the imaged volume.
    workers : int, optional
        Threads; defaults to :func:`default_workers`.

    Returns
    -------
    volume : numpy.ndarray
        float32, in the coverslip frame (Z normal to the coverslip, X along the scan), shape of the bounding box
        of the imaged volume at ``output_voxel_um`` spacing.
    voxel_size_um : tuple of float
        ``(v, v, v)`` µm with ``v = output_voxel_um``.
    origin_um : tuple of float
        Coverslip-frame position (Z, Y, X, µm) of output voxel (0, 0, 0) relative to raw voxel (0, 0, 0).

    Notes
    -----
    Memory beyond the output: one float32 copy of the raw stack (laid out y-minor, resampled to the output y
    spacing) plus a few MiB per thread.
    """
    raw = np.asarray(raw_zyx)
    if raw.ndim != 3:
        raise LlsmflowError(f"raw stack has shape {raw.shape}; expected a 3-D ZYX stack")
    dy_um = dx_um if dy_um is None else dy_um
    require_positive_voxel_size((dz_um, dy_um, dx_um), what="voxel size (dz, dy, dx)")
    out_um = float(output_voxel_um or dx_um)
    require_positive_voxel_size((out_um,), what="output voxel size")
    nz, ny, nx = raw.shape
    if nz < 2 or nx < 2:  # no pair of planes / columns to interpolate between: the general resampler copes
        return _deskew_rotate_reference(raw, dz_um, dx_um, angle_deg, dy_um, out_um, fill_value)
    plan = _rotation_plan(raw.shape, float(dz_um), float(dx_um), float(angle_deg), float(dy_um), out_um)
    out_ny = plan.out_shape[1]
    out = np.empty(plan.out_shape, dtype=np.float32)
    fill = np.float32(fill_value)

    # 1. the raw stack as float32 columns (plane k, camera column i) × output row y
    columns = np.empty((nz, nx, out_ny), dtype=np.float32)

    def to_columns(planes: range) -> None:
        for k in planes:
            if plan.y_rows is None:
                np.copyto(columns[k], raw[k].T, casting="unsafe")
            else:
                rows0, weight = plan.y_rows
                plane = raw[k].astype(np.float32)
                p0, p1 = plane[rows0], plane[rows0 + 1]
                np.subtract(p1, p0, out=p1)
                np.multiply(p1, weight[:, None], out=p1)
                np.add(p0, p1, out=p0)
                np.copyto(columns[k], p0.T)

    chunks = 4 * (default_workers() if workers is None else workers)
    _run_parallel(to_columns, _split(nz, chunks), workers)
    columns_2d = columns.reshape(nz * nx, out_ny)

    # 2. per block of output Z rows: 4 weighted neighbours per (Z, X) point for all y at once, then the
    #    (points, y) result is written transposed into the (Z, y, X) output, wedges filled with fill_value
    def resample(block: int) -> None:
        z_rows, matrix = plan.blocks[block]
        values = matrix @ columns_2d
        row = 0
        for z in z_rows:
            start, stop = plan.runs[z]
            out[z, :, :start] = fill
            out[z, :, stop:] = fill
            if stop > start:
                np.copyto(out[z, :, start:stop], values[row : row + stop - start].T)
                row += stop - start

    _run_parallel(resample, list(range(len(plan.blocks))), workers)
    return out, (out_um, out_um, out_um), plan.origin_um


@dataclass(frozen=True)
class _RotationPlan:
    """Everything about a deskew + rotation that depends on the geometry only (cached across calls).

    ``runs[Z] = (start, stop)``: the output X range of row Z inside the imaged volume. ``blocks``: (Z rows,
    sparse matrix) pairs; the matrix maps the raw columns (k·nx + i) to the block's inside (Z, X) points in row
    order, 4 bilinear weights per point. ``y_rows``: None when the output y grid is the camera grid, else the
    lower camera row and weight of each output row.
    """

    out_shape: tuple[int, int, int]
    origin_um: tuple[float, float, float]
    runs: np.ndarray
    blocks: tuple
    y_rows: tuple[np.ndarray, np.ndarray] | None


def _deskew_rotate_geometry(raw_shape, dz_um, dx_um, angle_deg, dy_um, out_um):
    """Output shape, origin (µm) and the affine (matrix, offset) from output index to raw index (k, j, i).

    raw index (k, j, i) → objective µm (k·dz', j·dy, (i + k·s)·dx) → coverslip µm by the rotation about Y;
    the output grid is the bounding box of the raw stack's corners at ``out_um`` spacing. The inverse keeps Y
    exactly decoupled from (Z, X) (inverted as a 2×2 block and a scale).
    """
    shear = shear_px_per_plane(dz_um, dx_um, angle_deg)
    dzp = deskewed_plane_spacing_um(dz_um, angle_deg)
    raw_to_obj = np.array([[dzp, 0, 0], [0, dy_um, 0], [shear * dx_um, 0, dx_um]])
    raw_to_cov = objective_to_coverslip_matrix(angle_deg) @ raw_to_obj
    nz, ny, nx = raw_shape
    corners = np.array([[k, j, i] for k in (0, nz - 1) for j in (0, ny - 1) for i in (0, nx - 1)], float)
    cov_corners = corners @ raw_to_cov.T
    lo, hi = cov_corners.min(axis=0), cov_corners.max(axis=0)
    out_shape = tuple(int(math.floor((h - lo_) / out_um)) + 1 for lo_, h in zip(lo, hi, strict=True))
    zx = np.ix_((0, 2), (0, 2))
    cov_to_raw = np.zeros((3, 3))
    cov_to_raw[zx] = np.linalg.inv(raw_to_cov[zx])
    cov_to_raw[1, 1] = 1.0 / dy_um
    # output index o -> coverslip µm lo + o·out_um -> raw index
    return out_shape, tuple(float(v) for v in lo), cov_to_raw * out_um, cov_to_raw @ lo


@lru_cache(maxsize=8)
def _rotation_plan(raw_shape, dz_um, dx_um, angle_deg, dy_um, out_um) -> _RotationPlan:
    out_shape, origin, matrix, offset = _deskew_rotate_geometry(
        raw_shape, dz_um, dx_um, angle_deg, dy_um, out_um
    )
    nz, ny, nx = raw_shape
    out_nz, out_ny, out_nx = out_shape
    zz = np.arange(out_nz, dtype=float)[:, None]
    xx = np.arange(out_nx, dtype=float)[None, :]
    k = matrix[0, 0] * zz + matrix[0, 2] * xx + offset[0]
    i = matrix[2, 0] * zz + matrix[2, 2] * xx + offset[2]
    # mode="constant" semantics: a voxel is inside when its raw position is within [0, n − 1] on both axes.
    # The inside points of a row form one run (a line crossing a parallelogram).
    inside = (k >= 0) & (k <= nz - 1) & (i >= 0) & (i <= nx - 1)
    has = inside.any(axis=1)
    start = np.where(has, inside.argmax(axis=1), 0)
    stop = np.where(has, out_nx - inside[:, ::-1].argmax(axis=1), 0)
    runs = np.stack([start, stop], axis=1)
    inside = (xx >= start[:, None]) & (xx < stop[:, None])
    k, i = k[inside], i[inside]  # row-major: by Z, then X
    k0 = np.clip(np.floor(k), 0, nz - 2)
    i0 = np.clip(np.floor(i), 0, nx - 2)
    fk, fi = k - k0, i - i0
    base = (k0 * nx + i0).astype(np.int64)
    index_dtype = np.int32 if nz * nx < 2**31 else np.int64
    indices = np.stack([base, base + 1, base + nx, base + nx + 1], axis=1).astype(index_dtype).ravel()
    weights = np.stack([(1 - fk) * (1 - fi), (1 - fk) * fi, fk * (1 - fi), fk * fi], axis=1)
    n_points = base.size
    indptr = np.arange(0, 4 * n_points + 1, 4, dtype=index_dtype)
    full = sparse.csr_array(
        (weights.astype(np.float32).ravel(), indices, indptr), shape=(n_points, nz * nx), copy=False
    )
    # Z blocks of at most _BLOCK_VOXELS output voxels, and at least 8 blocks when there are enough rows
    points_per_row = runs[:, 1] - runs[:, 0]
    target = max(1, min(_BLOCK_VOXELS // max(out_ny, 1), -(-n_points // 8)))
    blocks, z0, p0, acc = [], 0, 0, 0
    for z in range(out_nz):
        acc += int(points_per_row[z])
        if acc >= target or z == out_nz - 1:
            p1 = p0 + acc
            blocks.append((range(z0, z + 1), full[p0:p1]))
            z0, p0, acc = z + 1, p1, 0
    y_rows = None
    if out_ny != ny or abs(out_um - dy_um) > 1e-9 * dy_um:
        j = np.arange(out_ny) * (out_um / dy_um)
        j0 = np.clip(np.floor(j), 0, max(ny - 2, 0)).astype(np.intp)
        y_rows = (j0, (j - j0).astype(np.float32)) if ny > 1 else None
    return _RotationPlan(out_shape, origin, runs, tuple(blocks), y_rows)


def _deskew_rotate_reference(
    raw_zyx, dz_um, dx_um, angle_deg, dy_um=None, output_voxel_um=None, fill_value=0.0
):
    """:func:`deskew_rotate` by ``scipy.ndimage.affine_transform`` (order 1): the reference for the tests."""
    raw = np.asarray(raw_zyx, dtype=np.float32)
    dy_um = dx_um if dy_um is None else dy_um
    out_um = float(output_voxel_um or dx_um)
    out_shape, origin, matrix, offset = _deskew_rotate_geometry(
        raw.shape, dz_um, dx_um, angle_deg, dy_um, out_um
    )
    out = ndimage.affine_transform(
        raw,
        matrix,
        offset=offset,
        output_shape=out_shape,
        order=1,
        mode="constant",
        cval=fill_value,
        prefilter=False,
    )
    return out.astype(np.float32, copy=False), (out_um, out_um, out_um), origin
