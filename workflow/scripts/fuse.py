"""Fuse the tiles of one channel and timepoint (thin wrapper over llsmflow.stitch.fuse_to_zarr)."""

import logging

from llsmflow.io import read_volume
from llsmflow.provenance import StepRecorder
from llsmflow.stitch import Tile, fuse_to_zarr, read_transforms

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    transforms = read_transforms(snakemake.input.transforms)
    tiles, positions = [], {}
    for name, path in zip(p.tile_names, snakemake.input.tiles, strict=True):
        volume = read_volume(path)
        entry = transforms["tiles"][name]
        tiles.append(
            Tile(
                key=name,
                origin_um=tuple(entry["nominal_origin_um"]),
                shape=volume.data.shape,
                data=volume.data,
                path=str(path),
            )
        )
        positions[name] = tuple(entry["origin_um"])
    log = logging.getLogger("llsmflow.stitch")
    fuse_to_zarr(
        tiles,
        positions,
        transforms["voxel_size_um"],
        snakemake.output.fused,
        blend_width_um=p.blend_width_um,
        chunks=tuple(p.chunks),
        progress=lambda done, total: log.info("fused chunk %d/%d", done, total),
    )
    step.note(tiles=len(tiles))
