"""`llsmflow status` without a dry run: the job plan a starting run writes (llsmflow.run.jobplan) answers what
is left, and gives way to the dry run as soon as it no longer describes the run."""

import os
import time
from pathlib import Path

from llsmflow.run.jobplan import jobs_left_from_plan, plan_path, write_plan
from llsmflow.run.status import jobs_left, run_status
from tests.conftest import REPO


def _touch(path: Path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _plan(run_dir, to_run, records, raw_files, print_="f1"):
    return write_plan(
        plan_path(run_dir / "work"),
        print_,
        records,
        {"provenance": ["results/run-record.json"]},
        raw_files,
        run_dir / "raw",
        final=["provenance"],
        to_run=to_run,
    )


def test_plan_counts_missing_and_to_be_rewritten_records(tmp_path):
    raw = tmp_path / "raw"
    stacks = [raw / f"s{i}.tif" for i in range(3)]
    for stack in stacks:
        _touch(stack, "raw")
    records = {"deskew": [f"work/steps/deskew/s{i}.json" for i in range(3)], "ingest": ["work/steps/ingest.json"]}
    # an earlier run left ingest and two deskews; the new run is to redo deskew s1 (say, its code changed)
    for name in ("work/steps/ingest.json", "work/steps/deskew/s0.json", "work/steps/deskew/s1.json"):
        _touch(tmp_path / name)
    old = time.time_ns() - 10**9
    for name in ("work/steps/ingest.json", "work/steps/deskew/s0.json", "work/steps/deskew/s1.json"):
        os.utime(tmp_path / name, ns=(old, old))
    plan = _plan(tmp_path, ["work/steps/deskew/s1.json", "work/steps/deskew/s2.json"], records, stacks)
    assert jobs_left_from_plan(plan, "f1", tmp_path) == {"deskew": 2, "provenance": 1}
    # s1 rewritten by this run, s2 written, the run record after them: nothing left
    _touch(tmp_path / "work/steps/deskew/s1.json")
    _touch(tmp_path / "work/steps/deskew/s2.json")
    _touch(tmp_path / "results/run-record.json")
    assert jobs_left_from_plan(plan, "f1", tmp_path) == {}
    # a record rewritten after the run record (a rerun job): provenance is left again
    later = time.time_ns() + 10**9
    os.utime(tmp_path / "work/steps/deskew/s0.json", ns=(later, later))
    assert jobs_left_from_plan(plan, "f1", tmp_path) == {"provenance": 1}


def test_plan_gives_way_to_the_dry_run(tmp_path):
    raw = tmp_path / "raw"
    stacks = [raw / f"s{i}.tif" for i in range(2)]
    for stack in stacks:
        _touch(stack, "raw")
    records = {"deskew": ["work/steps/deskew/s0.json", "work/steps/deskew/s1.json"]}
    plan = _plan(tmp_path, [], records, stacks)
    assert jobs_left_from_plan(plan, "f1", tmp_path) == {"deskew": 2, "provenance": 1}
    assert jobs_left_from_plan(plan, "another config", tmp_path) is None
    assert jobs_left_from_plan(tmp_path / "absent.json", "f1", tmp_path) is None
    later = time.time_ns() + 10**9
    os.utime(stacks[0], ns=(later, later))  # a raw file touched
    assert jobs_left_from_plan(plan, "f1", tmp_path) is None
    plan = _plan(tmp_path, [], records, stacks)
    _touch(raw / "s9.tif", "a new stack")  # a raw file added
    assert jobs_left_from_plan(plan, "f1", tmp_path) is None
    # which jobs the run was to redo is unknown, and a record is older than the run: only the dry run knows
    plan = _plan(tmp_path, None, records, [*stacks, raw / "s9.tif"])
    old = time.time_ns() - 10**9
    _touch(tmp_path / "work/steps/deskew/s0.json")
    os.utime(tmp_path / "work/steps/deskew/s0.json", ns=(old, old))
    assert jobs_left_from_plan(plan, "f1", tmp_path) is None


def test_status_of_the_tiny_run_comes_from_its_plan_and_equals_the_dry_run(tiny_run):
    status = run_status(str(tiny_run.run_dir / "results/tiny"), None, None)
    assert status.left_source == "job plan" and status.left == {}
    dry = jobs_left(REPO, tiny_run.config_path, tiny_run.run_dir)
    dry.pop("all", None)
    assert dry == status.left


def test_the_run_keeps_each_raw_digest_once(tiny_run):
    """The provenance job's digests (seeded from the archive's manifest) persist in work/<dataset>/.cache: every
    raw file with its size, mtime and the sha256 the run record gives it."""
    import json

    cache = json.loads((tiny_run.run_dir / "work/tiny/.cache/sha256.json").read_text())["files"]
    record = json.loads((tiny_run.run_dir / "results/tiny/provenance/run-record.json").read_text())
    assert record["inputs"]
    for entry in record["inputs"]:
        path = Path(entry["path"])
        path = path if path.is_absolute() else tiny_run.run_dir / path
        size, mtime_ns, digest = cache[os.path.abspath(path)]
        assert digest == entry["sha256"] and size == entry["bytes"] == path.stat().st_size
        assert mtime_ns == path.stat().st_mtime_ns
