"""Fuse the tiles of every channel of one timepoint (thin wrapper over llsmflow.stitch.fuse_to_zarr).

One channel after the other: a channel's tiles are read, fused and dropped before the next channel's are read,
so the job needs one channel's memory; imports, the transforms and the dask cluster are paid once per
timepoint instead of once per channel. Each channel's store is written under a temporary name and renamed
when complete (fuse_to_zarr), and the step record only once every channel is: an interrupted job leaves no
store, nor record, that looks complete.
"""

import logging
import time

from llsmflow.hpc.cluster import dask_cluster
from llsmflow.progress import progress_logger
from llsmflow.run.steps import StepRecorder
from llsmflow.stitch.fusion import fuse_to_zarr
from llsmflow.stitch.tiles import tile_from_deskewed
from llsmflow.stitch.transforms import positions_from_transforms, read_transforms

with StepRecorder.for_workflow_job(snakemake) as step, dask_cluster(snakemake.config["dask"]) as client:
    p = snakemake.params
    transforms = read_transforms(snakemake.input.transforms)
    positions = positions_from_transforms(transforms)
    lazy = p.max_memory_gb is not None or client is not None
    log = logging.getLogger("llsmflow.stitch")
    n = len(p.tile_names)
    paths = list(snakemake.input.tiles)  # channel by channel (workflow/rules/common.smk fuse_tiles)
    outputs = list(snakemake.output.fused)
    for i, (channel, output) in enumerate(zip(p.channels, outputs, strict=True)):
        t0 = time.perf_counter()
        tiles = [
            tile_from_deskewed(path, name, p.nominal_origins_um[name], lazy=lazy)
            for name, path in zip(p.tile_names, paths[i * n : (i + 1) * n], strict=True)
        ]
        fuse_to_zarr(
            tiles,
            positions,
            transforms["voxel_size_um"],
            output,
            blend_width_um=p.blend_width_um,
            chunks=tuple(p.chunks),
            max_memory_gb=p.max_memory_gb,
            client=client,
            threads=snakemake.threads,  # what the rule declares (its memory request assumes as many chunks)
            progress=progress_logger(log, f"ch{channel} fused chunk", interval_s=10),
        )
        del tiles  # one channel's tiles in memory at a time
        seconds = round(time.perf_counter() - t0, 3)
        step.add_volume({"channel": int(channel), "output": str(output), "seconds": seconds, "tiles": n})
        log.info("fused channel %s into %s", channel, output)
    step.note(tiles=n, channels=len(outputs), dask_cluster=snakemake.config["dask"]["cluster"])
