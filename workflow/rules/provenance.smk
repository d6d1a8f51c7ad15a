# provenance: workflow/scripts/provenance.py → llsmflow.provenance (run record, RO-Crate) + llsmflow.archive.manifest
rule provenance:
    """Run record, sha256 manifest and Workflow Run RO-Crate (docs/provenance.md)."""
    input:
        steps=all_step_records,
        results=result_files,
        acquisition=WORK / "acquisition.json",
        transforms=WORK / "stitch" / "transforms.json",
    output:
        record=RESULTS / "provenance" / "run-record.json",
        manifest=RESULTS / "provenance" / "checksums.sha256",
        transforms=RESULTS / "provenance" / "transforms.json",
        config=RESULTS / "provenance" / "config.yaml",
        crate=RESULTS / "provenance" / "ro-crate-metadata.json",
    log:
        log_file("provenance.log"),
    localrule: True
    conda:
        "../../envs/llsmflow.yaml"
    params:
        raw_files=RAW_FILES,
        results_dir=lambda wildcards, output: str(Path(output.record).parent.parent),
        fftw_wisdom=str(WORK / ".cache" / "fftw-wisdom"),
        # sha256 of files already hashed in this run (llsmflow.provenance.digests)
        digest_cache=str(WORK / ".cache" / "sha256.json"),
        archive=str(RESULTS / f"{DATASET}.ome.zarr"),
    script:
        "../scripts/provenance.py"
