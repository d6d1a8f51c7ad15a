"""Write the sample table and resolved acquisition metadata (thin wrapper over llsmflow.ingest)."""

import logging

from llsmflow.ingest import read_acquisition
from llsmflow.io import atomic_output, write_json
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    log = logging.getLogger("llsmflow.ingest")
    # the config's metadata (None: the raw folder's acquisition.json or instrument files), as every parse reads it
    acquisition = read_acquisition(
        snakemake.params.raw_dir,
        snakemake.params.metadata,
        snakemake.params.overrides,
        psf_geometry=snakemake.params.psf_geometry,
        allow_missing_timepoints=snakemake.params.allow_missing_timepoints,
        rotate=snakemake.params.rotate,
        psf_background=snakemake.params.psf_background,
    )
    with atomic_output(snakemake.output.samples) as tmp:
        acquisition.samples.to_csv(tmp, sep="\t", index=False)
    # what the later steps and the report need about time: the timepoints present, each one's real time
    # (s), the gaps accepted (ingest.allow_missing_timepoints) and whether there is anything to track
    timing = {
        "timepoints_found": acquisition.timepoints,
        "frame_times_s": acquisition.frame_times_s,
        "missing_timepoints": acquisition.missing_timepoints,
    }
    if acquisition.missing_timepoints:
        log.warning(
            "timepoint(s) %s have no stack in any tile or channel; accepted (ingest.allow_missing_timepoints): "
            "the archive and the tracks keep the real time of every frame (%s s)",
            acquisition.missing_timepoints,
            ", ".join(f"{t:g}" for t in acquisition.frame_times_s),
        )
    if len(acquisition.timepoints) < 2:
        timing["tracking_skipped"] = (
            f"one timepoint ({acquisition.timepoints[0]}): nothing to link, tracking skipped"
        )
        log.warning("%s", timing["tracking_skipped"])
    write_json(
        snakemake.output.acquisition,
        acquisition.metadata
        | {
            "deskewed_voxel_size_um": acquisition.deskewed_voxel_size_um,
            "tile_origins_um": acquisition.tiles.to_dict(orient="records"),
        }
        | timing,
    )
    step.note(
        samples=len(acquisition.samples),
        tiles=len(acquisition.tiles),
        channels=len(acquisition.channels),
        **timing,
    )
