rule qc_tile:
    """Maximum projections of one tile and channel: raw, deskewed and deconvolved side by side."""
    input:
        raw=lambda wildcards: str(
            ACQ.sample_path(
                wildcards.tile, int(wildcards.channel), STITCH["reference_timepoint"]
            )
        ),
        deskewed=lambda wildcards: WORK
        / "deskewed"
        / f"{sample_id(wildcards.tile, wildcards.channel, STITCH['reference_timepoint'])}.ome.tif",
        deconvolved=lambda wildcards: WORK
        / "deconvolved"
        / f"{sample_id(wildcards.tile, wildcards.channel, STITCH['reference_timepoint'])}.ome.tif",
    output:
        png=RESULTS / "qc" / "tile_{tile}_ch{channel}.png",
        step=step_record("qc_tile/{tile}-ch{channel}.json"),
    log:
        log_file("qc_tile/{tile}-ch{channel}.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        mem_mb=step_mem_mb("qc_tile", floor_mb=1000),
        runtime=step_runtime("qc_tile"),
    script:
        "../scripts/qc_tile.py"


rule qc_mosaic:
    """Maximum projection of the fused mosaic per channel with the registered tile outlines."""
    input:
        archive=RESULTS / f"{DATASET}.ome.zarr",
        transforms=WORK / "stitch" / "transforms.json",
    output:
        png=RESULTS / "qc" / "mosaic.png",
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
