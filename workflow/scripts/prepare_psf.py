"""Prepare one channel's PSF on the deconvolved volumes' voxel grid and frame (thin wrapper over
llsmflow.decon.psf.prepare_psf_for_run; with deskew.rotate, rotated to the coverslip frame)."""

from llsmflow.decon.psf import prepare_psf_for_run
from llsmflow.io import read_volume, write_volume
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    psf = read_volume(snakemake.params.psf)  # a local file or a URL (raw_dir by URL)
    # rotated data (deskew.rotate): prepared in the objective frame on the isotropic grid of the rotated
    # volumes, then rotated as the data are; geometry: the one the PSF was taken in (skewed: deskewed and
    # cropped to the bead first), and why
    voxel_um = (p.rotated_voxel_um,) * 3 if p.rotate else tuple(p.data_voxel_um)
    prepared, geometry, reason = prepare_psf_for_run(
        psf.data,
        p.psf_voxel_um,
        voxel_um,
        background=p.background,
        geometry=p.geometry,
        angle_deg=p.angle_deg,
        stage_step_um=p.stage_step_um,
        scan_axis=p.scan_axis,
        rotate=p.rotate,
    )
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
