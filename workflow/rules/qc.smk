# qc: workflow/scripts/qc_tile.py, qc_mosaic.py, qc_report.py → llsmflow.qc (qc_tile deskews the reference
# timepoint's raw stack again with llsmflow.run.batch.deskew_raw: no job writes deskewed volumes to disk)
rule qc_tile:
    """Maximum projections of one tile and channel: raw, deskewed and deconvolved side by side."""
    input:
        raw=raw_inputs(
            lambda wildcards: str(
                ACQ.sample_path(
                    wildcards.tile,
                    int(wildcards.channel),
                    STITCH["reference_timepoint"],
                )
            )
        ),
        deconvolved=lambda wildcards: WORK
        / "deconvolved"
        / f"{sample_id(wildcards.tile, wildcards.channel, STITCH['reference_timepoint'])}.ome.tif",
    output:
        png=report(
            RESULTS / "qc" / "tile_{tile}_ch{channel}.png",
            caption="../report/qc_tile.rst",
            category="Tiles",
            subcategory="channel {channel}",
            labels={"tile": "{tile}", "channel": "{channel}"},
        ),
        step=step_record("qc_tile/{tile}-ch{channel}.json"),
    log:
        log_file("qc_tile/{tile}-ch{channel}.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        mem_mb=step_mem_mb("qc_tile", floor_mb=1000),
        runtime=step_runtime("qc_tile"),
    params:
        raw=lambda wildcards: str(
            ACQ.sample_path(
                wildcards.tile, int(wildcards.channel), STITCH["reference_timepoint"]
            )
        ),
        # local or a URL
        raw_channel=lambda wildcards: raw_selector(
            sample_id(wildcards.tile, wildcards.channel, STITCH["reference_timepoint"])
        )["channel"],
        raw_timepoint=lambda wildcards: raw_selector(
            sample_id(wildcards.tile, wildcards.channel, STITCH["reference_timepoint"])
        )["timepoint"],
        # the deskewed volume is made again here from the raw stack (tens of ms): no job writes it to disk
        dz_um=ACQ.dz_um,
        dx_um=ACQ.dx_um,
        dy_um=ACQ.dy_um,
        angle_deg=ACQ.angle_deg,
        scan_axis=ACQ.scan_axis,
        fill_value=config["deskew"]["fill_value"],
        rotate=config["deskew"]["rotate"],
        channels=ACQ.channels,
    script:
        "../scripts/qc_tile.py"


rule qc_mosaic:
    """Maximum projection of the fused mosaic per channel with the registered tile outlines."""
    input:
        archive=RESULTS / f"{DATASET}.ome.zarr",
        transforms=WORK / "stitch" / "transforms.json",
    output:
        png=report(
            RESULTS / "qc" / "mosaic.png",
            caption="../report/qc_mosaic.rst",
            category="Stitching",
        ),
        step=step_record("qc_mosaic.json"),
    log:
        log_file("qc_mosaic.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        mem_mb=step_mem_mb("qc_mosaic", floor_mb=1000),
        runtime=step_runtime("qc_mosaic"),
    script:
        "../scripts/qc_mosaic.py"


rule qc_report:
    """One self-contained HTML report: projections, mosaic, registration, tracks, step times, provenance."""
    input:
        tiles=[RESULTS / "qc" / f"tile_{t}_ch{c}.png" for t in TILES for c in CHANNELS],
        mosaic=RESULTS / "qc" / "mosaic.png",
        tracks=[RESULTS / "tracks" / f"ch{c}_tracks.png" for c in TRACK_CHANNELS],
        msd=[RESULTS / "tracks" / f"ch{c}_msd.png" for c in TRACK_CHANNELS],
        steps=all_step_records,
        transforms=WORK / "stitch" / "transforms.json",
        acquisition=WORK / "acquisition.json",
        archive=RESULTS / f"{DATASET}.ome.zarr",
    output:
        html=report(
            RESULTS / "qc" / "report.html",
            caption="../report/qc_report.rst",
            category="Overview",
        ),
        step=step_record("qc_report.json"),
    log:
        log_file("qc_report.log"),
    localrule: True
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        dataset=DATASET,
        tile_channels=[[t, c] for t in TILES for c in CHANNELS],
        track_channels=TRACK_CHANNELS,
        min_quality=STITCH["min_quality"],
        raw_files=RAW_FILES,
    script:
        "../scripts/qc_report.py"
