"""llsmflow: deskew → deconvolve → stitch → archive (OME-Zarr) → track → provenance, for one LLSM dataset."""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/deskew.smk"
include: "workflow/rules/deconvolve.smk"
include: "workflow/rules/stitch.smk"
include: "workflow/rules/archive.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        RESULTS / "provenance" / "run-record.json",
        RESULTS / "provenance" / "ro-crate-metadata.json",
