"""Write the sample table and resolved acquisition metadata (thin wrapper over llsmflow.ingest)."""

from llsmflow.ingest import read_acquisition
from llsmflow.io import atomic_output, write_json
from llsmflow.run.steps import StepRecorder

with StepRecorder.for_workflow_job(snakemake) as step:
    # the config's metadata (None: the raw folder's acquisition.json or instrument files), as every parse reads it
    acquisition = read_acquisition(
        snakemake.params.raw_dir,
        snakemake.params.metadata,
        snakemake.params.overrides,
        psf_geometry=snakemake.params.psf_geometry,
    )
    with atomic_output(snakemake.output.samples) as tmp:
        acquisition.samples.to_csv(tmp, sep="\t", index=False)
    write_json(
        snakemake.output.acquisition,
        acquisition.metadata
        | {
            "deskewed_voxel_size_um": acquisition.deskewed_voxel_size_um,
            "tile_origins_um": acquisition.tiles.to_dict(orient="records"),
        },
    )
    step.note(
        samples=len(acquisition.samples), tiles=len(acquisition.tiles), channels=len(acquisition.channels)
    )
