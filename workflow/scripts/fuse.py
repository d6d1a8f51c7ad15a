"""Fuse the tiles of one channel and timepoint (thin wrapper over llsmflow.stitch.fuse_to_zarr)."""

import logging

from llsmflow.hpc.cluster import dask_cluster
from llsmflow.progress import progress_logger
from llsmflow.run.steps import StepRecorder
from llsmflow.stitch.fusion import fuse_to_zarr
from llsmflow.stitch.tiles import tile_from_deskewed
from llsmflow.stitch.transforms import positions_from_transforms, read_transforms

with StepRecorder.for_workflow_job(snakemake) as step, dask_cluster(snakemake.config["dask"]) as client:
    p = snakemake.params
    transforms = read_transforms(snakemake.input.transforms)
    tiles = [
        tile_from_deskewed(
            path, name, p.nominal_origins_um[name], lazy=p.max_memory_gb is not None or client is not None
        )
        for name, path in zip(p.tile_names, snakemake.input.tiles, strict=True)
    ]
    log = logging.getLogger("llsmflow.stitch")
    fuse_to_zarr(
        tiles,
        positions_from_transforms(transforms),
        transforms["voxel_size_um"],
        snakemake.output.fused,
        blend_width_um=p.blend_width_um,
        chunks=tuple(p.chunks),
        max_memory_gb=p.max_memory_gb,
        client=client,
        progress=progress_logger(log, "fused chunk", interval_s=10),
    )
    step.note(tiles=len(tiles), dask_cluster=snakemake.config["dask"]["cluster"])
