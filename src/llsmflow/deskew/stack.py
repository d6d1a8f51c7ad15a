"""One raw stage-scan stack into the frame a run asks for: :func:`deskew_stack`.

The workflow's jobs, the QC previews and the one-call deskew + deconvolution all choose between the objective
frame (:func:`llsmflow.deskew.deskew`) and the coverslip frame (:func:`llsmflow.deskew.deskew_rotate`) by one
setting (config ``deskew.rotate``); this is that choice, made in one place, with one result type for both.
"""

from __future__ import annotations

import numpy as np

from llsmflow.deskew.frames import shear_px_per_plane
from llsmflow.deskew.shear import DeskewResult


def scan_shear_px_per_plane(
    dz_um: float, dx_um: float, dy_um: float | None, angle_deg: float, scan_axis: str
):
    """Shear (pixels per plane) along the stage-scan axis: the pixel size of that axis (``dy_um`` for a Y
    scan, ``dx_um`` when ``dy_um`` is None) in :func:`llsmflow.deskew.shear_px_per_plane`."""
    scan_pixel_um = dx_um if scan_axis == "x" else (dy_um or dx_um)
    return shear_px_per_plane(dz_um, scan_pixel_um, angle_deg)


def deskew_stack(
    raw_zyx: np.ndarray,
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    scan_axis: str = "x",
    fill_value: float = 0.0,
    *,
    rotate: bool = False,
    output_voxel_um: float | None = None,
    workers: int | None = None,
) -> DeskewResult:
    """Deskew a raw ZYX stack into the objective frame, or (``rotate=True``) into the coverslip frame.

    Parameters are those of :func:`llsmflow.deskew.deskew`; ``rotate`` and ``output_voxel_um`` (isotropic
    voxel of the coverslip frame, µm; default ``dx_um``) those of :func:`llsmflow.deskew.deskew_rotate`.

    Returns
    -------
    DeskewResult
        The volume (float32, ZYX), its voxel size and origin offset (µm) in the chosen frame, and the shear of
        the deskew (pixels per plane along the scan axis), whichever frame was chosen.
    """
    if rotate:
        from llsmflow.deskew.rotate import deskew_rotate

        data, voxel, origin = deskew_rotate(
            raw_zyx, dz_um, dx_um, angle_deg, dy_um=dy_um, output_voxel_um=output_voxel_um,
            fill_value=fill_value, scan_axis=scan_axis, workers=workers,
        )  # fmt: skip
        shear = scan_shear_px_per_plane(dz_um, dx_um, dy_um, angle_deg, scan_axis)
        return DeskewResult(data, tuple(voxel), tuple(origin), shear)
    from llsmflow.deskew.shear import deskew

    return deskew(
        raw_zyx,
        dz_um,
        dx_um,
        angle_deg,
        dy_um=dy_um,
        scan_axis=scan_axis,
        fill_value=fill_value,
        workers=workers,
    )
