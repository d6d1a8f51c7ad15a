# ingest: workflow/scripts/ingest.py → llsmflow.ingest (instrument metadata → sample table)
rule ingest:
    """Record the sample table and the resolved acquisition metadata (overrides applied)."""
    input:
        metadata=raw_inputs([str(p) for p in ACQ.metadata_files]),
    output:
        samples=WORK / "samples.tsv",
        acquisition=WORK / "acquisition.json",
        step=step_record("ingest.json"),
    log:
        log_file("ingest.log"),
    localrule: True
    conda:
        "../../envs/llsmflow.yaml"
    params:
        raw_dir=lambda wildcards: str(ACQ.raw_dir),
        metadata=config.get("metadata"),
        overrides=config.get("overrides") or {},
        psf_geometry=config["deconvolution"]["psf_geometry"],
        allow_missing_timepoints=config["ingest"]["allow_missing_timepoints"],
        # deskew.rotate: the PSF check compares the rotated kernel with the rotated volume
        rotate=config["deskew"]["rotate"],
        psf_background=config["deconvolution"]["psf_background"],
    script:
        "../scripts/ingest.py"
