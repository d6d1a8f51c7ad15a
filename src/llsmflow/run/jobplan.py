"""The job plan: every job of a run by the step record it leaves, so that ``llsmflow status`` can count what is
left without a Snakemake dry run.

A dry run of 20,000 volumes (some 45,000 jobs) takes minutes and over a GB, almost all of it Snakemake's own
per-job work. When a run starts (Snakemake's ``onstart``: the main process, after it has decided which jobs
to run), ``workflow/rules/common.smk`` writes ``work/<dataset>/.llsmflow-plan.json``: each rule's step records
(one per job; the provenance rule needs all of them, so the list is complete), the step records of the jobs
this run will (re)run, the outputs of the rules that write no step record, a fingerprint of what decides which
jobs Snakemake would run (the resolved configuration, the workflow's files, the llsmflow version) and the size
and modification time of every raw file. :func:`jobs_left_from_plan` answers, in about the time it takes to
stat the files, the jobs per rule whose step record is missing or is one the run is to rewrite and has not yet,
and ``None`` (the caller runs the dry run) as soon as anything differs from the plan: another configuration,
changed workflow code, raw files added, removed or touched. What a dry run
alone would see (an intermediate deleted by hand behind a finished job, Snakemake metadata removed) is not
seen here; ``llsmflow status`` says which of the two answered.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from llsmflow import __version__

PLAN_NAME = ".llsmflow-plan.json"
FORMAT = "llsmflow-job-plan/1"
# the files whose content decides which jobs Snakemake runs (rule code, scripts, the schema's defaults)
_WORKFLOW_FILES = ("Snakefile", "workflow/rules/*.smk", "workflow/scripts/*.py", "config/schema.yaml")


def plan_path(work_dir: str | Path) -> Path:
    """``work/<dataset>/.llsmflow-plan.json``."""
    return Path(work_dir) / PLAN_NAME


def fingerprint(config: Mapping, workflow_root: str | Path) -> str:
    """sha256 of the resolved configuration, the workflow's files and the llsmflow version."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(__version__.encode())
    root = Path(workflow_root)
    for pattern in _WORKFLOW_FILES:
        for path in sorted(root.glob(pattern)):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _stat(path: str | Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def write_plan(
    path: str | Path,
    print_: str,
    records: Mapping[str, Iterable[str | Path]],
    outputs: Mapping[str, Iterable[str | Path]],
    raw_files: Iterable[str | Path],
    raw_dir: str | Path,
    final: Iterable[str] = (),
    to_run: Iterable[str | Path] | None = None,
) -> Path:
    """Write the plan (atomically). ``records``: rule → its jobs' step records; ``outputs``: rule (without
    step records) → its outputs; ``final``: those of these rules that read every step record (their outputs
    must be newer than all of them); ``to_run``: the step records of the jobs the starting run will (re)run
    (None: unknown); ``print_``: :func:`fingerprint`."""
    import time

    from llsmflow.io import atomic_output

    path = Path(path)
    plan = {
        "format": FORMAT,
        "fingerprint": print_,
        "records": {rule: [str(p) for p in paths] for rule, paths in records.items()},
        "outputs": {rule: [str(p) for p in paths] for rule, paths in outputs.items()},
        "final": sorted(final),
        "since_ns": time.time_ns(),
        "to_run": None if to_run is None else sorted(str(p) for p in to_run),
        "raw_dir": str(raw_dir),
        "raw_entries": len(os.listdir(raw_dir)) if Path(raw_dir).is_dir() else None,
        "raw_files": {str(p): _stat(p) for p in raw_files},
    }
    text = json.dumps(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def jobs_left_from_plan(path: str | Path, print_: str, run_dir: str | Path) -> dict[str, int] | None:
    """Jobs per rule left (step record missing; a rule without records: an output missing or older than the
    newest step record), or None when the plan is absent or does not describe this run as it is now."""
    path, run_dir = Path(path), Path(run_dir)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT or plan.get("fingerprint") != print_:
        return None
    raw_dir = Path(plan["raw_dir"])
    raw_dir = raw_dir if raw_dir.is_absolute() else run_dir / raw_dir
    if not raw_dir.is_dir() or len(os.listdir(raw_dir)) != plan.get("raw_entries"):
        return None
    for raw, recorded in plan["raw_files"].items():
        if _stat(raw if Path(raw).is_absolute() else run_dir / raw) != recorded:
            return None
    # a record the run was to (re)write counts only once rewritten (newer than the plan); with the list
    # unknown, an older record leaves the answer to the dry run
    since, to_run = plan.get("since_ns", 0), plan.get("to_run")
    to_run = None if to_run is None else set(to_run)
    left: dict[str, int] = {}
    newest = 0
    for rule, records in plan["records"].items():
        missing = 0
        for record in records:
            stat = _stat(run_dir / record)
            stale = stat is not None and stat[1] < since and (to_run is None or record in to_run)
            if stale and to_run is None:
                return None
            if stat is None or stale:
                missing += 1
            else:
                newest = max(newest, stat[1])
        if missing:
            left[rule] = missing
    for rule, outputs in plan["outputs"].items():
        stats = [_stat(run_dir / output) for output in outputs]
        stale = rule in plan.get("final", ()) and any(s is not None and s[1] < newest for s in stats)
        if left or stale or any(s is None for s in stats):
            left[rule] = 1
    return left
