"""The crate of a large run: built without rocrate's scanning lookups, one CreateAction per rule beyond
JOB_ACTIONS_MAX step records (per-job records in run-record.json, named with its sha256), still a valid
Provenance Run Crate."""

import hashlib
import json
from pathlib import Path

import pytest

from llsmflow.provenance import StepRecorder, run_record
from llsmflow.provenance.crate import METADATA, write_crate
from tests.rocrate_offline import seed_validator_cache, validate

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [f"s{i}" for i in range(6)]


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory):
    """Six deskew and six deconvolve jobs (real step records and files), crate written with one action per rule."""
    import os

    run_dir = tmp_path_factory.mktemp("batched")
    cwd = Path.cwd()
    os.chdir(run_dir)
    try:
        raw = run_dir / "raw"
        raw.mkdir()
        results = Path("results/x")
        (results / "provenance").mkdir(parents=True)
        (results / "tracks.csv").write_text("particle,frame\n0,0\n")
        for i, sample in enumerate(SAMPLES):
            (raw / f"{sample}.tif").write_bytes(f"raw {sample}".encode())
            with StepRecorder(
                f"work/steps/deskew/{sample}.json",
                "deskew",
                params={"fill_value": 0.0},
                wildcards={"sample": sample},
                inputs=[str(raw / f"{sample}.tif")],
                outputs=[f"work/deskewed/{sample}.tif"],
            ):
                pass
            with StepRecorder(
                f"work/steps/deconvolve/{sample}.json",
                "deconvolve",
                params={"iterations": 10, "selector": i},
                wildcards={"sample": sample},
                inputs=[f"work/deskewed/{sample}.tif"],
                outputs=[f"work/deconvolved/{sample}.tif"],
            ) as step:
                step.note(backend="cpu")
        steps = sorted(Path("work/steps").rglob("*.json"))
        record = run_record(
            {"dataset": "x"}, REPO, steps, sorted(raw.glob("*.tif")), [str(results / "tracks.csv")], run_dir=run_dir
        )
        crate_dir = results / "provenance"
        (crate_dir / "run-record.json").write_text(json.dumps(record))
        write_crate(crate_dir, record, REPO, run_dir, [str(results / "tracks.csv")], job_actions_max=5)
    finally:
        os.chdir(cwd)
    return run_dir, run_dir / crate_dir, record


def _graph(crate_dir):
    return {e["@id"]: e for e in json.loads((crate_dir / METADATA).read_text())["@graph"]}


def _ids(value):
    return [v["@id"] for v in (value if isinstance(value, list) else [value])]


def test_one_action_per_rule_with_every_file_and_the_job_records(batched_run):
    run_dir, crate_dir, record = batched_run
    graph = _graph(crate_dir)
    assert not [i for i in graph if i.startswith("#exec-deconvolve-s")]  # no per-job actions
    action = graph["#exec-deconvolve-jobs"]
    assert action["@type"] == "CreateAction" and action["instrument"]["@id"] == "#tool-deconvolve"
    jobs = [s for s in record["steps"] if s["step"] == "deconvolve"]
    usage = {graph[i]["propertyID"]: graph[i]["value"] for i in _ids(action["resourceUsage"])}
    assert usage["jobs"] == 6 and usage["backend"] == "cpu"
    assert usage["peak_memory_mb"] == max(j["peak_memory_mb"] for j in jobs)
    assert usage["wall_time_s"] == pytest.approx(sum(j["seconds"] for j in jobs), abs=1e-3)
    assert action["startTime"] == min(j["start"] for j in jobs) and action["endTime"] == max(j["end"] for j in jobs)
    # the shared parameter as a PropertyValue; the one that differs is named, its values are in the run record
    objects = [graph[i] for i in _ids(action["object"])]
    assert {e["name"]: e["value"] for e in objects if e["@type"] == "PropertyValue"} == {"iterations": 10}
    assert "selector" in action["description"]
    inputs = {e["name"] for e in objects if e["@type"] == "File"}
    results = {graph[i]["name"] for i in _ids(action["result"])}
    assert inputs == {f"work/deskewed/{s}.tif" for s in SAMPLES}
    assert results == {f"work/deconvolved/{s}.tif" for s in SAMPLES}
    # the per-job records: run-record.json, with its sha256
    linked = graph[action["subjectOf"]["@id"]]
    assert linked["@id"] == "run-record.json"
    assert linked["sha256"] == hashlib.sha256((crate_dir / "run-record.json").read_bytes()).hexdigest()
    # each raw stack is an object of the deskew action, and the ControlAction links the rule's HowToStep
    deskew = graph["#exec-deskew-jobs"]
    raw = {graph[i]["@id"] for i in _ids(deskew["object"]) if graph[i]["@type"] == "File"}
    assert raw == {f"#raw/{s}.tif" for s in SAMPLES}  # relative to the run directory, never its absolute path
    control = graph["#control-exec-deconvolve-jobs"]
    assert control["object"]["@id"] == action["@id"] and control["instrument"]["@id"] == "#step-deconvolve"
    organize = next(e for e in graph.values() if e["@type"] == "OrganizeAction")
    assert set(_ids(organize["object"])) == {"#control-exec-deconvolve-jobs", "#control-exec-deskew-jobs"}


def test_batched_crate_validates_as_provenance_run_crate(batched_run, tmp_path):
    _, crate_dir, _ = batched_run
    result = validate(crate_dir, seed_validator_cache(tmp_path / "cache"))
    assert result.returncode == 0, result.stdout[-6000:]


def test_crate_is_built_without_rocrate_lookups(batched_run, tmp_path, monkeypatch):
    """rocrate's crate.get() scans every entity on a miss (quadratic building): the builder never calls it."""
    from rocrate.rocrate import ROCrate

    from llsmflow.provenance.crate import build_crate

    calls = []
    original = ROCrate.dereference

    def counting(self, entity_id, default=None):
        calls.append(entity_id)
        return original(self, entity_id, default)

    monkeypatch.setattr(ROCrate, "dereference", counting)
    monkeypatch.setattr(ROCrate, "get", counting)
    run_dir, crate_dir, record = batched_run
    for job_actions_max in (5, 1000):
        crate = build_crate(crate_dir, record, REPO, run_dir, job_actions_max=job_actions_max)
        assert len(list(crate.get_entities())) > 50
    assert calls == []
