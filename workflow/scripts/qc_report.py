"""Write the self-contained QC report of the run (thin wrapper over llsmflow.qc.report)."""

import json
from pathlib import Path

from llsmflow.provenance.record import provenance_summary
from llsmflow.qc.report import read_manifest, write_report
from llsmflow.run.steps import StepRecorder, read_step_records, summarise_steps
from llsmflow.stitch.transforms import read_transforms

with StepRecorder.for_workflow_job(snakemake) as step:
    p = snakemake.params
    inputs = snakemake.input
    raw_checksums = read_manifest(Path(inputs.archive) / "checksums.sha256")
    provenance = provenance_summary(
        Path(snakemake.scriptdir).parent.parent, snakemake.config, p.raw_files, raw_checksums
    )
    records = read_step_records(inputs.steps)
    write_report(
        snakemake.output.html,
        dataset=p.dataset,
        tile_pngs=[
            (tile, int(channel), png)
            for (tile, channel), png in zip(p.tile_channels, inputs.tiles, strict=True)
        ],
        mosaic_png=inputs.mosaic,
        track_pngs={
            int(c): (tracks, msd)
            for c, tracks, msd in zip(p.track_channels, inputs.tracks, inputs.msd, strict=True)
        },
        step_records=records,
        provenance=provenance,
        transforms=read_transforms(inputs.transforms),
        min_quality=p.min_quality,
        acquisition=json.loads(Path(inputs.acquisition).read_text(encoding="utf-8")),
        step_summary=summarise_steps(records),
    )
    step.note(images=len(inputs.tiles) + 1 + len(inputs.tracks) + len(inputs.msd), jobs=len(records))
