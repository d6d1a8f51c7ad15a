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
    """Fuse the tiles of every channel of one timepoint at their registered positions, chunk by chunk, into one
    Zarr store per channel: one channel after the other in one process (one channel's memory).
    """
    input:
        tiles=fuse_tiles,
        transforms=WORK / "stitch" / "transforms.json",
    output:
        fused=fused_outputs(),
        step=step_record("fuse/t{timepoint}.json"),
    log:
        log_file("fuse/t{timepoint}.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 2
    resources:
        mem_mb=step_mem_mb("fuse"),
        runtime=step_runtime("fuse"),
    params:
        channels=CHANNELS,
        tile_names=TILES,
        nominal_origins_um=NOMINAL_ORIGINS_UM,
        blend_width_um=STITCH["blend_width_um"],
        max_memory_gb=STITCH["max_memory_gb"],
        chunks=STITCH["chunks"],
    script:
        "../scripts/fuse.py"
