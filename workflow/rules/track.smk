# track: workflow/scripts/track.py → llsmflow.track

from snakemake.logging import logger

# One timepoint: nothing to link. No channel is tracked (TRACK_CHANNELS is emptied here, before qc.smk and the
# input functions of archive.smk read it), and the run log, the ingest step, the QC report and the archive say so.
TRACKING_SKIPPED = (
    f"one timepoint ({TIMEPOINTS[0]}): nothing to link, tracking skipped"
    if len(TIMEPOINTS) < 2
    else None
)
if TRACKING_SKIPPED:
    TRACK_CHANNELS = []
    if workflow.is_main_process:
        logger.warning(f"llsmflow: {TRACKING_SKIPPED}")


rule track:
    """Detect and link particles of one channel in 3-D over time (trackpy), with statistics and plots."""
    input:
        fused=lambda wildcards: [
            WORK / "fused" / f"ch{wildcards.channel}-t{t:04d}.zarr" for t in TIMEPOINTS
        ],
    output:
        parquet=RESULTS / "tracks" / "ch{channel}.parquet",
        csv=RESULTS / "tracks" / "ch{channel}.csv",
        summary=RESULTS / "tracks" / "ch{channel}_summary.csv",
        summary_parquet=RESULTS / "tracks" / "ch{channel}_summary.parquet",
        msd=RESULTS / "tracks" / "ch{channel}_msd.csv",
        msd_parquet=RESULTS / "tracks" / "ch{channel}_msd.parquet",
        tracks_png=report(
            RESULTS / "tracks" / "ch{channel}_tracks.png",
            caption="../report/tracks.rst",
            category="Tracking",
            labels={"channel": "{channel}", "plot": "tracks"},
        ),
        msd_png=report(
            RESULTS / "tracks" / "ch{channel}_msd.png",
            caption="../report/msd.rst",
            category="Tracking",
            labels={"channel": "{channel}", "plot": "MSD"},
        ),
        step=step_record("track/ch{channel}.json"),
    log:
        log_file("track/ch{channel}.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        mem_mb=step_mem_mb("track"),
        runtime=step_runtime("track"),
    params:
        time_interval_s=ACQ.time_interval_s,
        # the timepoint number and real time (s) of every fused frame: a gap (ingest.allow_missing_timepoints)
        # counts as the frames it lasted, and t_s is each frame's real time
        timepoints=TIMEPOINTS,
        frame_times_s=ACQ.frame_times_s,
        diameter_um=config["track"]["diameter_um"],
        search_range_um=config["track"]["search_range_um"],
        memory=config["track"]["memory"],
        min_track_length=config["track"]["min_track_length"],
        min_mass=config["track"]["min_mass"],
        percentile=config["track"]["percentile"],
    script:
        "../scripts/track.py"
