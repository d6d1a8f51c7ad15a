"""The live archive of ``llsmflow watch``: an OME-Zarr image that grows by timepoints as they are fused.

``work/<dataset>/watch/live.ome.zarr`` holds the fused timepoints 0, 1, … that exist so far, appended in
order with :func:`llsmflow.archive.append.append_timepoint` (chunks first, then each level's metadata renamed
into place: readable by a viewer at every moment). It is a preview: the dataset archive
(``results/<dataset>/<dataset>.ome.zarr``, with the tracks and checksums) is written by the final run, as a
batch run writes it. Timepoints are appended in order, so a timepoint fused before an earlier one waits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def live_archive_path(layout) -> Path:
    return layout.work / "watch" / "live.ome.zarr"


def live_timepoints(path: Path) -> int:
    """Timepoints in the live archive (0 when there is none)."""
    if not (path / "zarr.json").is_file() and not (path / ".zgroup").is_file():
        return 0
    import zarr

    from llsmflow.archive.append import level_paths

    return int(zarr.open_array(str(path / level_paths(path)[0]), mode="r").shape[0])


def grow_live_archive(layout, acq, config: dict) -> int:
    """Append every fused timepoint that follows the live archive's last one; returns its timepoints."""
    from llsmflow.stitch.fused import stack_fused

    path = live_archive_path(layout)
    channels = range(len(acq.channels))
    t = live_timepoints(path)
    while all(layout.fused_done(c, t) and layout.fused(c, t).is_dir() for c in channels):
        image, origin_um, voxel_size_um = stack_fused([[layout.fused(c, t) for c in channels]])
        if t == 0:
            from llsmflow.archive.ome_zarr import write_ome_zarr

            path.parent.mkdir(parents=True, exist_ok=True)
            write_ome_zarr(
                path,
                image,
                voxel_size_um,
                acq.time_interval_s,
                acq.channel_names,
                wavelengths_nm=[c.get("emission_nm") for c in acq.channels],
                ngff_version=config["archive"]["ngff_version"],
                chunks_zyx=tuple(config["archive"]["chunks"]),
                origin_um=origin_um,
            )
        else:
            from llsmflow.archive.append import append_timepoint

            append_timepoint(path, np.asarray(image[0]))
        t += 1
    return t
