"""Deskew and deconvolve the volumes of one job (a timepoint, or one volume) in one process, the deskewed volume
kept in memory (thin wrapper over llsmflow.run.batch → llsmflow.deskew, llsmflow.decon)."""

import contextlib
import logging
import os

from llsmflow.decon.fft import FFTW_WISDOM_ENV
from llsmflow.hpc.cluster import dask_cluster
from llsmflow.progress import progress_logger
from llsmflow.run.batch import DeconSettings, Geometry, VolumeTask, job_summary, run_job
from llsmflow.run.steps import StepRecorder

with contextlib.ExitStack() as stack:
    step = stack.enter_context(StepRecorder.for_workflow_job(snakemake))
    p = snakemake.params
    # FFTW_MEASURE planning of a volume's shape takes seconds (often longer than the iterations of a small
    # volume); every volume has the same shape, so the plans are made once per job and kept in one wisdom
    # file per dataset for the next jobs, unless the user named another file
    os.environ.setdefault(FFTW_WISDOM_ENV, p.fftw_wisdom)
    # chunks go to a dask cluster only when the volume is split (a memory budget is set)
    client = stack.enter_context(dask_cluster(snakemake.config["dask"] if p.max_memory_gb is not None else None))
    log = logging.getLogger("llsmflow.decon")
    decon = DeconSettings(
        iterations=p.iterations,
        background=p.background,
        backend=p.backend,
        method=p.method,
        max_memory_gb=p.max_memory_gb,
        threads=snakemake.threads,
        client=client,
        # whole volume: a line per iteration; in chunks, iterations × chunks steps, a line per 10 s at most
        progress=progress_logger(log, "iteration", interval_s=0)
        if p.max_memory_gb is None
        else progress_logger(log, "step (iterations × chunks)", interval_s=10),
    )
    geometry = Geometry(
        p.dz_um, p.dx_um, p.dy_um, p.angle_deg, p.scan_axis, p.fill_value, bool(p.rotate)
    )
    # one task per volume, in the order of the job's outputs
    job = p.job
    deskewed = list(getattr(snakemake.output, "deskewed", None) or [None] * len(job["samples"]))
    tasks = [
        VolumeTask(
            sample=s,
            raw_path=job["raw"][s],
            output=str(volume),
            raw_channel=job["selector"][s]["channel"],
            raw_timepoint=job["selector"][s]["timepoint"],
            deskewed_output=str(kept) if kept else None,
        )
        for s, volume, kept in zip(job["samples"], snakemake.output.volumes, deskewed, strict=True)
    ]
    entries = run_job(tasks, job["psf"], job["channel"], geometry, decon, on_volume=step.add_volume)
    step.note(**job_summary(entries), rotate=bool(p.rotate))
