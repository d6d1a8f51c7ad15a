"""Register the reference tiles and optimise tile positions (thin wrapper over llsmflow.stitch)."""

import csv

import numpy as np

from llsmflow.io import atomic_output
from llsmflow.run.steps import StepRecorder
from llsmflow.stitch.optimise import register_tiles
from llsmflow.stitch.tiles import tile_from_deskewed
from llsmflow.stitch.transforms import write_transforms

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    tiles = [
        tile_from_deskewed(path, name, p.nominal_origins_um[name])
        for name, path in zip(p.tile_names, snakemake.input.tiles, strict=True)
    ]
    transforms = register_tiles(
        tiles,
        tiles[0].voxel_size_um,
        min_quality=p.min_quality,
        upsample_factor=p.upsample_factor,
        max_shift_um=p.max_shift_um,
    )
    rows = [
        {
            "path": t.path,
            "x_um": t.origin_um[2],
            "y_um": t.origin_um[1],
            "z_um": t.origin_um[0],
            "tile": t.key,
        }
        for t in tiles
    ]
    # the csv module, not pandas: this job needs no DataFrame, and pandas costs 0.3 s to import
    with atomic_output(snakemake.output.tiles_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_transforms(snakemake.output.transforms, transforms)
    qualities = [pair["quality"] for pair in transforms["pairs"]]
    step.note(pairs=len(qualities), min_quality=float(np.min(qualities)) if qualities else None)
