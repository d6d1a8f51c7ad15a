"""Deconvolve one deskewed volume (thin wrapper over llsmflow.decon.deconvolve)."""

import logging

from llsmflow.decon import deconvolve
from llsmflow.io import read_volume, read_volume_description, write_volume
from llsmflow.provenance import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    volume = read_volume(snakemake.input.volume)
    psf = read_volume(snakemake.input.psf)
    log = logging.getLogger("llsmflow.decon")
    result = deconvolve(
        volume.data,
        psf.data,
        volume.voxel_size_um,
        psf.voxel_size_um,
        iterations=p.iterations,
        background=p.background,
        psf_background=0.0,
        backend=p.backend,
        method=p.method,
        max_memory_gb=p.max_memory_gb,
        threads=snakemake.threads,
        progress=lambda i, n: log.info("iteration %d/%d", i, n),
        psf_path=snakemake.input.psf,
    )
    metadata = read_volume_description(snakemake.input.volume) | {"deconvolution": result.summary()}
    write_volume(snakemake.output.volume, result.data, volume.voxel_size_um, metadata)
    step.note(**result.summary(), seconds_deconvolution=round(result.seconds, 3))
