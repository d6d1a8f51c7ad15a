"""Write the run record and checksum manifest (thin wrapper over llsmflow.provenance and llsmflow.archive)."""

import json
import shutil
from pathlib import Path

from llsmflow.archive import write_checksum_manifest
from llsmflow.io import atomic_output
from llsmflow.provenance import configure_logging, write_run_record

configure_logging(snakemake.log[0])
p = snakemake.params
results = Path(p.results_dir)
with atomic_output(snakemake.output.transforms) as tmp:
    shutil.copyfile(snakemake.input.transforms, tmp)
acquisition = json.loads(Path(snakemake.input.acquisition).read_text(encoding="utf-8"))
write_run_record(
    snakemake.output.record,
    p.config,
    workflow_dir=Path(snakemake.scriptdir).parent.parent,
    step_records=snakemake.input.steps,
    inputs=p.raw_files,
    outputs=snakemake.input.results,
    acquisition=acquisition,
)
write_checksum_manifest(
    results, snakemake.output.manifest, extra_files={f"raw/{Path(f).name}": f for f in p.raw_files}
)
