"""Sample table, paths, input functions and resource estimates shared by every rule."""

import os
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from llsmflow.errors import LlsmflowError
from llsmflow.decon.backends import GPU_BACKENDS
from llsmflow.hpc.resources import config_volume_sizes, grow, step_resources
from llsmflow.ingest import read_acquisition
from llsmflow.io import is_url

validate(config, workflow.source_path("../../config/schema.yaml"))

# `llsmflow watch` (docs/watch.md): an acquisition still being written; only its complete stacks, listed
# in this file, are taken (unset: the whole acquisition, as always)
_WATCH_FILES = os.environ.get("LLSMFLOW_WATCH_FILES")

try:
    # file checks (headers, PSFs) run once per run, in `llsmflow run` and the ingest step, not at every parse
    ACQ = read_acquisition(
        config["raw_dir"],
        config.get("metadata"),
        config.get("overrides") or {},
        check_files=False,
        allow_missing_timepoints=config["ingest"]["allow_missing_timepoints"],
        only_files=(
            Path(_WATCH_FILES).read_text().splitlines() if _WATCH_FILES else None
        ),
    )
except LlsmflowError as error:
    raise WorkflowError(f"llsmflow: {error}") from None

# raw data where they live (docs/remote.md): a raw_dir URL is read by the jobs through fsspec, only what each
# needs; Snakemake's inputs are local files, so by URL the raw files are params only (raw_inputs)
RAW_BY_URL = is_url(config["raw_dir"])


def raw_inputs(files):
    """Raw files (a list or an input function) as Snakemake inputs of a local raw folder; none by URL: the
    jobs then read them by URL from their params (a download into .snakemake/storage would read them whole).
    """
    return [] if RAW_BY_URL else files


DATASET = config["dataset"]
WORK = Path(config["work_dir"]) / DATASET
RESULTS = Path(config["results_dir"]) / DATASET
SAMPLES = list(ACQ.samples["sample_id"])
TILES = list(ACQ.tiles["tile"])
NOMINAL_ORIGINS_UM = {
    row.tile: [row.z_um, row.y_um, row.x_um] for row in ACQ.tiles.itertuples()
}
CHANNELS = list(range(len(ACQ.channels)))
TIMEPOINTS = ACQ.timepoints
TRACK_CHANNELS = (
    CHANNELS
    if config["track"]["channels"] == "all"
    else [int(c) for c in config["track"]["channels"]]
)
STITCH = config["stitch"]
if STITCH["reference_channel"] not in CHANNELS:
    raise WorkflowError(
        f"llsmflow: config stitch.reference_channel = {STITCH['reference_channel']}; "
        f"expected one of {CHANNELS}"
    )
if STITCH["reference_timepoint"] not in TIMEPOINTS:
    raise WorkflowError(
        f"llsmflow: config stitch.reference_timepoint = {STITCH['reference_timepoint']}; "
        f"expected one of {TIMEPOINTS}"
    )
_bad_track = sorted(set(TRACK_CHANNELS) - set(CHANNELS))
if _bad_track:
    raise WorkflowError(
        f"llsmflow: config track.channels lists {_bad_track}; expected channels among {CHANNELS}"
    )


wildcard_constraints:
    sample=r"\d{3}x_\d{3}y_\d{3}z-ch\d+-t\d{4}",
    channel=r"\d+",
    timepoint=r"\d{4}",


def intermediate(path):
    """Intermediates are temporary unless the config keeps them."""
    return path if config["keep_intermediates"] else temp(path)


# one row per sample, indexed once: input functions run for every job (40,000 calls at 20,000 volumes), and a
# scan of the sample table per call made the DAG quadratic in the volumes
_SAMPLE_ROWS = {row["sample_id"]: row for row in ACQ.samples.to_dict("records")}


def sample_row(sample):
    try:
        return _SAMPLE_ROWS[sample]
    except KeyError:
        raise WorkflowError(
            f"llsmflow: no raw stack for sample {sample} in {ACQ.raw_dir}"
        ) from None


def raw_stack(wildcards):
    return str(ACQ.raw_dir / sample_row(wildcards.sample)["path"])


def raw_selector(sample):
    """C and T index of a sample's volume inside a multi-volume raw file (CZI, hyperstack); None for a file
    holding one volume. Passed to the scripts as params, read by `llsmflow.io.read_volume`.
    """
    # as ACQ.sample_selector(sample), without its scan of the table
    row = sample_row(sample)

    def index(value):
        return None if value is None or pd.isna(value) else int(value)

    return {
        "channel": index(row.get("file_channel")),
        "timepoint": index(row.get("file_timepoint")),
    }


def sample_channel(wildcards):
    return int(sample_row(wildcards.sample)["channel"])


def sample_id(tile, channel, timepoint):
    return f"{tile}-ch{int(channel)}-t{int(timepoint):04d}"


# deskew_deconvolve jobs (config jobs.unit; docs/hpc.md, "How many volumes a job takes"): every
# tile and channel of one timepoint per job (batch runs), or one volume per job (llsmflow watch). Outputs are
# static per rule, so the rule's outputs follow the unit: a {timepoint} wildcard or a {sample} wildcard.
JOB_UNIT = config["jobs"]["unit"]
JOB = "{sample}" if JOB_UNIT == "volume" else "t{timepoint}"
JOB_IDS = SAMPLES if JOB_UNIT == "volume" else [f"t{t:04d}" for t in TIMEPOINTS]


def job_volumes(directory):
    """A job's volume files under WORK/directory, in the order of job_samples."""
    if JOB_UNIT == "volume":
        return [WORK / directory / "{sample}.ome.tif"]
    return expand(
        str(WORK / directory / "{tile}-ch{channel}-t{{timepoint}}.ome.tif"),
        tile=TILES,
        channel=[int(c) for c in CHANNELS],
    )


def job_outputs():
    """Named outputs of a deskew_deconvolve job: its deconvolved volumes (scratch: deleted once fused unless
    keep_intermediates) and, with keep_intermediates, its deskewed volumes."""
    outputs = {"volumes": [intermediate(p) for p in job_volumes("deconvolved")]}
    if config["keep_intermediates"]:
        outputs["deskewed"] = job_volumes("deskewed")
    return outputs


def job_samples(wildcards):
    """Sample ids of a job, in the order of its outputs."""
    if JOB_UNIT == "volume":
        return [wildcards.sample]
    return [sample_id(t, c, wildcards.timepoint) for t in TILES for c in CHANNELS]


def job_raw_stacks(wildcards):
    return list(
        dict.fromkeys(
            str(ACQ.raw_dir / sample_row(s)["path"]) for s in job_samples(wildcards)
        )
    )


def job_psfs(wildcards):
    channels = dict.fromkeys(
        int(sample_row(s)["channel"]) for s in job_samples(wildcards)
    )
    return [WORK / "psf" / f"ch{c}.ome.tif" for c in channels]


def job_params(wildcards):
    """Per sample of a job: raw file, the volume inside it (selector), channel, prepared PSF."""
    samples = job_samples(wildcards)
    return {
        "samples": samples,
        "raw": {s: str(ACQ.raw_dir / sample_row(s)["path"]) for s in samples},
        "selector": {s: raw_selector(s) for s in samples},
        "channel": {s: int(sample_row(s)["channel"]) for s in samples},
        "psf": {
            s: str(WORK / "psf" / f"ch{int(sample_row(s)['channel'])}.ome.tif")
            for s in samples
        },
    }


# Volume sizes and per-step resources: one model (llsmflow.hpc) for the jobs and `llsmflow estimate`.
try:
    # by URL the sizes read every PSF whole: kept for the jobs' parses of this workflow
    SIZES = config_volume_sizes(
        ACQ, config, WORK / ".cache" / "volume-sizes.json" if RAW_BY_URL else None
    )
except LlsmflowError as error:
    raise WorkflowError(f"llsmflow: {error}") from None
try:
    _CORES = (
        workflow.cores
    )  # with the SLURM executor: the cores of one submission (profile `cores`)
except WorkflowError:  # no --cores given (lint, dry run)
    _CORES = None
RESOURCES = step_resources(SIZES, config, _CORES)
GPU_DECONVOLUTION = config["deconvolution"]["backend"] in GPU_BACKENDS


def raw_volume_mb():
    """Size of one raw stack in MB (uint16), for resource estimates."""
    return SIZES.raw_mb


def deskewed_volume_mb():
    """Size of one deskewed float32 volume in MB."""
    return SIZES.deskewed_mb


def mem_mb_for(volume_mb, factor, floor_mb=500):
    """Memory request: volume size × the step's factor, doubling on each retry."""

    def estimate(wildcards, attempt):
        return grow(max(floor_mb, volume_mb * factor), attempt)

    return estimate


def step_mem_mb(step, floor_mb=500):
    """Memory request of a step (llsmflow.hpc.step_resources), doubling on each retry."""
    return mem_mb_for(max(RESOURCES[step].mem_mb, floor_mb), 1, floor_mb)


def step_runtime(step):
    """Wall-clock request (min) of a step, doubling on each retry."""

    def estimate(wildcards, attempt):
        return grow(RESOURCES[step].runtime_min, attempt)

    return estimate


def gpu_partition():
    """`slurm_partition` of the GPU deskew_deconvolve jobs, when the backend is a GPU one and
    `hpc.gpu_partition` is set.
    """
    if GPU_DECONVOLUTION and config["hpc"]["gpu_partition"]:
        return {"slurm_partition": config["hpc"]["gpu_partition"]}
    return {}


def gpu_resources():
    """Extra resources of the deskew_deconvolve rule: a GPU (on `hpc.gpu_partition`) only for a GPU backend, so
    CPU runs stay schedulable on CPU-only partitions."""
    if not GPU_DECONVOLUTION:
        return {}
    return {
        "gpu": 1,
        "gpu_mem_mb": RESOURCES["deskew_deconvolve"].gpu_mem_mb,
        **gpu_partition(),
    }


# each raw file once (a CZI or hyperstack holds many samples; channels may share a PSF)
RAW_FILES = list(
    dict.fromkeys(
        [str(ACQ.raw_dir / p) for p in ACQ.samples["path"]]
        + [str(ACQ.psf_path(c)) for c in CHANNELS]
        + [str(p) for p in ACQ.metadata_files]
    )
)


def track_tables():
    """Tables stored in the archive: ``{name: parquet file}``."""
    tables = {}
    for c in TRACK_CHANNELS:
        tables[f"tracks_ch{c}"] = RESULTS / "tracks" / f"ch{c}.parquet"
        tables[f"track_summary_ch{c}"] = RESULTS / "tracks" / f"ch{c}_summary.parquet"
        tables[f"msd_ch{c}"] = RESULTS / "tracks" / f"ch{c}_msd.parquet"
    return tables


def step_record(name):
    return WORK / "steps" / name


def log_file(name):
    return WORK / "logs" / name


def reference_tiles(wildcards):
    return [
        WORK
        / "deconvolved"
        / f"{sample_id(tile, STITCH['reference_channel'], STITCH['reference_timepoint'])}.ome.tif"
        for tile in TILES
    ]


# fuse jobs: every channel of one timepoint per job (docs/hpc.md, "How many volumes a job takes"), in both
# jobs.unit: a timepoint is fused once all its tiles and channels are deconvolved anyway. The outputs keep one
# Zarr store per channel and timepoint (archive, track and `llsmflow watch` read those), static per rule.
def fused_outputs():
    """The fused stores of a fuse job, one per channel, in channel order ({timepoint} wildcard)."""
    return [
        intermediate(directory(path))
        for path in expand(
            str(WORK / "fused" / "ch{channel}-t{{timepoint}}.zarr"), channel=CHANNELS
        )
    ]


def fuse_tiles(wildcards):
    """The deconvolved tiles of a fuse job: channel by channel, TILES order within a channel."""
    return [
        WORK
        / "deconvolved"
        / f"{sample_id(tile, channel, wildcards.timepoint)}.ome.tif"
        for channel in CHANNELS
        for tile in TILES
    ]


def all_step_records(wildcards):
    records = [step_record("ingest.json"), step_record("register.json")]
    records += [step_record(f"deskew_deconvolve/{job}.json") for job in JOB_IDS]
    records += [step_record(f"prepare_psf/ch{c}.json") for c in CHANNELS]
    records += [step_record(f"fuse/t{t:04d}.json") for t in TIMEPOINTS]
    records += [step_record("archive.json"), step_record("qc_mosaic.json")]
    records += [step_record(f"track/ch{c}.json") for c in TRACK_CHANNELS]
    records += [step_record(f"qc_tile/{t}-ch{c}.json") for t in TILES for c in CHANNELS]
    return records


def result_files(wildcards):
    files = [RESULTS / f"{DATASET}.ome.zarr", RESULTS / "qc" / "mosaic.png"]
    files += [RESULTS / "qc" / "report.html"]
    files += [RESULTS / "qc" / f"tile_{t}_ch{c}.png" for t in TILES for c in CHANNELS]
    for c in TRACK_CHANNELS:
        files += [
            RESULTS / "tracks" / f"ch{c}{suffix}"
            for suffix in (
                ".parquet",
                ".csv",
                "_summary.csv",
                "_summary.parquet",
                "_msd.csv",
                "_msd.parquet",
                "_tracks.png",
                "_msd.png",
            )
        ]
    return files


# The job plan (llsmflow.run.jobplan): `llsmflow status` counts the jobs left from it instead of a dry run
# (minutes at 20,000 volumes). Written when a run starts (onstart: the main process, after Snakemake has
# decided which jobs to run; never by a dry run or by the jobs).
def write_job_plan():
    from llsmflow.run.jobplan import fingerprint, plan_path, write_plan

    records = {}
    for record in all_step_records(None):
        parts = Path(record).relative_to(WORK / "steps").parts
        step = parts[0] if len(parts) > 1 else Path(parts[0]).stem
        records.setdefault(step, []).append(record)
    try:
        # the step records of the jobs this run will (re)run: older records of theirs are not "done"
        expected = {str(r) for paths in records.values() for r in paths}
        to_run = [
            str(f)
            for job in workflow.dag.needrun_jobs(exclude_finished=False)
            for f in job.output
            if str(f) in expected
        ]
    except AttributeError:
        # another Snakemake's DAG: status then trusts only records newer than the plan
        to_run = None
    write_plan(
        plan_path(WORK),
        fingerprint(config, workflow.basedir),
        records,
        {
            "qc_report": [RESULTS / "qc" / "report.html"],
            "provenance": [
                RESULTS / "provenance" / "run-record.json",
                RESULTS / "provenance" / "ro-crate-metadata.json",
            ],
        },
        RAW_FILES,
        str(ACQ.raw_dir),
        final=["provenance"],
        to_run=to_run,
    )


onstart:
    try:
        write_job_plan()
    except OSError as error:
        # only `llsmflow status` reads it (and falls back on a dry run): never fail a run for it
        print(f"llsmflow: job plan not written ({error})", file=sys.stderr)


def rembi_input(wildcards):
    """The dataset's REMBI YAML (config `rembi`, written by `llsmflow init`) when it exists: stored in the
    archive's metadata once filled in; an edit re-writes the archive."""
    path = config.get("rembi")
    return [path] if path and Path(path).is_file() else []
