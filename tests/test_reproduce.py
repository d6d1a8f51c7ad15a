"""`llsmflow reproduce`: one recorded run of the tiny acquisition, re-run from its crate three ways."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.rocrate_offline import seed_validator_cache, validate

REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"
TOKEN = "fake-secret-value-8d2e1"
PASSWORD = "pw-do-not-record-55"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def recorded_run(tiny_acquisition, tmp_path_factory):
    """The workflow run once on a private copy of the raw data, secrets planted; return (run_dir, raw_dir, crate)."""
    base = tmp_path_factory.mktemp("recorded")
    raw = base / "raw"
    shutil.copytree(tiny_acquisition / "raw", raw)
    run_dir = base / "run"
    run_dir.mkdir()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(dataset="tiny", raw_dir=str(raw), results_dir="results", work_dir="work")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(
        os.environ,
        LLSMFLOW_TEST_TOKEN=TOKEN,
        LLSMFLOW_CONTAINER_IMAGE=f"docker://reviewer:{PASSWORD}@ghcr.io/lab/llsmflow@sha256:{'c' * 64}",
    )
    result = subprocess.run(
        [str(LLSMFLOW), "run", "--configfile", "config.yaml", "--workflow-dir", str(REPO), "--cores", "2"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(f"workflow failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return run_dir, raw, run_dir / "results" / "tiny" / "provenance"


def _reproduce(crate, out_dir):
    return subprocess.run(
        [str(LLSMFLOW), "reproduce", str(crate), "--output", str(out_dir), "--cores", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_run_crate_validates_and_holds_no_secret(recorded_run, tmp_path):
    run_dir, _, crate = recorded_run
    assert (crate / "ro-crate-metadata.json").is_file() and (crate / "run-record.json").is_file()
    result = validate(crate, seed_validator_cache(tmp_path / "cache"))
    assert result.returncode == 0, result.stdout[-6000:]
    for path in (run_dir / "results").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data and PASSWORD.encode() not in data, path


def test_reproduce_gives_identical_or_tolerated_outputs(recorded_run, tmp_path):
    _, _, crate = recorded_run
    result = _reproduce(crate, tmp_path / "again")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(("IDENTICAL", "WITHIN", "DIFF", "MISS"))
    ]
    assert lines and all(line.startswith(("IDENTICAL", "WITHIN TOLERANCE")) for line in lines), result.stdout
    compared = " ".join(lines)
    assert "tiny.ome.zarr" in compared and "tracks/ch0.parquet" in compared and "qc/mosaic.png" in compared
    # the recorded container is absent here: the difference is reported, not hidden
    assert "warning: software differs: container digest" in result.stdout


def test_reproduce_refuses_a_changed_raw_input(recorded_run, tmp_path):
    _, raw, crate = recorded_run
    victim = sorted(raw.glob("Scan_*.tif"))[1]
    original = victim.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    victim.write_bytes(bytes(changed))
    try:
        result = _reproduce(crate, tmp_path / "refused")
    finally:
        victim.write_bytes(original)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and str(victim) in message[0] and "changed since the run" in message[0]
    assert not (tmp_path / "refused" / "results").exists()


def test_reproduce_reports_outputs_changed_by_a_parameter(recorded_run, tmp_path):
    _, _, crate = recorded_run
    edited = tmp_path / "crate"
    shutil.copytree(crate, edited)
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["track"]["diameter_um"] = 0.7  # was 0.5: another feature size changes every measured particle
    (edited / "config.yaml").write_text(yaml.safe_dump(config))
    result = _reproduce(edited, tmp_path / "edited")
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
    different = [line for line in result.stdout.splitlines() if line.startswith("DIFFERENT")]
    for table in ("tracks/ch0.parquet", "tracks/ch0.csv", "tracks/ch1.parquet"):
        line = next((line for line in different if line.split()[1].endswith(table)), None)
        assert line is not None and any(m in line for m in ("max|a-b|/max|a|", "rows", "columns")), (
            table,
            result.stdout,
        )
    # the recorded parameter change is visible in the archive's processing history
    assert any("tiny.ome.zarr/zarr.json" in line and "diameter_um" in line for line in different), (
        result.stdout
    )
    # deconvolution and fusion do not depend on tracking: images and previews are reproduced
    assert not any("qc/" in line or "tiny.ome.zarr/s0" in line for line in different), result.stdout
