"""Deskew one raw stack, or deskew and rotate it to the coverslip frame (thin wrapper over llsmflow.deskew)."""

from llsmflow.io import read_volume, write_volume
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    # a sample of a multi-volume file (CZI, hyperstack) is its (channel, timepoint) volume; None: the whole file
    raw = read_volume(snakemake.input.raw, channel=p.raw_channel, timepoint=p.raw_timepoint)
    if p.rotate:
        from llsmflow.deskew.rotate import deskew_rotate

        # coverslip frame, isotropic voxels of dx, one interpolation; origin: coverslip-frame position (µm)
        # of voxel (0, 0, 0) relative to the raw stack's first voxel
        data, voxel_size_um, origin_offset_um = deskew_rotate(
            raw.data, p.dz_um, p.dx_um, p.angle_deg, dy_um=p.dy_um, scan_axis=p.scan_axis,
            fill_value=p.fill_value,
        )
    else:
        from llsmflow.deskew.shear import deskew

        result = deskew(
            raw.data, p.dz_um, p.dx_um, p.angle_deg, dy_um=p.dy_um, scan_axis=p.scan_axis,
            fill_value=p.fill_value,
        )
        data, voxel_size_um, origin_offset_um = result.data, result.voxel_size_um, result.origin_offset_um
    write_volume(
        snakemake.output.volume,
        data,
        voxel_size_um,
        {
            "origin_offset_um": origin_offset_um,
            "frame": "coverslip" if p.rotate else "objective",
            "source": snakemake.input.raw,
            "source_channel": p.raw_channel,
            "source_timepoint": p.raw_timepoint,
            "raw_shape_zyx": raw.data.shape,
            "deskew": {
                "dz_um": p.dz_um,
                "dx_um": p.dx_um,
                "dy_um": p.dy_um,
                "angle_deg": p.angle_deg,
                "scan_axis": p.scan_axis,
                "rotate": bool(p.rotate),
            },
        },
    )
    step.note(
        shape_in=raw.data.shape, shape_out=data.shape, voxel_size_um=voxel_size_um, rotate=bool(p.rotate)
    )
