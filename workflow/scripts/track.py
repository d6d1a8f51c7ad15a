"""Track particles of one channel in the archive (thin wrapper over llsmflow.track)."""

import logging

from llsmflow.archive import read_ome_zarr
from llsmflow.io import atomic_output
from llsmflow.provenance import StepRecorder
from llsmflow.track import (
    ensemble_msd,
    fit_diffusion,
    plot_msd,
    plot_tracks,
    summarise_tracks,
    track_particles,
    write_tracks,
)

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    channel = int(snakemake.wildcards.channel)
    image, meta = read_ome_zarr(snakemake.input.archive)
    voxel, interval = meta["voxel_size_um"], meta["time_interval_s"]
    log = logging.getLogger("llsmflow.track")
    frames = [image[t, channel] for t in range(image.shape[0])]
    tracks = track_particles(
        (f.compute() for f in frames),
        voxel,
        interval,
        diameter_um=p.diameter_um,
        search_range_um=p.search_range_um,
        memory=p.memory,
        min_track_length=p.min_track_length,
        min_mass=p.min_mass,
        percentile=p.percentile,
        origin_um=meta["origin_um"],
        progress=lambda i, n: log.info("detected frame %d/%d", i, n),
    )
    write_tracks(tracks, snakemake.output.parquet, snakemake.output.csv)
    summary = summarise_tracks(tracks, interval)
    msd = ensemble_msd(tracks, interval)
    fit = fit_diffusion(msd)
    for frame, path in ((summary, snakemake.output.summary), (msd, snakemake.output.msd)):
        with atomic_output(path) as tmp:
            frame.to_csv(tmp, index=False)
    projection = frames[0].max(axis=0).compute()
    plot_tracks(tracks, projection, voxel, meta["origin_um"], snakemake.output.tracks_png)
    plot_msd(msd, fit, snakemake.output.msd_png)
    step.note(tracks=int(tracks["particle"].nunique()), points=len(tracks), **fit)
