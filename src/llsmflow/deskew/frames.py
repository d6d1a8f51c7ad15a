"""Geometry relations of a stage-scan stack (no resampling): shear per plane, deskewed plane spacing and
shape, and the rotations between the raw, objective and coverslip frames.

NumPy only: ingest and the HPC layer size and place volumes with these before any pixel is read."""

from __future__ import annotations

import math

import numpy as np

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


def frame_rotation_matrix(angle_deg: float, scan_axis: str = "x") -> np.ndarray:
    """3×3 rotation taking objective-frame (z, y, x) µm vectors to the coverslip frame of a scan along
    ``scan_axis``: about Y for scan axis x (:func:`objective_to_coverslip_matrix`), about X for scan axis y
    (the same matrix with y and x swapped), as :func:`llsmflow.deskew.deskew_rotate` rotates the volume."""
    rotation = objective_to_coverslip_matrix(angle_deg)
    if scan_axis == "x":
        return rotation
    if scan_axis == "y":
        swap = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        return swap @ rotation @ swap
    raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")


def checked_stage_scan(shape, dz_um, dx_um, dy_um, scan_axis: str, min_planes: int = 1) -> float:
    """Check a raw stage-scan stack's shape (ZYX, at least ``min_planes`` planes), voxel sizes (µm) and scan
    axis the way every deskew does; returns ``dy_um`` (``dx_um`` when None)."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise LlsmflowError(f"raw stack has shape {shape}; expected a 3-D ZYX stack")
    if shape[0] < min_planes:
        # a single plane (e.g. a 2-D image) has nothing to shear against: almost surely the wrong file
        raise LlsmflowError(
            f"raw stack has shape {shape}; expected a stage-scan stack of at least {min_planes} planes (ZYX)"
        )
    dy_um = dx_um if dy_um is None else dy_um
    require_positive_voxel_size((dz_um, dy_um, dx_um), what="voxel size (dz, dy, dx)")
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")
    return dy_um


def _deskew_rotate_geometry(raw_shape, dz_um, dx_um, angle_deg, dy_um, out_um, scan_axis="x"):
    """Output shape, origin (µm) and the affine (matrix, offset) from output index to raw index (k, j, i).

    raw index (k, j, i) → objective µm (k·dz', j·dy, (i + k·s)·dx) → coverslip µm by the rotation about Y;
    the output grid is the bounding box of the raw stack's corners at ``out_um`` spacing. The inverse keeps Y
    exactly decoupled from (Z, X) (inverted as a 2×2 block and a scale). For ``scan_axis="y"`` the shear is
    along y (``(k·dz', (j + k·s)·dy, i·dx)``) and the rotation about X: the same matrices with y and x swapped.
    """
    if scan_axis == "y":
        return _deskew_rotate_geometry_y(raw_shape, dz_um, dx_um, angle_deg, dy_um, out_um)
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


def _deskew_rotate_geometry_y(raw_shape, dz_um, dx_um, angle_deg, dy_um, out_um):
    """:func:`_deskew_rotate_geometry` for scan axis y, written out (the reference for the swapped kernel)."""
    shear = shear_px_per_plane(dz_um, dy_um, angle_deg)
    dzp = deskewed_plane_spacing_um(dz_um, angle_deg)
    raw_to_obj = np.array([[dzp, 0, 0], [shear * dy_um, dy_um, 0], [0, 0, dx_um]])
    swap = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # (z, y, x) <-> (z, x, y)
    rotation = swap @ objective_to_coverslip_matrix(angle_deg) @ swap  # about X: Y = z·sin θ + y·cos θ
    raw_to_cov = rotation @ raw_to_obj
    nz, ny, nx = raw_shape
    corners = np.array([[k, j, i] for k in (0, nz - 1) for j in (0, ny - 1) for i in (0, nx - 1)], float)
    cov_corners = corners @ raw_to_cov.T
    lo, hi = cov_corners.min(axis=0), cov_corners.max(axis=0)
    out_shape = tuple(int(math.floor((h - lo_) / out_um)) + 1 for lo_, h in zip(lo, hi, strict=True))
    cov_to_raw = np.linalg.inv(raw_to_cov)
    return out_shape, tuple(float(v) for v in lo), cov_to_raw * out_um, cov_to_raw @ lo


def rotated_shape(
    raw_shape_zyx: tuple[int, int, int],
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    output_voxel_um: float | None = None,
    scan_axis: str = "x",
) -> tuple[int, int, int]:
    """ZYX shape of the volume :func:`deskew_rotate` makes from a raw stack of ``raw_shape_zyx``, from the
    geometry alone (no voxel read or resampled): its own output grid, for the same arguments (ingest checks
    a PSF against it, and the HPC layer sizes jobs with it, before any job runs)."""
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")
    dy_um = dx_um if dy_um is None else dy_um
    out_um = float(output_voxel_um or dx_um)
    nz, ny, nx = (int(n) for n in raw_shape_zyx)
    if scan_axis == "y":  # as deskew_rotate computes it: y and x swapped, the scan axis's pixel size dy
        z, x, y = rotated_shape((nz, nx, ny), dz_um, dy_um, angle_deg, dx_um, out_um, "x")
        return (z, y, x)
    out_shape, _, _, _ = _deskew_rotate_geometry(
        (nz, ny, nx), float(dz_um), float(dx_um), float(angle_deg), float(dy_um), out_um
    )
    return tuple(int(n) for n in out_shape)


def deconvolved_grid(
    raw_shape_zyx, dz_um: float, dx_um: float, dy_um: float, angle_deg: float, scan_axis: str = "x",
    rotate: bool = False,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """ZYX shape and voxel size (µm) of the volume the workflow deconvolves from a raw stack of
    ``raw_shape_zyx``: the objective-frame deskewed volume (voxel ``(dz', dy, dx)``), or with ``rotate``
    (config ``deskew.rotate``) the coverslip-frame volume on its isotropic grid of ``dx_um``
    (:func:`rotated_shape`, as :func:`llsmflow.deskew.deskew_rotate` makes it). The one choice that the
    ingest PSF check and the resource model make."""
    if rotate:
        shape = rotated_shape(raw_shape_zyx, dz_um, dx_um, angle_deg, dy_um=dy_um, scan_axis=scan_axis)
        return shape, (float(dx_um),) * 3
    scan_pixel_um = dx_um if scan_axis == "x" else dy_um
    shape = deskewed_shape(raw_shape_zyx, dz_um, scan_pixel_um, angle_deg, scan_axis)
    return shape, (deskewed_plane_spacing_um(dz_um, angle_deg), float(dy_um), float(dx_um))
