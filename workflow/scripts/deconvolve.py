"""Deconvolve one deskewed volume (thin wrapper over llsmflow.decon.deconvolve)."""

import contextlib
import logging
import os

from llsmflow.decon.api import deconvolve
from llsmflow.decon.fft import FFTW_WISDOM_ENV
from llsmflow.hpc.cluster import dask_cluster
from llsmflow.io import read_volume, read_volume_description, write_volume
from llsmflow.progress import progress_logger
from llsmflow.run.steps import StepRecorder

with contextlib.ExitStack() as stack:
    step = stack.enter_context(StepRecorder.for_workflow_job(snakemake))
    p = snakemake.params
    # FFTW_MEASURE planning of a volume's shape takes seconds (often longer than the iterations of a small
    # volume); every job of the dataset has the same shapes, so the plans are kept in one wisdom file per
    # dataset and reused, unless the user named another file
    os.environ.setdefault(FFTW_WISDOM_ENV, p.fftw_wisdom)
    # chunks go to a dask cluster only when the volume is split (a memory budget is set)
    dask_settings = snakemake.config["dask"] if p.max_memory_gb is not None else None
    client = stack.enter_context(dask_cluster(dask_settings))
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
        client=client,
        threads=snakemake.threads,
        # whole volume: a line per iteration; in chunks, iterations × chunks steps, a line per 10 s at most
        progress=progress_logger(log, "iteration", interval_s=0)
        if p.max_memory_gb is None
        else progress_logger(log, "step (iterations × chunks)", interval_s=10),
        psf_path=snakemake.input.psf,
    )
    metadata = read_volume_description(snakemake.input.volume) | {"deconvolution": result.summary()}
    write_volume(snakemake.output.volume, result.data, volume.voxel_size_um, metadata)
    step.note(**result.summary(), seconds_deconvolution=round(result.seconds, 3))
