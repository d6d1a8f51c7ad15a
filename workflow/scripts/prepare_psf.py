"""Prepare one channel's PSF on the deskewed voxel grid (thin wrapper over llsmflow.decon.prepare_psf)."""

from llsmflow.decon.psf import prepare_psf
from llsmflow.io import read_volume, write_volume
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    psf = read_volume(snakemake.input.psf)
    prepared = prepare_psf(psf.data, p.psf_voxel_um, p.data_voxel_um, background=p.background)
    write_volume(snakemake.output.psf, prepared, p.data_voxel_um, {"source": snakemake.input.psf})
    step.note(shape=prepared.shape)
