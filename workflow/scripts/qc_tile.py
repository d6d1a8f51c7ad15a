"""Raw / deskewed / deconvolved maximum projections of one tile and channel (thin wrapper over llsmflow.qc)."""

from llsmflow.io import read_volume
from llsmflow.provenance import StepRecorder
from llsmflow.qc import save_projection_panel

with StepRecorder.for_workflow_job(snakemake) as step:
    raw = read_volume(snakemake.input.raw).data
    deskewed = read_volume(snakemake.input.deskewed)
    deconvolved = read_volume(snakemake.input.deconvolved)
    panels = [
        ("raw (skewed), max over planes", raw.max(axis=0), 1.0),
        ("deskewed, max over z", deskewed.data.max(axis=0), 1.0),
        ("deconvolved, max over z", deconvolved.data.max(axis=0), 1.0),
    ]
    title = f"tile {snakemake.wildcards.tile}, channel {snakemake.wildcards.channel}"
    save_projection_panel(panels, snakemake.output.png, title)
