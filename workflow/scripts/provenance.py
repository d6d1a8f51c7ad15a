"""Run record, checksum manifest and Workflow Run RO-Crate (thin wrapper over llsmflow.provenance/archive/crate)."""

import json
import shutil
from pathlib import Path

import yaml

from llsmflow.archive.manifest import write_checksum_manifest
from llsmflow.io import atomic_output, write_json
from llsmflow.provenance.crate import write_crate
from llsmflow.provenance.digests import DigestCache
from llsmflow.provenance.record import run_record, scrub
from llsmflow.run.steps import configure_logging

configure_logging(snakemake.log[0])
p = snakemake.params
# the config is read from the job, not passed as a param: Snakemake records params in .snakemake/metadata
config = snakemake.config
results = Path(p.results_dir)
workflow_dir = Path(snakemake.scriptdir).resolve().parent.parent
# a stale workflow snapshot of an earlier run must not enter the manifest
shutil.rmtree(Path(snakemake.output.crate).parent / "workflow", ignore_errors=True)
with atomic_output(snakemake.output.transforms) as tmp:
    shutil.copyfile(snakemake.input.transforms, tmp)
# the FFT plans the deconvolution used (absent with the scipy.fft fallback or a GPU backend), for reproduce
wisdom = Path(snakemake.output.crate).parent / "fftw-wisdom"
if Path(p.fftw_wisdom).is_file():
    with atomic_output(wisdom) as tmp:
        shutil.copyfile(p.fftw_wisdom, tmp)
else:
    wisdom.unlink(missing_ok=True)
acquisition = json.loads(Path(snakemake.input.acquisition).read_text(encoding="utf-8"))
# each file hashed once per run: the archive job's manifest already holds the raw stacks' and the archive's
# digests (reused for files not modified since it was written), and the run record's are reused by the manifest
digests = DigestCache(p.digest_cache)
raw_names = {f"raw/{Path(f).name}": f for f in p.raw_files}
digests.seed_from_manifest(Path(p.archive) / "checksums.sha256", p.archive, raw_names)
record = run_record(
    config,
    workflow_dir=workflow_dir,
    step_records=snakemake.input.steps,
    inputs=p.raw_files,
    outputs=snakemake.input.results,
    acquisition=acquisition,
    digests=digests,
)
write_json(snakemake.output.record, record)
with atomic_output(snakemake.output.config) as tmp:
    Path(tmp).write_text(yaml.safe_dump(scrub(dict(config)), sort_keys=False), encoding="utf-8")
write_checksum_manifest(
    results,
    snakemake.output.manifest,
    extra_files=raw_names,
    digest=digests.digest,
)
digests.save()
write_crate(
    Path(snakemake.output.crate).parent,
    record,
    workflow_dir=workflow_dir,
    run_dir=Path.cwd(),
    record_outputs=[str(f) for f in snakemake.input.results],
)
