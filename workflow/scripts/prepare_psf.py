"""Prepare one channel's PSF on the deconvolved volumes' voxel grid and frame (thin wrapper over
llsmflow.decon.prepare_psf; with deskew.rotate, rotated to the coverslip frame by rotate_psf)."""

from llsmflow.decon.psf import prepare_psf, resolve_psf_geometry, rotate_psf
from llsmflow.io import read_volume, write_volume
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    psf = read_volume(snakemake.params.psf)  # a local file or a URL (raw_dir by URL)
    # which geometry the PSF was taken in (skewed: deskewed and cropped to the bead first), and why
    geometry, reason = resolve_psf_geometry(
        p.geometry, p.psf_voxel_um, p.angle_deg, p.stage_step_um, psf.data, p.scan_axis
    )
    # rotated data (deskew.rotate): prepared in the objective frame on the isotropic grid of the rotated
    # volumes, then rotated as the data are
    voxel_um = (p.rotated_voxel_um,) * 3 if p.rotate else tuple(p.data_voxel_um)
    prepared = prepare_psf(
        psf.data,
        p.psf_voxel_um,
        voxel_um,
        background=p.background,
        geometry=geometry,
        angle_deg=p.angle_deg,
        stage_step_um=p.stage_step_um,
        scan_axis=p.scan_axis,
    )
    if p.rotate:
        prepared = rotate_psf(prepared, p.rotated_voxel_um, p.angle_deg, p.scan_axis)
    frame = "coverslip" if p.rotate else "objective"
    write_volume(
        snakemake.output.psf,
        prepared,
        voxel_um,
        {
            "source": snakemake.params.psf,
            "psf_geometry": geometry,
            "psf_geometry_reason": reason,
            "frame": frame,
        },
    )
    step.note(shape=prepared.shape, psf_geometry=geometry, psf_geometry_reason=reason, frame=frame)
