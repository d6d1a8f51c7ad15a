def all_step_records(wildcards):
    records = [step_record("ingest.json"), step_record("register.json")]
    records += [step_record(f"deskew/{s}.json") for s in SAMPLES]
    records += [step_record(f"deconvolve/{s}.json") for s in SAMPLES]
    records += [step_record(f"prepare_psf/ch{c}.json") for c in CHANNELS]
    records += [
        step_record(f"fuse/ch{c}-t{t:04d}.json") for c in CHANNELS for t in TIMEPOINTS
    ]
    records += [step_record("archive.json"), step_record("qc_mosaic.json")]
    records += [step_record(f"track/ch{c}.json") for c in TRACK_CHANNELS]
    records += [step_record(f"qc_tile/{t}-ch{c}.json") for t in TILES for c in CHANNELS]
    return records


def result_files(wildcards):
    files = [RESULTS / f"{DATASET}.ome.zarr", RESULTS / "qc" / "mosaic.png"]
    files += [RESULTS / "qc" / f"tile_{t}_ch{c}.png" for t in TILES for c in CHANNELS]
    for c in TRACK_CHANNELS:
        files += [
            RESULTS / "tracks" / f"ch{c}{suffix}"
            for suffix in (
                ".parquet",
                ".csv",
                "_summary.csv",
                "_msd.csv",
                "_tracks.png",
                "_msd.png",
            )
        ]
    return files


rule provenance:
    """Run record (config, versions, steps, checksums of inputs and outputs) and a sha256 manifest."""
    input:
        steps=all_step_records,
        results=result_files,
        acquisition=WORK / "acquisition.json",
        transforms=WORK / "stitch" / "transforms.json",
    output:
        record=RESULTS / "provenance" / "run-record.json",
        manifest=RESULTS / "provenance" / "checksums.sha256",
        transforms=RESULTS / "provenance" / "transforms.json",
    params:
        config=config,
        raw_files=[str(ACQ.raw_dir / p) for p in ACQ.samples["path"]]
        + [str(ACQ.psf_path(c)) for c in CHANNELS]
        + [str(ACQ.metadata_path)],
        results_dir=str(RESULTS),
    log:
        log_file("provenance.log"),
    localrule: True
    script:
        "../scripts/provenance.py"
