"""Deskew one raw stack (thin wrapper over llsmflow.deskew)."""

from llsmflow.deskew.shear import deskew
from llsmflow.io import read_volume, write_volume
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    # a sample of a multi-volume file (CZI, hyperstack) is its (channel, timepoint) volume; None: the whole file
    raw = read_volume(snakemake.input.raw, channel=p.raw_channel, timepoint=p.raw_timepoint)
    result = deskew(
        raw.data, p.dz_um, p.dx_um, p.angle_deg, dy_um=p.dy_um, scan_axis=p.scan_axis, fill_value=p.fill_value
    )
    write_volume(
        snakemake.output.volume,
        result.data,
        result.voxel_size_um,
        {
            "origin_offset_um": result.origin_offset_um,
            "source": snakemake.input.raw,
            "source_channel": p.raw_channel,
            "source_timepoint": p.raw_timepoint,
            "raw_shape_zyx": raw.data.shape,
            "deskew": {
                "dz_um": p.dz_um,
                "dx_um": p.dx_um,
                "angle_deg": p.angle_deg,
                "scan_axis": p.scan_axis,
            },
        },
    )
    step.note(shape_in=raw.data.shape, shape_out=result.data.shape, voxel_size_um=result.voxel_size_um)
