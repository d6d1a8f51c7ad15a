"""What a run did and what is left: the summary ``llsmflow run`` prints, and what ``llsmflow status`` reports.

*Done* comes from the step records under ``work/<dataset>/steps/`` (one per finished job, with its run time,
peak memory and backend; see :class:`llsmflow.run.steps.StepRecorder`) and from Snakemake's log of the run
(for rules that write no step record, such as ``provenance``). *Left* comes from the job plan the workflow
wrote when it was parsed (:mod:`llsmflow.run.jobplan`: every job's step record, valid only while the
configuration, the workflow's files and the raw files are as they were then), and otherwise from a Snakemake
dry run, the authority on what Snakemake would (re)run: it knows about changed code, parameters and inputs,
which a listing of expected files would not, but takes minutes at 20,000 volumes. The dry run's "Job stats"
table is parsed rather than calling Snakemake's Python API, whose shape changes between major versions while
the table has stayed the same since Snakemake 5.

``llsmflow status results/<dataset>`` finds the configuration of a results directory through the pointer
that ``llsmflow run`` left (:mod:`llsmflow.run.paths`).
"""

from __future__ import annotations

import datetime as _dt
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.progress import format_summary_seconds
from llsmflow.run.config import check_config, find_workflow_root, snakemake_base_command
from llsmflow.run.jobplan import fingerprint, jobs_left_from_plan, plan_path
from llsmflow.run.paths import find_run_pointer, run_paths
from llsmflow.run.steps import step_records_under, summarise_steps

_FINISHED = re.compile(r"Finished jobid: \d+ \(Rule: ([\w-]+)\)")


def snakemake_log_rules(run_dir: Path, since: float) -> Counter:
    """Jobs per rule that Snakemake logged as finished in logs written since ``since`` (epoch seconds)."""
    counts: Counter = Counter()
    log_dir = Path(run_dir) / ".snakemake" / "log"
    if not log_dir.is_dir():
        return counts
    for log in log_dir.glob("*.snakemake.log"):
        if log.stat().st_mtime < since:
            continue
        counts.update(_FINISHED.findall(log.read_text(encoding="utf-8", errors="replace")))
    return counts


# ---------------------------------------------------------------------------------------------- formatting


def format_steps(summary: list[dict], extra_jobs: Counter | None = None) -> list[str]:
    """Lines of a table: step, jobs, wall time, total run time, peak memory, backend."""
    lines = [f"  {'step':<19}{'jobs':>6}{'wall':>11}{'total':>11}{'peak mem':>11}  backend"]
    for row in summary:
        memory = f"{row['peak_memory_mb']:.0f} MiB" if row["peak_memory_mb"] is not None else "–"
        lines.append(
            f"  {row['step']:<19}{row['jobs']:>6}{format_summary_seconds(row['wall_seconds']):>11}"
            f"{format_summary_seconds(row['seconds']):>11}{memory:>11}  {', '.join(row['backends']) or '–'}"
        )
    for rule, jobs in sorted((extra_jobs or {}).items()):
        lines.append(f"  {rule:<19}{jobs:>6}{'':>11}{'':>11}{'':>11}  (no step record)")
    return lines


def print_run_summary(
    config: dict, run_dir: Path, started: float, elapsed: float, status: int, out=sys.stdout
) -> None:
    """Print what one ``llsmflow run`` did: jobs and time per stage, where the results and the report are.

    ``started`` is the run's start (epoch seconds); only step records that started then or later count.
    """
    results, work = run_paths(config)
    since = _dt.datetime.fromtimestamp(int(started), _dt.UTC)
    summary = summarise_steps(step_records_under(Path(run_dir) / work / "steps"), since=since)
    recorded = {row["step"] for row in summary}
    logged = snakemake_log_rules(run_dir, started)
    extra = Counter({rule: n for rule, n in logged.items() if rule not in recorded and rule != "all"})
    jobs = sum(row["jobs"] for row in summary) + sum(extra.values())
    print("", file=out)
    if jobs:
        print(f"ran {jobs} jobs in {format_summary_seconds(elapsed)}:", file=out)
        for line in format_steps(summary, extra):
            print(line, file=out)
    else:
        print("nothing ran: every output was already up to date.", file=out)
    report = results / "qc" / "report.html"
    if status == 0:
        print(
            f"report: {report}" + ("" if (Path(run_dir) / report).is_file() else " (not written)"), file=out
        )
    print(f"logs:   {work / 'logs'}/", file=out)


# ---------------------------------------------------------------------------------------------- dry run


def parse_job_stats(text: str) -> dict[str, int]:
    """``{rule: jobs}`` from the "Job stats" table of a Snakemake dry run; empty when nothing is left."""
    jobs: dict[str, int] = {}
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        return jobs
    for line in lines[start + 1 :]:
        fields = line.split()
        if not fields or fields[0] in ("job",) or set(fields[0]) == {"-"}:
            continue
        if fields[0] == "total" or len(fields) != 2 or not fields[1].isdigit():
            break
        jobs[fields[0]] = int(fields[1])
    return jobs


def jobs_left(workflow_root: Path, configfile: Path, run_dir: Path) -> dict[str, int]:
    """Jobs per rule that Snakemake would run now (a dry run in ``run_dir``; the lock is not taken).

    Raises
    ------
    LlsmflowError
        If Snakemake cannot be found or the dry run fails (its last lines are in the message).
    """
    command = [
        *snakemake_base_command(workflow_root, configfile),
        "--dry-run",
        "--nolock",
        # a job still running has "incomplete" outputs: count it as left instead of failing
        "--rerun-incomplete",
        "--quiet",
        "rules",
        "--cores",
        "1",
    ]
    result = subprocess.run(command, cwd=run_dir, capture_output=True, text=True, timeout=600)
    text = result.stdout + "\n" + result.stderr
    if result.returncode != 0:
        tail = " | ".join(line for line in text.strip().splitlines()[-4:] if line.strip())
        raise LlsmflowError(f"Snakemake dry run failed (exit {result.returncode}): {tail}", configfile)
    return parse_job_stats(text)


# ---------------------------------------------------------------------------------------------- status


def resolve_status_target(results_dir: str | None, configfile: str | None, workflow_dir: str | None):
    """``(config, configfile, workflow_root, run_dir)`` for ``llsmflow status``."""
    if configfile is None and results_dir is not None:
        results_path = Path(results_dir)
        if not results_path.is_dir():
            raise LlsmflowError(
                "results directory not found; expected results/<dataset> of a run", results_path
            )
        pointer = find_run_pointer(results_path)
        if pointer is None:
            raise LlsmflowError(
                "no record of the `llsmflow run` that wrote this results directory "
                "(.snakemake/llsmflow-runs/ in the run directory); pass --configfile",
                results_path,
            )
        configfile = pointer["configfile"]
        workflow_dir = workflow_dir or pointer["workflow_dir"]
        run_dir = Path(pointer["run_dir"])
    else:
        run_dir = Path.cwd()
    root = find_workflow_root(workflow_dir)
    configfile = Path(configfile or root / "config" / "config.yaml")
    config = check_config(configfile, root, check_files=False)
    if results_dir is not None:
        expected = (run_dir / run_paths(config)[0]).resolve()
        if expected != Path(results_dir).resolve():
            raise LlsmflowError(
                f"the config writes results to {expected}, not to this directory; expected matching "
                "--configfile and results directory",
                Path(results_dir),
            )
    return config, configfile, root, run_dir


@dataclass
class RunStatus:
    """What ``llsmflow status`` reports: ``done`` per step (:func:`llsmflow.run.steps.summarise_steps`) and the
    jobs ``left`` per rule (a Snakemake dry run); ``results``, ``work`` and ``report`` are absolute paths."""

    config: dict
    configfile: Path
    results: Path
    work: Path
    report: Path
    done: list[dict]
    left: dict[str, int]
    left_source: str = "Snakemake dry run"


def run_status(results_dir: str | None, configfile: str | None, workflow_dir: str | None) -> RunStatus:
    """What is done and what is left for a results directory or a config (see :func:`resolve_status_target`)."""
    config, configfile, root, run_dir = resolve_status_target(results_dir, configfile, workflow_dir)
    results, work = run_paths(config)
    done = summarise_steps(step_records_under(run_dir / work / "steps"))
    # the job plan answers in seconds where it describes this run as it is now; else the dry run
    left = jobs_left_from_plan(run_dir / plan_path(work), fingerprint(config, root), run_dir)
    source = "job plan"
    if left is None:
        left, source = jobs_left(root, configfile, run_dir), "Snakemake dry run"
    left.pop("all", None)
    return RunStatus(
        config,
        configfile,
        run_dir / results,
        run_dir / work,
        run_dir / results / "qc" / "report.html",
        done,
        left,
        source,
    )
