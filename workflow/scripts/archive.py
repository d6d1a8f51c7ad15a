"""Assemble the fused volumes into one TCZYX OME-Zarr archive (thin wrapper over llsmflow.archive)."""

import json
from pathlib import Path

import dask.array as da

from llsmflow.archive import write_ome_zarr
from llsmflow.provenance import StepRecorder, package_versions
from llsmflow.stitch import read_transforms

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    stores = {Path(f).name: f for f in snakemake.input.fused}
    frames, origin, voxel = [], None, None
    for t in p.timepoints:
        channels = []
        for c in p.channels:
            array = da.from_zarr(stores[f"ch{c}-t{t:04d}.zarr"])
            channels.append(array)
        frames.append(da.stack(channels))
    import zarr

    attrs = dict(zarr.open_array(stores[f"ch{p.channels[0]}-t{p.timepoints[0]:04d}.zarr"], mode="r").attrs)
    image = da.stack(frames)
    acquisition = json.loads(Path(snakemake.input.acquisition).read_text(encoding="utf-8"))
    attributes = {
        "acquisition": acquisition,
        "registration": read_transforms(snakemake.input.transforms),
        "processing": p.processing,
        "software": package_versions(),
    }
    write_ome_zarr(
        snakemake.output.archive,
        image,
        attrs["voxel_size_um"],
        p.time_interval_s,
        channel_names=p.channel_names,
        wavelengths_nm=p.emission_nm,
        ngff_version=p.ngff_version,
        chunks_zyx=tuple(p.chunks),
        attributes=attributes,
        origin_um=tuple(attrs["origin_um"]),
    )
    step.note(shape_tczyx=list(image.shape), ngff_version=p.ngff_version)
