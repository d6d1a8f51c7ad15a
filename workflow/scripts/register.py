"""Register the reference tiles and optimise tile positions (thin wrapper over llsmflow.stitch)."""

import numpy as np
import pandas as pd

from llsmflow.io import atomic_output, read_volume, read_volume_description
from llsmflow.provenance import StepRecorder
from llsmflow.stitch import Tile, register_tiles, write_transforms

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    tiles, rows = [], []
    for name, path in zip(p.tile_names, snakemake.input.tiles, strict=True):
        volume = read_volume(path)
        offset = read_volume_description(path).get("origin_offset_um", [0.0, 0.0, 0.0])
        origin = tuple(float(a + b) for a, b in zip(p.nominal_origins_um[name], offset, strict=True))
        tiles.append(
            Tile(key=name, origin_um=origin, shape=volume.data.shape, data=volume.data, path=str(path))
        )
        rows.append(
            {"path": str(path), "x_um": origin[2], "y_um": origin[1], "z_um": origin[0], "tile": name}
        )
        voxel = volume.voxel_size_um
    transforms = register_tiles(
        tiles,
        voxel,
        min_quality=p.min_quality,
        upsample_factor=p.upsample_factor,
        max_shift_um=p.max_shift_um,
    )
    with atomic_output(snakemake.output.tiles_csv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    write_transforms(snakemake.output.transforms, transforms)
    qualities = [pair["quality"] for pair in transforms["pairs"]]
    step.note(pairs=len(qualities), min_quality=float(np.min(qualities)) if qualities else None)
