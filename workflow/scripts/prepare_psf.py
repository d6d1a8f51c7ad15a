"""Prepare one channel's PSF on the deskewed voxel grid (thin wrapper over llsmflow.decon.prepare_psf)."""

from llsmflow.decon.psf import prepare_psf, resolve_psf_geometry
from llsmflow.io import read_volume, write_volume
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    psf = read_volume(snakemake.input.psf)
    # which geometry the PSF was taken in (skewed: deskewed and cropped to the bead first), and why
    geometry, reason = resolve_psf_geometry(
        p.geometry, p.psf_voxel_um, p.angle_deg, p.stage_step_um, psf.data, p.scan_axis
    )
    prepared = prepare_psf(
        psf.data,
        p.psf_voxel_um,
        p.data_voxel_um,
        background=p.background,
        geometry=geometry,
        angle_deg=p.angle_deg,
        stage_step_um=p.stage_step_um,
        scan_axis=p.scan_axis,
    )
    write_volume(
        snakemake.output.psf,
        prepared,
        p.data_voxel_um,
        {"source": snakemake.input.psf, "psf_geometry": geometry, "psf_geometry_reason": reason},
    )
    step.note(shape=prepared.shape, psf_geometry=geometry, psf_geometry_reason=reason)
