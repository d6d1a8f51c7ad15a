"""Fused mosaic projection with registered tile outlines and pair qualities (thin wrapper over llsmflow.qc)."""

from pathlib import Path

from llsmflow.archive.read import max_projection_yx
from llsmflow.qc.previews import save_mosaic
from llsmflow.run.steps import StepRecorder
from llsmflow.stitch.transforms import read_transforms

with StepRecorder.for_workflow_job(snakemake) as step:
    # zarr alone, chunk by chunk: this job does not pay ome-zarr-py's and dask's import (issue 18)
    projection, meta = max_projection_yx(snakemake.input.archive, t=0, c=0)
    transforms = read_transforms(snakemake.input.transforms)
    shapes = {name: entry.get("shape", [0, 0, 0]) for name, entry in transforms["tiles"].items()}
    tiles = {name: (entry["origin_um"], shapes[name]) for name, entry in transforms["tiles"].items()}
    save_mosaic(
        projection,
        meta["origin_um"],
        meta["voxel_size_um"],
        tiles,
        snakemake.output.png,
        title=f"{Path(snakemake.input.archive).name}, channel {meta['channel_names'][0]}, t = 0",
        pairs=transforms.get("pairs", []),
    )
    step.note(pairs=len(transforms.get("pairs", [])))
