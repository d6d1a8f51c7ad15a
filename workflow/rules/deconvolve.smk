# deconvolve: workflow/scripts/prepare_psf.py, deskew_deconvolve.py → llsmflow.run.batch → llsmflow.deskew,
# llsmflow.decon (deskew and deconvolution of a job's volumes in one process; deskew has no rule of its own)
rule prepare_psf:
    """Deskew a skewed PSF (deconvolution.psf_geometry), then background-subtract, centre, normalise and
    resample a channel's PSF to the deskewed voxel size (deskew.rotate: rotated to the coverslip frame).
    """
    input:
        psf=raw_inputs(lambda wildcards: str(ACQ.psf_path(int(wildcards.channel)))),
    output:
        psf=WORK / "psf" / "ch{channel}.ome.tif",
        step=step_record("prepare_psf/ch{channel}.json"),
    log:
        log_file("prepare_psf/ch{channel}.log"),
    localrule: True
    conda:
        "../../envs/llsmflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        psf=lambda wildcards: str(ACQ.psf_path(int(wildcards.channel))),  # local or a URL
        psf_voxel_um=lambda wildcards: ACQ.channels[int(wildcards.channel)][
            "psf_voxel_size_um"
        ],
        data_voxel_um=ACQ.deskewed_voxel_size_um,
        background=config["deconvolution"]["psf_background"],
        # a skewed (stage-scanned) PSF is deskewed like the data: angle, stage step, scan axis
        geometry=config["deconvolution"]["psf_geometry"],
        angle_deg=ACQ.angle_deg,
        stage_step_um=ACQ.dz_um,
        scan_axis=ACQ.scan_axis,
        # deskew.rotate: the PSF is rotated to the coverslip frame, on the rotated volumes' isotropic grid (dx)
        rotate=config["deskew"]["rotate"],
        rotated_voxel_um=ACQ.dx_um,
    script:
        "../scripts/prepare_psf.py"


rule deskew_deconvolve:
    """Deskew (deskew.rotate: and rotate) and deconvolve the volumes of one job in one process, the deskewed
    volume kept in memory: every tile and channel of a timepoint, or one volume (config jobs.unit).
    """
    input:
        raw=raw_inputs(job_raw_stacks),
        psf=job_psfs,
    output:
        **job_outputs(),
        step=step_record(f"deskew_deconvolve/{JOB}.json"),
    log:
        log_file(f"deskew_deconvolve/{JOB}.log"),
    conda:
        "../../envs/llsmflow.yaml"
    container:
        CONTAINERS["deconvolve"]  # the GPU image for a GPU backend (Snakefile)
    threads: RESOURCES["deskew_deconvolve"].threads
    resources:
        **gpu_resources(),
        mem_mb=step_mem_mb("deskew_deconvolve"),
        runtime=step_runtime("deskew_deconvolve"),
    params:
        job=job_params,
        dz_um=ACQ.dz_um,
        dx_um=ACQ.dx_um,
        dy_um=ACQ.dy_um,
        angle_deg=ACQ.angle_deg,
        scan_axis=ACQ.scan_axis,
        fill_value=config["deskew"]["fill_value"],
        rotate=config["deskew"]["rotate"],
        iterations=config["deconvolution"]["iterations"],
        background=config["deconvolution"]["background"],
        backend=config["deconvolution"]["backend"],
        method=config["deconvolution"]["method"],
        max_memory_gb=config["deconvolution"]["max_memory_gb"],
        # FFTW plans measured by one job are reused by the next (see the script)
        fftw_wisdom=str(WORK / ".cache" / "fftw-wisdom"),
    script:
        "../scripts/deskew_deconvolve.py"
