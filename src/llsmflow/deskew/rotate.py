"""Deskew + rotation to the coverslip frame (isotropic voxels) in one interpolation: a sparse bilinear map
of the (Z, X) plane applied to all camera rows at once, with the general affine resampler as reference."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage, sparse

from llsmflow.deskew.frames import (
    _deskew_rotate_geometry,
    checked_stage_scan,
)
from llsmflow.deskew.workers import _run_parallel, _split, default_workers
from llsmflow.errors import LlsmflowError, require_positive_voxel_size

# Output voxels per Z block of the combined deskew + rotation (bounds the per-thread temporary: 4 MiB float32).
_BLOCK_VOXELS = 1 << 20


def deskew_rotate(
    raw_zyx: np.ndarray,
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    output_voxel_um: float | None = None,
    fill_value: float = 0.0,
    scan_axis: str = "x",
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
        Raw stack, ZYX, any real dtype (as for :func:`deskew`).
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
    scan_axis : {"x", "y"}
        Stage scan axis. ``"y"`` (Zeiss LLS7, OPM) is the same computation on the stack with y and x swapped
        (a view; the rotation is then about X), the result swapped back: equal to the general affine
        reference for scan axis y (:func:`_deskew_rotate_reference`).
    workers : int, optional
        Threads; defaults to :func:`default_workers`.

    Returns
    -------
    volume : numpy.ndarray
        float32, in the coverslip frame (Z normal to the coverslip, the scan axis along the scan), shape of the
        bounding box of the imaged volume at ``output_voxel_um`` spacing.
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
    dy_um = checked_stage_scan(raw.shape, dz_um, dx_um, dy_um, scan_axis)
    if scan_axis == "y":
        # y and x swapped: the scan axis becomes x (its pixel size dy), the output is swapped back
        out, voxel, origin = deskew_rotate(
            raw.transpose(0, 2, 1),
            dz_um,
            dy_um,
            angle_deg,
            dy_um=dx_um,
            output_voxel_um=float(output_voxel_um or dx_um),
            fill_value=fill_value,
            workers=workers,
        )
        return np.ascontiguousarray(out.transpose(0, 2, 1)), voxel, (origin[0], origin[2], origin[1])
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
    raw_zyx, dz_um, dx_um, angle_deg, dy_um=None, output_voxel_um=None, fill_value=0.0, scan_axis="x"
):
    """:func:`deskew_rotate` by ``scipy.ndimage.affine_transform`` (order 1): the reference for the tests."""
    raw = np.asarray(raw_zyx, dtype=np.float32)
    dy_um = dx_um if dy_um is None else dy_um
    out_um = float(output_voxel_um or dx_um)
    out_shape, origin, matrix, offset = _deskew_rotate_geometry(
        raw.shape, dz_um, dx_um, angle_deg, dy_um, out_um, scan_axis
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


def rotated_valid_mask(
    raw_shape_zyx: tuple[int, int, int],
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    output_voxel_um: float | None = None,
    scan_axis: str = "x",
    margin_px: int = 1,
) -> np.ndarray:
    """Where a :func:`deskew_rotate` volume holds data: True where its raw position lies inside the raw stack.

    The rule is :func:`deskew_rotate`'s own (a voxel is inside when its raw plane and scan-axis column lie in
    ``[0, n − 1]``); outside, the volume holds ``fill_value`` (the empty wedges of the coverslip frame). The
    mask is the same for every row across the scan, so it is returned as a read-only broadcast view of one
    plane (no memory per voxel). ``margin_px`` output voxels are dropped at the edge of the valid region
    (erosion in the plane), as :func:`llsmflow.deskew.deskewed_valid_mask` does, to keep clear of the
    interpolation at the border.

    Returns
    -------
    numpy.ndarray
        bool, of the shape :func:`deskew_rotate` gives for ``raw_shape_zyx``.
    """
    if scan_axis not in ("x", "y"):
        raise LlsmflowError(f"scan axis {scan_axis!r} is invalid; expected 'x' or 'y'")
    margin = int(margin_px)
    if margin < 0:
        raise LlsmflowError(f"margin_px={margin_px!r} is invalid; expected a non-negative number of pixels")
    dy_um = dx_um if dy_um is None else dy_um
    out_um = float(output_voxel_um or dx_um)
    nz, ny, nx = (int(n) for n in raw_shape_zyx)
    if scan_axis == "y":  # as deskew_rotate computes it: y and x swapped, the scan axis's pixel size dy
        mask = rotated_valid_mask((nz, nx, ny), dz_um, dy_um, angle_deg, dx_um, out_um, "x", margin)
        return mask.transpose(0, 2, 1)
    out_shape, _, matrix, offset = _deskew_rotate_geometry(
        (nz, ny, nx), float(dz_um), float(dx_um), float(angle_deg), float(dy_um), out_um
    )
    zz = np.arange(out_shape[0], dtype=float)[:, None]
    xx = np.arange(out_shape[2], dtype=float)[None, :]
    k = matrix[0, 0] * zz + matrix[0, 2] * xx + offset[0]
    i = matrix[2, 0] * zz + matrix[2, 2] * xx + offset[2]
    plane = (k >= 0) & (k <= nz - 1) & (i >= 0) & (i <= nx - 1)
    if margin:
        plane = ndimage.binary_erosion(plane, iterations=margin, border_value=1)
    return np.broadcast_to(plane[:, None, :], out_shape)
