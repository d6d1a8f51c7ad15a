"""Stage-scan lattice light-sheet geometry: deskew, deskew + rotation, and frame conversions.

Frames (all in µm, axis order ZYX):

- **raw**: the camera stack. Plane ``k`` was taken after the stage moved ``k·dz`` along the scan axis.
- **objective** (deskewed): orthogonal frame of the detection objective. The light sheet lies in its YX
  plane; successive sheets are ``dz' = dz·|sin θ|`` apart along its Z; a sample-fixed point moves by
  ``dz·cos θ`` along X between planes. Deskewing maps raw to this frame with a pure shear of
  ``s = dz·cos θ / dx`` pixels per plane (sign of θ gives the direction), see ``../shared/notes/field-notes.md``.
- **coverslip**: rotated so that Z is normal to the coverslip and X runs along the stage scan. Rotation by θ
  about Y from the objective frame.

The shear is written here rather than with ``scipy.ndimage.affine_transform`` because it is a per-plane 1-D
shift: two slices and one fused multiply-add per plane with linear weights, an order of magnitude faster than a
general affine resampler that evaluates every voxel's coordinate. Deskew + rotation is one affine
(``scipy.ndimage.affine_transform``, order 1) from the raw stack so that data are interpolated only once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from llsmflow.errors import LlsmflowError, require_positive_voxel_size


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
) -> DeskewResult:
    """Deskew a stage-scanned stack into the objective frame by a per-plane linear-interpolated shift.

    Parameters
    ----------
    raw_zyx:
        Raw stack, ZYX, plane ``k`` acquired after a stage move of ``k·dz_um``.
    dz_um:
        Stage step between planes (µm), measured along the scan axis.
    dx_um, dy_um:
        Camera pixel sizes (µm) along X and Y; ``dy_um`` defaults to ``dx_um``.
    angle_deg:
        Angle between light sheet and scan axis (degrees, 0 < |θ| < 90; negative flips the shear).
    scan_axis:
        ``"x"`` for LLSM, ``"y"`` for oblique-plane microscopes that scan along Y.
    fill_value:
        Value of output voxels that no raw voxel maps to.

    Returns
    -------
    DeskewResult
        float32 data of shape :func:`deskewed_shape`, voxel size ``(dz·|sin θ|, dy, dx)`` µm.
    """
    raw = np.asarray(raw_zyx)
    if raw.ndim != 3:
        raise LlsmflowError(f"raw stack has shape {raw.shape}; expected a 3-D ZYX stack")
    dy_um = dx_um if dy_um is None else dy_um
    require_positive_voxel_size((dz_um, dy_um, dx_um), what="voxel size (dz, dy, dx)")
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")
    scan_pixel_um = dx_um if scan_axis == "x" else dy_um
    if scan_axis == "y":
        raw = raw.transpose(0, 2, 1)
    shear = shear_px_per_plane(dz_um, scan_pixel_um, angle_deg)
    nz, ny, nx = raw.shape
    out_nx = nx + math.floor(nz * abs(shear))
    out = np.full((nz, ny, out_nx), fill_value, dtype=np.float32)
    # For negative angles the planes shift towards smaller x: offset so that every index stays >= 0.
    base = -shear * (nz - 1) if shear < 0 else 0.0
    for k in range(nz):
        _shift_plane_into(out[k], raw[k], base + k * shear)
    origin_offset = -base * scan_pixel_um
    dzp = deskewed_plane_spacing_um(dz_um, angle_deg)
    if scan_axis == "y":
        out = np.ascontiguousarray(out.transpose(0, 2, 1))
        return DeskewResult(out, (dzp, dy_um, dx_um), (0.0, origin_offset, 0.0), shear)
    return DeskewResult(out, (dzp, dy_um, dx_um), (0.0, 0.0, origin_offset), shear)


def _shift_plane_into(out_yx: np.ndarray, plane_yx: np.ndarray, shift_px: float) -> None:
    """Write ``plane`` shifted by ``shift_px`` (>= 0) along x into ``out`` with linear interpolation.

    ``out[x] = (1-f)·plane[x-i] + f·plane[x-i-1]`` with ``i = floor(shift)``, ``f = shift - i``; columns whose
    source falls outside the plane keep their fill value.
    """
    nx = plane_yx.shape[1]
    whole = math.floor(shift_px)
    frac = shift_px - whole
    if frac < 1e-6:
        out_yx[:, whole : whole + nx] = plane_yx
        return
    dst = out_yx[:, whole + 1 : whole + nx]
    np.multiply(plane_yx[:, 1:], np.float32(1.0 - frac), out=dst, casting="unsafe")
    dst += np.float32(frac) * plane_yx[:, :-1]


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
        first = whole if shift - whole < 1e-6 else whole + 1  # as in _shift_plane_into
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
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Deskew and rotate a raw stack into the coverslip frame with isotropic voxels, in ONE interpolation.

    Parameters
    ----------
    raw_zyx, dz_um, dx_um, dy_um, angle_deg:
        As for :func:`deskew` (scan axis x).
    output_voxel_um:
        Isotropic output voxel size (µm); defaults to ``dx_um``.

    Returns
    -------
    (volume, voxel_size_um, origin_um)
        float32 volume in the coverslip frame (Z normal to the coverslip, X along the scan), its isotropic voxel
        size, and the coverslip-frame position of output voxel (0, 0, 0) relative to raw voxel (0, 0, 0).
    """
    raw = np.asarray(raw_zyx, dtype=np.float32)
    if raw.ndim != 3:
        raise LlsmflowError(f"raw stack has shape {raw.shape}; expected a 3-D ZYX stack")
    dy_um = dx_um if dy_um is None else dy_um
    require_positive_voxel_size((dz_um, dy_um, dx_um), what="voxel size (dz, dy, dx)")
    out_um = float(output_voxel_um or dx_um)
    shear = shear_px_per_plane(dz_um, dx_um, angle_deg)
    dzp = deskewed_plane_spacing_um(dz_um, angle_deg)
    # raw index (k, j, i) -> objective µm (k·dz', j·dy, (i + k·s)·dx)
    raw_to_obj = np.array([[dzp, 0, 0], [0, dy_um, 0], [shear * dx_um, 0, dx_um]])
    rotation = objective_to_coverslip_matrix(angle_deg)
    raw_to_cov = rotation @ raw_to_obj
    nz, ny, nx = raw.shape
    corners = np.array([[k, j, i] for k in (0, nz - 1) for j in (0, ny - 1) for i in (0, nx - 1)], float)
    cov_corners = corners @ raw_to_cov.T
    lo, hi = cov_corners.min(axis=0), cov_corners.max(axis=0)
    out_shape = tuple(int(math.floor((h - lo_) / out_um)) + 1 for lo_, h in zip(lo, hi, strict=True))
    # output index o -> coverslip µm lo + o·out_um -> raw index
    cov_to_raw = np.linalg.inv(raw_to_cov)
    matrix = cov_to_raw * out_um
    offset = cov_to_raw @ lo
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
    return out.astype(np.float32, copy=False), (out_um, out_um, out_um), tuple(float(v) for v in lo)
