# stitch: workflow/scripts/register.py, fuse.py → llsmflow.stitch
rule register:
    """Register overlapping tiles once (reference channel and timepoint) and optimise all positions."""
    input:
        tiles=reference_tiles,
    output:
        tiles_csv=WORK / "stitch" / "tiles.csv",
        transforms=WORK / "stitch" / "transforms.json",
        step=step_record("register.json"),
    log:
        log_file("register.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        mem_mb=step_mem_mb("register"),
        runtime=step_runtime("register"),
    params:
        tile_names=TILES,
        nominal_origins_um=NOMINAL_ORIGINS_UM,
        min_quality=STITCH["min_quality"],
        upsample_factor=STITCH["upsample_factor"],
        max_shift_um=STITCH["max_shift_um"],
    script:
        "../scripts/register.py"


rule fuse:
    """Fuse the tiles of one channel and timepoint at their registered positions, chunk by chunk, into Zarr."""
    input:
        tiles=tiles_of,
        transforms=WORK / "stitch" / "transforms.json",
    output:
        fused=intermediate(directory(WORK / "fused" / "ch{channel}-t{timepoint}.zarr")),
        step=step_record("fuse/ch{channel}-t{timepoint}.json"),
    log:
        log_file("fuse/ch{channel}-t{timepoint}.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 2
    resources:
        mem_mb=step_mem_mb("fuse"),
        runtime=step_runtime("fuse"),
    params:
        tile_names=TILES,
        nominal_origins_um=NOMINAL_ORIGINS_UM,
        blend_width_um=STITCH["blend_width_um"],
        max_memory_gb=STITCH["max_memory_gb"],
        chunks=STITCH["chunks"],
    script:
        "../scripts/fuse.py"
