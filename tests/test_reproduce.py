"""`llsmflow reproduce`: one recorded run of the tiny acquisition, re-run from its crate three ways."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import LLSMFLOW, SECRET_PASSWORD, SECRET_TOKEN
from tests.rocrate_offline import seed_validator_cache, validate

pytestmark = pytest.mark.e2e

# The recorded run is the session fixture ``full_run`` (tests/conftest.py), shared with the end-to-end tests:
# the whole workflow on a private copy of the tiny acquisition's raw data, secrets planted in its environment
# (SECRET_TOKEN, and SECRET_PASSWORD in a container reference). Tests change it only on copies, or put back
# exactly what they changed.


def _reproduce(crate, out_dir):
    return subprocess.run(
        [str(LLSMFLOW), "reproduce", str(crate), "--output", str(out_dir), "--cores", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_run_crate_validates_and_holds_no_secret(full_run, tmp_path):
    run_dir, crate = full_run.run_dir, full_run.crate
    assert (crate / "ro-crate-metadata.json").is_file() and (crate / "run-record.json").is_file()
    result = validate(crate, seed_validator_cache(tmp_path / "cache"))
    assert result.returncode == 0, result.stdout[-6000:]
    for path in (run_dir / "results").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET_TOKEN.encode() not in data and SECRET_PASSWORD.encode() not in data, path


def test_reproduce_gives_identical_or_tolerated_outputs(full_run, tmp_path):
    result = _reproduce(full_run.crate, tmp_path / "again")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(("IDENTICAL", "WITHIN", "DIFF", "MISS"))
    ]
    assert lines and all(line.startswith(("IDENTICAL", "WITHIN TOLERANCE")) for line in lines), result.stdout
    # each FFT shape was measured once and every other deconvolution job took those plans from the run's wisdom
    # (jobs ran one at a time: 2 threads on 2 cores), and reproduce starts from the same wisdom: the re-run
    # computes every FFT the same way, so on this machine nothing may differ, not even by round-off
    logs = (full_run.run_dir / "work" / "tiny" / "logs" / "deskew_deconvolve").glob("*.log")
    measured = re.findall(r"FFTW planned (\(.*?\))", "\n".join(log.read_text() for log in logs))
    if measured and len(measured) == len(set(measured)):
        assert all(line.startswith("IDENTICAL") for line in lines), result.stdout
    compared = " ".join(lines)
    assert "tiny.ome.zarr" in compared and "tracks/ch0.parquet" in compared and "qc/mosaic.png" in compared
    # the recorded container is absent here: the difference is reported, not hidden
    assert "warning: software differs: container digest" in result.stdout


def test_reproduce_refuses_a_changed_raw_input(full_run, tmp_path):
    # the crate names the raw files the run read by absolute path: change one there, then put back its bytes
    # and its modification time, so the shared run stays up to date for the tests that rerun it
    victim = sorted(full_run.raw_dir.glob("Scan_*.tif"))[1]
    original, times = victim.read_bytes(), victim.stat()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    victim.write_bytes(bytes(changed))
    try:
        result = _reproduce(full_run.crate, tmp_path / "refused")
    finally:
        victim.write_bytes(original)
        os.utime(victim, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and str(victim) in message[0] and "changed since the run" in message[0]
    assert not (tmp_path / "refused" / "results").exists()


def test_reproduce_reports_outputs_changed_by_a_parameter(full_run, tmp_path):
    # Not on the cheaper tiny_run: its fused mosaic's extent sits where a ~1e-8 µm round-off of the
    # registration moves the plot's right spine by one pixel (seen once in six re-runs: 0.3 % of the mosaic's
    # pixels, beyond reproduce's PNG tolerance), which would make "QC unchanged" below fail by chance.
    edited = tmp_path / "crate"
    shutil.copytree(full_run.crate, edited)
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
