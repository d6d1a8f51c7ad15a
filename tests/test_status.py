"""`llsmflow run` prints what ran; `llsmflow status` says what is done and what is left."""

import re
import subprocess

import yaml

from llsmflow.run.status import parse_job_stats
from tests.conftest import LLSMFLOW, REPO, run_workflow

TILES, CHANNELS, TIMEPOINTS = 2, 2, 3  # the tiny_run fixture
JOBS = {
    "prepare_psf": CHANNELS,
    "deskew_deconvolve": TIMEPOINTS,  # jobs.unit: timepoint, every tile and channel of a timepoint per job
    "qc_tile": TILES * CHANNELS,
    "register": 1,
    "fuse": TIMEPOINTS,  # every channel of a timepoint per job
    "track": CHANNELS,
    "archive": 1,
    "qc_mosaic": 1,
    "qc_report": 1,
}


def _table(text):
    """``{step: jobs}`` from the step tables that `run` and `status` print."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\s+([a-z_]+)\s+(\d+)(\s|$)", line)
        if match:
            rows[match.group(1)] = int(match.group(2))
    return rows


def _llsmflow(*args, cwd):
    return subprocess.run([str(LLSMFLOW), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_run_summary_lists_every_stage(tiny_run):
    stdout = tiny_run.stdout
    summary = stdout.split("llsmflow run: done in", 1)[1]
    assert "Results in results/tiny/" in summary
    expected = {**JOBS, "ingest": 1, "provenance": 1}
    assert f"ran {sum(expected.values())} jobs" in summary
    assert _table(summary) == expected
    deconvolve = next(line for line in summary.splitlines() if line.strip().startswith("deskew_deconvolve"))
    assert deconvolve.rstrip().endswith("cpu") and "MiB" in deconvolve
    assert "provenance" in summary and "(no step record)" in summary
    assert "report: results/tiny/qc/report.html" in summary
    assert "logs:   work/tiny/logs/" in summary


def test_rerun_summary_says_nothing_ran(tiny_run):
    result = run_workflow(tiny_run.run_dir, tiny_run.config_path, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing ran: every output was already up to date." in result.stdout


def test_status_of_a_finished_run(tiny_run, tmp_path):
    """From the run directory (relative path) and from elsewhere (absolute path): all done, nothing left."""
    for cwd, target in (
        (tiny_run.run_dir, "results/tiny"),
        (tmp_path, str(tiny_run.run_dir / "results/tiny")),
    ):
        result = _llsmflow("status", target, cwd=cwd)
        assert result.returncode == 0, result.stderr
        done, _, left = result.stdout.partition("left:")
        assert _table(done) == {**JOBS, "ingest": 1}
        assert left.startswith(" nothing; the run is complete.")
        assert f"report: {tiny_run.run_dir / 'results/tiny/qc/report.html'}\n" in result.stdout
        assert str(tiny_run.config_path) in result.stdout


def test_status_lists_what_is_left(tiny_run, tmp_path):
    """A changed tracking parameter leaves tracking, what depends on it and, since the fused volumes were
    temporary, what made them; a new dataset leaves everything. (The changed configs are written outside the
    shared run directory; status runs in it.)"""
    changed = dict(tiny_run.config, track=dict(tiny_run.config["track"], min_track_length=4))
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    result = _llsmflow("status", "--configfile", str(path), "--workflow-dir", str(REPO), cwd=tiny_run.run_dir)
    assert result.returncode == 0, result.stderr
    done, _, left = result.stdout.partition("left:")
    assert _table(done)["deskew_deconvolve"] == JOBS["deskew_deconvolve"]
    # the PSFs and the sample table are kept, everything else between the raw stacks and the tracks is temporary
    assert _table(left) == {**{k: n for k, n in JOBS.items() if k != "prepare_psf"}, "provenance": 1}

    fresh = dict(tiny_run.config, dataset="again")
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump(fresh))
    result = _llsmflow("status", "--configfile", str(path), "--workflow-dir", str(REPO), cwd=tiny_run.run_dir)
    assert result.returncode == 0, result.stderr
    assert "done: nothing yet" in result.stdout
    _, _, left = result.stdout.partition("left:")
    assert _table(left) == {**JOBS, "ingest": 1, "provenance": 1}
    assert "(not written yet)" in result.stdout
    assert not (tiny_run.run_dir / "results" / "again").exists()  # a status never runs anything


def test_status_without_a_run_record_is_one_clear_error(tmp_path):
    results = tmp_path / "results" / "lost"
    results.mkdir(parents=True)
    result = _llsmflow("status", str(results), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass --configfile" in lines[0] and str(results) in lines[0]
    missing = _llsmflow("status", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "results directory not found" in missing.stderr


def test_parse_job_stats():
    text = """Building DAG of jobs...
Job stats:
job           count
----------  -------
deskew           20
qc_report         1
all               1
total            22

Reasons:
    (check individual jobs above for details)
"""
    assert parse_job_stats(text) == {"deskew": 20, "qc_report": 1, "all": 1}
    assert parse_job_stats("Nothing to be done (all requested files are present and up to date).") == {}


def test_schema_defaults_are_filled_once_and_match_the_example_config():
    """fill_defaults gives every key of config/config.yaml its value there (nested sections too)."""
    from llsmflow.run.config import fill_defaults, load_schema

    example = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    given = {"dataset": example["dataset"], "raw_dir": example["raw_dir"], "metadata": example["metadata"]}
    assert fill_defaults(given, load_schema(REPO)) == example
    partial = fill_defaults({"stitch": {"min_quality": 0.9}}, load_schema(REPO))
    assert partial["stitch"]["min_quality"] == 0.9 and partial["stitch"]["max_shift_um"] == 3.0
