"""Track particles of one channel over the fused timepoints (thin wrapper over llsmflow.track)."""

import logging

from llsmflow.io import atomic_output
from llsmflow.progress import progress_logger
from llsmflow.run.steps import StepRecorder
from llsmflow.stitch.fused import read_fused
from llsmflow.track import (
    ensemble_msd,
    fit_diffusion,
    import_trackpy,
    plot_msd,
    plot_tracks,
    summarise_tracks,
    track_particles,
    write_tracks,
)

# this job's own fresh interpreter: trackpy's scipy.stats, which tracking never uses, runs only if used
import_trackpy(defer_unused=True)

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    log = logging.getLogger("llsmflow.track")
    stores = list(snakemake.input.fused)
    _, origin, voxel = read_fused(stores[0])
    tracks = track_particles(
        lambda t: read_fused(stores[t])[0],
        voxel,
        p.time_interval_s,
        n_frames=len(stores),
        # timepoint numbers and real times: a gap counts as the frames it lasted, t_s is each frame's real time
        frame_numbers=p.timepoints,
        times_s=p.frame_times_s,
        diameter_um=p.diameter_um,
        search_range_um=p.search_range_um,
        memory=p.memory,
        min_track_length=p.min_track_length,
        min_mass=p.min_mass,
        percentile=p.percentile,
        origin_um=origin,
        progress=progress_logger(log, "detected frame", interval_s=10),
    )
    write_tracks(tracks, snakemake.output.parquet, snakemake.output.csv)
    summary = summarise_tracks(tracks, p.time_interval_s)
    msd = ensemble_msd(tracks, p.time_interval_s)
    fit = fit_diffusion(msd)
    for table, csv_path, parquet_path in (
        (summary, snakemake.output.summary, snakemake.output.summary_parquet),
        (msd, snakemake.output.msd, snakemake.output.msd_parquet),
    ):
        with atomic_output(csv_path) as tmp:
            table.to_csv(tmp, index=False)
        with atomic_output(parquet_path) as tmp:
            table.to_parquet(tmp, index=False)
    projection = read_fused(stores[0])[0].max(axis=0)
    plot_tracks(tracks, projection, voxel, origin, snakemake.output.tracks_png)
    plot_msd(msd, fit, snakemake.output.msd_png)
    step.note(
        tracks=int(tracks["particle"].nunique()), points=len(tracks), timepoints=list(p.timepoints), **fit
    )
