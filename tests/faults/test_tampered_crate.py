"""Issue 17, cases 1 and 6: `llsmflow reproduce` runs no code it has not verified, and only the raw files it
verified.

One real run of the tiny acquisition (the session fixture ``tiny_run``); every test tampers with a copy of its
crate (or of its raw data), never with the run itself. The refusals happen before anything runs (well under a
second); one test re-runs the workflow on relocated raw data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import LLSMFLOW

pytestmark = pytest.mark.e2e

COMMON = "workflow/workflow/rules/common.smk"  # a rule file of the snapshot, relative to the crate


def _crate(tiny_run):
    return tiny_run.run_dir / "results" / "tiny" / "provenance"


def _copy_crate(tiny_run, tmp_path):
    copy = tmp_path / "crate"
    shutil.copytree(_crate(tiny_run), copy)
    return copy


def _reproduce(crate, out_dir, *extra, timeout=900):
    return subprocess.run(
        [str(LLSMFLOW), "reproduce", str(crate), "--output", str(out_dir), "--cores", "2", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _plant(crate, marker):
    """One line of Python in the snapshot's common.smk that would create ``marker`` when Snakemake reads it."""
    with open(crate / COMMON, "a", encoding="utf-8") as handle:
        handle.write(f'\nPath({str(marker)!r}).write_text("planted code ran")\n')


def _one_line_refusal(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llsmflow reproduce: error: ")
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def _set_recorded_checksum(crate, relative, digest):
    """What a careful attacker does after planting: record the new sha256 in the metadata and the manifest."""
    metadata = crate / "ro-crate-metadata.json"
    graph = json.loads(metadata.read_text(encoding="utf-8"))
    for entity in graph["@graph"]:
        if entity["@id"] == relative:
            entity["sha256"] = digest
    metadata.write_text(json.dumps(graph, indent=2), encoding="utf-8")
    manifest = crate / "checksums.sha256"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    name = f"provenance/{relative}"
    manifest.write_text(
        "".join((f"{digest}  {name}" if line.endswith(f"  {name}") else line) + "\n" for line in lines),
        encoding="utf-8",
    )


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_crate_records_a_checksum_for_every_snapshot_file(tiny_run):
    crate = _crate(tiny_run)
    graph = {e["@id"]: e for e in json.loads((crate / "ro-crate-metadata.json").read_text())["@graph"]}
    manifest = {
        line.split("  ", 1)[1]: line.split("  ", 1)[0]
        for line in (crate / "checksums.sha256").read_text().splitlines()
    }
    snapshot = sorted(p for p in (crate / "workflow").rglob("*") if p.is_file())
    assert len(snapshot) > 10
    for path in snapshot:
        relative = path.relative_to(crate).as_posix()
        assert graph[relative]["sha256"] == _sha256(path), relative
        assert manifest[f"provenance/{relative}"] == _sha256(path), relative


def test_planted_code_in_the_snapshot_is_refused_before_it_runs(tiny_run, tmp_path):
    crate = _copy_crate(tiny_run, tmp_path)
    marker = tmp_path / "planted-code-ran"
    _plant(crate, marker)
    out = tmp_path / "rerun"
    result = _reproduce(crate, out)
    _one_line_refusal(result, crate / COMMON, "changed since the run", "refusing to run it")
    assert not marker.exists()
    assert not out.exists()


def test_planted_code_with_forged_checksums_differs_from_the_installed_workflow(tiny_run, tmp_path):
    crate = _copy_crate(tiny_run, tmp_path)
    marker = tmp_path / "planted-code-ran"
    _plant(crate, marker)
    _set_recorded_checksum(crate, COMMON, _sha256(crate / COMMON))
    out = tmp_path / "rerun"
    result = _reproduce(crate, out)
    _one_line_refusal(
        result, crate / "workflow", "differs from the installed llsmflow", COMMON, "--trust-snapshot"
    )
    assert not marker.exists()
    assert not out.exists()


def test_unlisted_file_in_the_snapshot_is_refused(tiny_run, tmp_path):
    crate = _copy_crate(tiny_run, tmp_path)
    extra = crate / "workflow" / "workflow" / "rules" / "extra.smk"
    extra.write_text('shell("touch planted")\n')
    _one_line_refusal(_reproduce(crate, tmp_path / "rerun"), extra, "not listed in the crate")
    assert not (tmp_path / "rerun").exists()


def test_a_hostile_crate_config_is_refused_before_anything_runs(tiny_run, tmp_path):
    """The crate's config.yaml is read as boundedly as a user's: an alias bomb fails at once, and a value of
    the wrong type (a boolean where a number belongs) is refused against the snapshot's own schema."""
    crate = _copy_crate(tiny_run, tmp_path)
    config = crate / "config.yaml"
    recorded = config.read_text(encoding="utf-8")
    config.write_text('a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n')
    _one_line_refusal(_reproduce(crate, tmp_path / "rerun", timeout=60), config, "alias")
    config.write_text(recorded.replace("min_quality: 0.5", "min_quality: true"), encoding="utf-8")
    assert "min_quality: true" in config.read_text(encoding="utf-8")
    _one_line_refusal(_reproduce(crate, tmp_path / "rerun2", timeout=120), config, "min_quality")
    assert not (tmp_path / "rerun").exists() and not (tmp_path / "rerun2").exists()


def test_symlink_in_the_snapshot_is_refused(tiny_run, tmp_path):
    crate = _copy_crate(tiny_run, tmp_path)
    outside = tmp_path / "outside.py"
    outside.write_text("print('not from the crate')\n")
    link = crate / "workflow" / "workflow" / "scripts" / "linked.py"
    link.symlink_to(outside)
    _one_line_refusal(_reproduce(crate, tmp_path / "rerun"), link, "symlink", str(outside))


def test_crate_without_snapshot_checksums_needs_the_flag(tiny_run, tmp_path):
    # a crate written before snapshot checksums existed: no sha256 on the snapshot's File entities
    crate = _copy_crate(tiny_run, tmp_path)
    metadata = crate / "ro-crate-metadata.json"
    graph = json.loads(metadata.read_text())
    for entity in graph["@graph"]:
        if entity["@id"].startswith("workflow/"):
            entity.pop("sha256", None)
    metadata.write_text(json.dumps(graph))
    manifest = crate / "checksums.sha256"
    manifest.write_text(
        "".join(
            line + "\n" for line in manifest.read_text().splitlines() if "  provenance/workflow/" not in line
        )
    )
    _one_line_refusal(
        _reproduce(crate, tmp_path / "rerun"), crate / "workflow", "records no sha256", "--trust-snapshot"
    )
    assert not (tmp_path / "rerun").exists()


# ---------------------------------------------------------------------------------------------- raw data


def _moved_raw(tiny_run, tmp_path):
    moved = tmp_path / "moved raw"
    shutil.copytree(tiny_run.acquisition / "raw", moved)
    return moved


def test_relocated_raw_data_are_checked_by_sha256(tiny_run, tmp_path):
    crate = _crate(tiny_run)
    moved = _moved_raw(tiny_run, tmp_path)
    victim = sorted(moved.glob("Scan_*.tif"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    out = tmp_path / "rerun"
    _one_line_refusal(_reproduce(crate, out, "--raw-dir", str(moved)), victim, "changed since the run")
    victim.unlink()
    _one_line_refusal(_reproduce(crate, out, "--raw-dir", str(moved)), victim, "missing")
    assert not out.exists()


def test_raw_data_left_at_the_old_place_point_to_raw_dir(tiny_run, tmp_path):
    # the recorded raw data are gone (a copy of the crate whose run record names a directory that is empty)
    crate = _copy_crate(tiny_run, tmp_path)
    graph_file = crate / "ro-crate-metadata.json"
    text = graph_file.read_text()
    old = (tiny_run.acquisition / "raw").resolve().as_uri()
    gone = (tmp_path / "gone").resolve()
    gone.mkdir()
    graph_file.write_text(text.replace(old, gone.as_uri()))
    record = json.loads((crate / "run-record.json").read_text())
    record["config"]["raw_dir"] = str(gone)
    (crate / "run-record.json").write_text(json.dumps(record))
    _one_line_refusal(_reproduce(crate, tmp_path / "rerun"), gone, "missing", "--raw-dir")


def test_an_extra_timepoint_in_the_raw_dir_is_refused(tiny_run, tmp_path):
    # other data must not slip into the re-run: a whole extra timepoint beside the verified files
    crate = _crate(tiny_run)
    moved = _moved_raw(tiny_run, tmp_path)
    last = max(int(p.stem[-5:-1]) for p in moved.glob("Scan_*t.tif"))
    for stack in sorted(moved.glob(f"Scan_*{last:04d}t.tif")):
        shutil.copyfile(
            stack, stack.with_name(stack.name.replace(f"{last:04d}t.tif", f"{last + 1:04d}t.tif"))
        )
    result = _reproduce(crate, tmp_path / "rerun", "--raw-dir", str(moved))
    _one_line_refusal(result, moved)
    assert not (tmp_path / "rerun").exists()


def test_reproduce_runs_on_the_verified_raw_data_not_on_config_raw_dir(tiny_run, tmp_path):
    # the raw data moved (--raw-dir), and the crate's config.yaml names another directory with other data:
    # the re-run reads the moved, verified files, and says so
    crate = _copy_crate(tiny_run, tmp_path)
    moved = _moved_raw(tiny_run, tmp_path)
    decoy = tmp_path / "decoy"
    shutil.copytree(tiny_run.acquisition / "raw", decoy)
    for stack in decoy.glob("Scan_*.tif"):
        stack.write_bytes(stack.read_bytes()[:-1] + b"\x07")
    config = yaml.safe_load((crate / "config.yaml").read_text())
    config["raw_dir"] = str(decoy)
    (crate / "config.yaml").write_text(yaml.safe_dump(config))
    before = {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in moved.iterdir()}
    out = tmp_path / "rerun"
    result = _reproduce(crate, out, "--raw-dir", str(moved))
    assert result.returncode in (0, 1), result.stdout[-4000:] + result.stderr[-4000:]
    stdout = result.stdout
    assert "workflow: llsmflow" in stdout and "git commit" in stdout
    assert "identical to the installed llsmflow" in stdout
    assert f"note: config.yaml names raw_dir {decoy}" in stdout
    assert f"files in {moved.resolve()} match their recorded sha256" in stdout
    rerun_config = yaml.safe_load((out / "config.yaml").read_text())
    assert rerun_config["raw_dir"] == str(moved.resolve())
    record = json.loads((out / "results" / "tiny" / "provenance" / "run-record.json").read_text())
    assert {os.path.basename(e["path"]) for e in record["inputs"]} == set(before)
    assert all(str(moved.resolve()) in str((out / e["path"]).resolve()) for e in record["inputs"])
    assert not any(line.startswith("MISSING") for line in stdout.splitlines()), stdout
    assert {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in moved.iterdir()} == before
