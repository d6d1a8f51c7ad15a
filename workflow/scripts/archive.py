"""Assemble fused volumes, tracks and checksums into the dataset archive (thin wrapper over llsmflow.archive)."""

import json
import logging
from pathlib import Path

from llsmflow.archive.dataset import write_dataset_archive
from llsmflow.fair.archive_rembi import rembi_for_archive
from llsmflow.provenance.record import package_versions
from llsmflow.run.steps import StepRecorder
from llsmflow.stitch.fused import stack_fused
from llsmflow.stitch.transforms import read_transforms

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    stores = {Path(f).name: f for f in snakemake.input.fused}
    image, origin_um, voxel_size_um = stack_fused(
        [[stores[f"ch{c}-t{t:04d}.zarr"] for c in p.channels] for t in p.timepoints]
    )
    attributes = {
        "acquisition": json.loads(Path(snakemake.input.acquisition).read_text(encoding="utf-8")),
        "registration": read_transforms(snakemake.input.transforms),
        "processing": p.processing,
        "software": package_versions(),
        # the NGFF time scale is one interval; the real time of every frame, gaps included, is kept here
        "time": {
            "timepoints": list(p.timepoints),
            "times_s": list(p.frame_times_s),
            "missing_timepoints": list(p.missing_timepoints),
            "nominal_interval_s": p.time_interval_s,
        },
        "tracking": {"skipped": p.tracking_skipped} if p.tracking_skipped else {"tables": list(p.table_names)},
    }
    rembi, not_stored = rembi_for_archive(snakemake.input.rembi[0] if snakemake.input.rembi else None)
    if rembi is not None:
        attributes["rembi"] = rembi
    if not_stored:
        logging.getLogger("llsmflow.archive").warning("%s", not_stored)
        step.note(rembi=not_stored)
    write_dataset_archive(
        snakemake.output.archive,
        image,
        voxel_size_um,
        p.time_interval_s,
        p.channel_names,
        tables=dict(zip(p.table_names, snakemake.input.tables, strict=True)),
        raw_files=p.raw_files,
        attributes=attributes,
        wavelengths_nm=p.emission_nm,
        ngff_version=p.ngff_version,
        chunks_zyx=tuple(p.chunks),
        origin_um=origin_um,
    )
    step.note(shape_tczyx=list(image.shape), ngff_version=p.ngff_version, tables=list(p.table_names))
