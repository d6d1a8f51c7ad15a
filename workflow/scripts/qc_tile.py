"""Raw / deskewed / deconvolved maximum projections of one tile and channel (thin wrapper over llsmflow.qc).

The deskewed volume is made here again from the raw stack, as the deskew_deconvolve job made it (the same
function, llsmflow.run.batch.deskew_raw): it never reaches the disk, and deskewing one stack costs tens of ms.
"""

from llsmflow.io import read_volume
from llsmflow.qc.previews import save_projection_grid, tile_projection_rows
from llsmflow.qc.report import channel_names
from llsmflow.run.batch import Geometry, deskew_raw
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    raw = read_volume(p.raw, channel=p.raw_channel, timepoint=p.raw_timepoint).data
    geometry = Geometry(p.dz_um, p.dx_um, p.dy_um, p.angle_deg, p.scan_axis, p.fill_value, bool(p.rotate))
    deskewed = deskew_raw(raw, geometry, workers=snakemake.threads)
    deconvolved = read_volume(snakemake.input.deconvolved)
    rows = tile_projection_rows(
        raw, deskewed.data, deconvolved.data, deskewed.voxel_size_um, scan_axis=p.scan_axis
    )
    channel = int(snakemake.wildcards.channel)
    name = channel_names({"channels": p.channels}).get(channel, f"channel {channel}")
    title = f"tile {snakemake.wildcards.tile}, {name}"
    save_projection_grid(rows, snakemake.output.png, title)
    step.note(shape_raw=raw.shape, shape_deskewed=deskewed.data.shape)
