# deskew: workflow/scripts/deskew.py → llsmflow.deskew
rule deskew:
    """Shear one raw stage-scan stack into the objective frame, or with deskew.rotate into the coverslip frame
    (float32 OME-TIFF with voxel sizes)."""
    input:
        raw=raw_stack,
    output:
        volume=intermediate(WORK / "deskewed" / "{sample}.ome.tif"),
        step=step_record("deskew/{sample}.json"),
    log:
        log_file("deskew/{sample}.log"),
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        **gpu_partition(),
        mem_mb=step_mem_mb("deskew"),
        runtime=step_runtime("deskew"),
    params:
        dz_um=ACQ.dz_um,
        dx_um=ACQ.dx_um,
        dy_um=ACQ.dy_um,
        angle_deg=ACQ.angle_deg,
        scan_axis=ACQ.scan_axis,
        fill_value=config["deskew"]["fill_value"],
        rotate=config["deskew"]["rotate"],
        raw_channel=lambda wildcards: raw_selector(wildcards.sample)["channel"],
        raw_timepoint=lambda wildcards: raw_selector(wildcards.sample)["timepoint"],
    script:
        "../scripts/deskew.py"
