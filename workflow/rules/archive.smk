rule archive:
    """Write the fused TCZYX dataset as OME-Zarr with physical scales, channel names and acquisition metadata."""
    input:
        fused=expand(
            WORK / "fused" / "ch{channel}-t{timepoint:04d}.zarr",
            channel=CHANNELS,
            timepoint=TIMEPOINTS,
        ),
        acquisition=WORK / "acquisition.json",
        transforms=WORK / "stitch" / "transforms.json",
    output:
        archive=directory(RESULTS / f"{DATASET}.ome.zarr"),
        step=step_record("archive.json"),
    log:
        log_file("archive.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        channels=CHANNELS,
        timepoints=TIMEPOINTS,
        channel_names=ACQ.channel_names,
        emission_nm=[c.get("emission_nm") for c in ACQ.channels],
        time_interval_s=ACQ.time_interval_s,
        ngff_version=config["archive"]["ngff_version"],
        chunks=config["archive"]["chunks"],
        processing=lambda wildcards: {
            "deskew": config["deskew"],
            "deconvolution": config["deconvolution"],
            "stitch": config["stitch"],
        },
    script:
        "../scripts/archive.py"
