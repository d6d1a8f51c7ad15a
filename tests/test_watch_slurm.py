"""`llsmflow watch --profile slurm` on a real SLURM (a single-node controller and node on localhost, the
``slurm_cluster`` fixture of tests/conftest.py; skipped without root).

The acquisition simulator of tests/test_watch.py writes the tiny acquisition of the ``tiny_run`` batch run
(2 tiles × 2 channels × 3 timepoints: 12 volumes) into a folder while ``llsmflow watch`` follows it with a
copy of profiles/slurm (test-only speed-ups: first status poll after 3 s, polls every 3 s, SLURM logs kept).
Checked: every volume's deskew_deconvolve job ran exactly once, inside a SLURM job that completed; the
volumes went out in batches (fewer sbatch submissions of that rule than volumes); the final outputs equal
the batch run's within `llsmflow reproduce`'s tolerances; the session ends with exit 0 and no job of it left
in the queue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import LLSMFLOW, REPO, workflow_config, write_workflow_config
from tests.test_slurm import _jobcomp, _jobcomp_size, _node_cpus
from tests.test_watch import SETTLE_S, start_acquisition, watch_setup

pytestmark = pytest.mark.e2e

SRC = REPO / "src"
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+)")


def _profile(base: Path) -> Path:
    """profiles/slurm with test-only speed-ups (production: first poll after 40 s, then every 10 s; latency
    wait 60 s); every job's SLURM log kept."""
    settings = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    settings.update(
        {
            "slurm-init-seconds-before-status-checks": 3,
            "seconds-between-status-checks": 3,
            "slurm-keep-successful-logs": True,
            "latency-wait": 5,
        }
    )
    profile = base / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    return profile


@pytest.fixture(scope="module")
def watched_on_slurm(slurm_cluster, tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("watch-slurm")
    raw, source, stacks, run_dir, config, config_path = watch_setup(base, tiny_run)
    command = [
        "timeout", "-k", "15", "900",  # Snakemake ignores SIGTERM while jobs run
        str(LLSMFLOW), "watch", str(raw), "--configfile", str(config_path), "--workflow-dir", str(REPO),
        "--profile", str(_profile(base)), "--cores", str(_node_cpus()), "--settle", str(SETTLE_S),
        "--idle-timeout", "120",
    ]
    offset = _jobcomp_size()
    instrument = start_acquisition(source, raw, stacks, truncated=stacks[2])
    started = time.time()
    log = base / "watch.log"
    with open(log, "w") as out:
        status = subprocess.run(
            command, cwd=run_dir, env=dict(os.environ, PYTHONPATH=str(SRC)), stdout=out,
            stderr=subprocess.STDOUT, timeout=960,
        ).returncode
    seconds = time.time() - started
    instrument.join(60)
    queue = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True).stdout
    return {
        "run_dir": run_dir, "raw": raw, "stacks": stacks, "instrument": instrument, "status": status,
        "log": log.read_text(), "seconds": seconds, "jobcomp": _jobcomp(offset), "queue": queue,
        "config": config,
    }


def _round_logs(run_dir: Path) -> list[str]:
    """Snakemake's output of every round and of the final run, oldest first (work/tiny/logs/snakemake/)."""
    return [p.read_text(errors="replace") for p in sorted((run_dir / "work/tiny/logs/snakemake").glob("*.log"))]


def _volumes_run_in_slurm_jobs(run_dir: Path) -> dict[str, list[str]]:
    """sample → SLURM job ids of the jobs whose log shows its deskew_deconvolve job run (the executor plugin's
    kept logs, .snakemake/slurm_logs/…/<jobid>.log: the Snakemake run inside each allocation lists each job
    as ``rule …`` and runs it as ``localrule …``, through the slurm-jobstep executor)."""
    ran: dict[str, list[str]] = {}
    for path in (run_dir / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = None
        for line in path.read_text(errors="replace").splitlines():
            text = line.strip()
            match = re.match(r"^localrule (\w+):$", text)
            if match:
                rule = match.group(1)
            elif rule == "deskew_deconvolve" and text.startswith("wildcards:"):
                ran.setdefault(text[len("wildcards:") :].strip(), []).append(path.stem)
                rule = None
    return ran


def test_watch_on_slurm_ends_cleanly(watched_on_slurm):
    w = watched_on_slurm
    assert w["instrument"].error is None
    assert w["status"] == 0, w["log"][-6000:]
    assert "acquisition ended (every declared stack is complete and processed)" in w["log"]
    assert "processed 12" in w["log"]
    # no job of this session is left in the queue, and every one it submitted completed
    assert str(w["run_dir"].resolve()) not in w["queue"], w["queue"]
    ours = {i: j for i, j in w["jobcomp"].items() if j.get("Name") != "llsmflow-dask"}
    assert ours and {j["JobState"] for j in ours.values()} == {"COMPLETED"}, ours


def test_every_volume_deconvolved_once_in_a_slurm_job(watched_on_slurm):
    w = watched_on_slurm
    run_dir = w["run_dir"]
    ran = _volumes_run_in_slurm_jobs(run_dir)
    assert len(ran) == 12 and {len(ids) for ids in ran.values()} == {1}, ran
    records = [json.loads(p.read_text()) for p in (run_dir / "work/tiny/steps/deskew_deconvolve").glob("*.json")]
    assert len(records) == 12
    job_ids = {r["slurm_job_id"] for r in records}
    assert None not in job_ids and job_ids == {ids[0] for ids in ran.values()}
    assert job_ids <= set(w["jobcomp"])  # SLURM jobs that completed
    # batches: fewer submissions than volumes, counted from every round's Snakemake output
    submissions = [SUBMITTED.findall(text) for text in _round_logs(run_dir)]
    all_ids = {slurm for found in submissions for _, slurm in found}
    assert job_ids <= all_ids
    assert len(job_ids) < 12
    latencies = sorted({float(x) for x in re.findall(r"last volume (\d+\.\d) s after", w["log"])})
    print(
        f"watch on SLURM: {w['seconds']:.0f} s, {len(all_ids)} sbatch submissions in all "
        f"({len(job_ids)} of deskew_deconvolve for 12 volumes), {len(submissions)} Snakemake runs "
        f"(rounds + final), latencies seen {latencies}"
    )


def test_results_equal_a_batch_run(watched_on_slurm, tiny_run):
    from llsmflow.provenance.reproduce import compare_outputs

    w = watched_on_slurm
    record = json.loads((tiny_run.run_dir / "results/tiny/provenance/run-record.json").read_text())
    moved = {str(w["raw"].resolve()): str((tiny_run.acquisition / "raw").resolve()),
             str(w["raw"]): str(tiny_run.acquisition / "raw")}
    results = compare_outputs(record, tiny_run.run_dir, w["run_dir"], moved)
    bad = [(r.path, r.status, r.detail) for r in results if r.status not in ("identical", "within tolerance")]
    assert len(results) > 10 and bad == []


def test_round_with_a_job_pending_forever_stops(slurm_cluster, tiny_acquisition, tmp_path):
    """A round whose job SLURM keeps PENDING for a reason that cannot clear (a site's `set-resources` asking
    more CPUs than a node has: PartitionConfig) is stopped with that reason, as `llsmflow run` stops such a
    run, instead of waiting forever; the final run stops the same way (exit 2), and no job is left queued."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_acquisition / "raw", raw)  # the acquisition already written: one round takes it all
    profile = _profile(tmp_path)
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    settings["set-resources"] = {"deskew_deconvolve": {"cpus_per_task": _node_cpus() + 6}}
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    run_dir = tmp_path / "run"
    config = workflow_config("tiny", raw)
    config["deconvolution"]["iterations"] = 3
    config_path = write_workflow_config(run_dir, config)
    result = subprocess.run(
        ["timeout", "-k", "15", "400", str(LLSMFLOW), "watch", str(raw), "--configfile", str(config_path),
         "--workflow-dir", str(REPO), "--profile", str(profile), "--cores", str(_node_cpus()),
         "--settle", str(SETTLE_S), "--idle-timeout", "5"],
        cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=420,
        env=dict(os.environ, PYTHONPATH=str(SRC), LLSMFLOW_PENDING_POLL_S="2"),
    )
    output = result.stdout
    assert result.returncode == 2, output[-5000:]
    lines = output.splitlines()
    stuck = [i for i, line in enumerate(lines) if line.startswith("llsmflow watch: error: SLURM job")]
    failed = [i for i, line in enumerate(lines) if "round 1 failed" in line]
    # the round's own error line comes before its "failed" line; the final run's one after it
    assert failed and len(stuck) == 2 and stuck[0] < failed[0] < stuck[1], output[-5000:]
    assert all("is pending for reason PartitionConfig" in lines[i] for i in stuck)
    left = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True).stdout
    assert str(run_dir.resolve()) not in left
