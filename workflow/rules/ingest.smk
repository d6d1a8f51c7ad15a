rule ingest:
    """Record the sample table and the resolved acquisition metadata (overrides applied)."""
    input:
        metadata=str(ACQ.metadata_path),
    output:
        samples=WORK / "samples.tsv",
        acquisition=WORK / "acquisition.json",
        step=step_record("ingest.json"),
    params:
        raw_dir=config["raw_dir"],
        overrides=config.get("overrides") or {},
    log:
        log_file("ingest.log"),
    localrule: True
    script:
        "../scripts/ingest.py"
