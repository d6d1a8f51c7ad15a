# archive: workflow/scripts/archive.py → llsmflow.archive


rule archive:
    """The dataset archive: OME-Zarr image (TCZYX, physical scales, channels), tracks as Parquet, checksums."""
    input:
        fused=expand(
            WORK / "fused" / "ch{channel}-t{timepoint:04d}.zarr",
            channel=CHANNELS,
            timepoint=TIMEPOINTS,
        ),
        tables=lambda wildcards: list(track_tables().values()),
        acquisition=WORK / "acquisition.json",
        transforms=WORK / "stitch" / "transforms.json",
        rembi=rembi_input,
    output:
        archive=directory(RESULTS / f"{DATASET}.ome.zarr"),
        step=step_record("archive.json"),
    log:
        log_file("archive.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 2
    resources:
        mem_mb=step_mem_mb("archive", floor_mb=2000),
        runtime=step_runtime("archive"),
    params:
        channels=CHANNELS,
        timepoints=TIMEPOINTS,
        table_names=lambda wildcards: list(track_tables()),
        channel_names=ACQ.channel_names,
        emission_nm=[c.get("emission_nm") for c in ACQ.channels],
        time_interval_s=ACQ.time_interval_s,
        # the real time of every frame (gaps accepted by ingest.allow_missing_timepoints) and whether tracking
        # ran (TRACKING_SKIPPED: track.smk), recorded in the archive's llsmflow attributes
        frame_times_s=ACQ.frame_times_s,
        missing_timepoints=ACQ.missing_timepoints,
        tracking_skipped=lambda wildcards: TRACKING_SKIPPED,
        ngff_version=config["archive"]["ngff_version"],
        chunks=config["archive"]["chunks"],
        raw_files=RAW_FILES,
        processing=lambda wildcards: {
            "deskew": config["deskew"],
            "deconvolution": config["deconvolution"],
            "stitch": config["stitch"],
            "track": config["track"],
        },
    script:
        "../scripts/archive.py"
