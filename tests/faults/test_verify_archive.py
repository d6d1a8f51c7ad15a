"""Issue 17, case 9 (part): `llsmflow verify` reports symlinks inside an archive instead of following them,
cross-checks the tables' sha256 recorded in the archive's attributes, and the manifests' ``raw/…`` lines are
checkable with the real ``sha256sum -c`` by the commands docs/provenance.md gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llsmflow.archive import write_dataset_archive
from tests.conftest import LLSMFLOW, REPO

# the commands of docs/provenance.md ("Checking the manifests with sha256sum"), run from the manifest's root
RESULTS_CHECK = r"grep -v '^\\\?[0-9a-f]\{64\}  raw/' MANIFEST | sha256sum --check --strict -"
RAW_CHECK = (
    r"sed -n 's|^\(\\\?[0-9a-f]\{64\}\)  raw/|\1  |p' MANIFEST | (cd RAW_DIR && sha256sum --check --strict -)"
)

needs_sha256sum = pytest.mark.skipif(shutil.which("sha256sum") is None, reason="GNU sha256sum not installed")


@pytest.fixture
def archive(tmp_path):
    """A small archive written by llsmflow: one image, one table, two raw inputs (one with a space)."""
    raw = tmp_path / "raw data"
    raw.mkdir()
    (raw / "stack 0.tif").write_bytes(b"raw stack bytes" * 100)
    (raw / "acquisition.json").write_text('{"timepoints": 1}')
    table = tmp_path / "tracks.parquet"
    pd.DataFrame({"x": [1.0, 2.0], "particle": [0, 1]}).to_parquet(table)
    image = np.arange(2 * 8 * 16 * 16, dtype=np.uint16).reshape(1, 2, 8, 16, 16)
    path = write_dataset_archive(
        tmp_path / "data.ome.zarr",
        image,
        (0.2, 0.1, 0.1),
        1.0,
        ["a", "b"],
        tables={"tracks": table},
        raw_files=sorted(raw.iterdir()),
        chunks_zyx=(4, 8, 8),
        n_levels=1,
    )
    return path, raw


def _verify(archive, *extra, timeout=60):
    return subprocess.run(
        [str(LLSMFLOW), "verify", str(archive), *extra], capture_output=True, text=True, timeout=timeout
    )


def _chunk(archive: Path) -> Path:
    return next(
        p
        for p in sorted(archive.rglob("*"))
        if p.is_file()
        and p.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
        and "/s0/" in p.as_posix()
    )


def test_intact_archive_verifies(archive):
    result = _verify(archive[0])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout


def test_chunk_symlink_to_a_file_outside_is_reported_not_followed(archive, tmp_path):
    path, _ = archive
    chunk = _chunk(path)
    # the outside file has the chunk's very bytes (a copy would pass a checksum) ...
    outside = tmp_path / "elsewhere.bin"
    shutil.copyfile(chunk, outside)
    chunk.unlink()
    chunk.symlink_to(outside)
    result = _verify(path)
    name = chunk.relative_to(path).as_posix()
    assert result.returncode == 1
    assert f"symlink (not followed): {name} -> {outside}" in result.stdout
    assert "1 symlinks" in result.stderr
    # ... and a link to something that blocks when read (a FIFO) shows it is never opened
    chunk.unlink()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    chunk.symlink_to(fifo)
    result = _verify(path, timeout=30)
    assert result.returncode == 1 and f"symlink (not followed): {name} -> {fifo}" in result.stdout


def test_directory_symlink_is_reported_and_not_walked(archive, tmp_path):
    path, _ = archive
    outside = tmp_path / "outside dir"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the archive")
    (path / "linked").symlink_to(outside, target_is_directory=True)
    result = _verify(path)
    assert result.returncode == 1
    assert f"symlink (not followed): linked -> {outside}" in result.stdout
    assert "secret.txt" not in result.stdout


def _root_metadata(path: Path) -> Path:
    return path / "zarr.json" if (path / "zarr.json").is_file() else path / ".zattrs"


def _attributes(meta: dict) -> dict:
    return meta["attributes"]["llsmflow"] if "attributes" in meta else meta["llsmflow"]


def _rewrite_manifest_line(path: Path, name: str) -> None:
    """Record the present sha256 of ``name`` in the archive's manifest (a consistent forgery)."""
    import hashlib

    digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
    manifest = path / "checksums.sha256"
    lines = manifest.read_text().splitlines()
    manifest.write_text(
        "".join((f"{digest}  {name}" if line.endswith(f"  {name}") else line) + "\n" for line in lines)
    )


def test_table_replaced_with_a_forged_manifest_line_is_caught_by_the_attributes(archive, tmp_path):
    path, _ = archive
    table = path / "tables" / "tracks.parquet"
    pd.DataFrame({"x": [9.0, 9.0], "particle": [0, 1]}).to_parquet(table)
    _rewrite_manifest_line(path, "tables/tracks.parquet")
    result = _verify(path)
    assert result.returncode == 1, result.stdout
    assert "table checksum in the attributes disagrees: tables/tracks.parquet" in result.stdout
    assert "the manifest" in result.stdout


def test_attributes_recording_another_table_checksum_are_reported(archive):
    path, _ = archive
    meta_file = _root_metadata(path)
    meta = json.loads(meta_file.read_text())
    _attributes(meta)["tables"]["tracks"]["sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    _rewrite_manifest_line(path, meta_file.name)
    result = _verify(path)
    assert result.returncode == 1, result.stdout
    assert "table checksum in the attributes disagrees: tables/tracks.parquet" in result.stdout


def test_documented_commands_are_in_the_docs():
    docs = (REPO / "docs" / "provenance.md").read_text(encoding="utf-8")
    for command in (RESULTS_CHECK, RAW_CHECK):
        documented = command.replace("MANIFEST", "provenance/checksums.sha256")
        assert documented in docs, documented


def _sh(command: str, cwd: Path, manifest: str, raw_dir: Path) -> subprocess.CompletedProcess:
    text = command.replace("MANIFEST", manifest).replace("RAW_DIR", f"'{raw_dir}'")
    return subprocess.run(["bash", "-c", "set -o pipefail; " + text], cwd=cwd, capture_output=True, text=True)


@needs_sha256sum
def test_archive_manifest_checks_with_sha256sum(archive):
    path, raw = archive
    for command in (RESULTS_CHECK, RAW_CHECK):
        ok = _sh(command, path, "checksums.sha256", raw)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "stack 0.tif: OK" in _sh(RAW_CHECK, path, "checksums.sha256", raw).stdout
    (raw / "stack 0.tif").write_bytes(b"changed")
    bad = _sh(RAW_CHECK, path, "checksums.sha256", raw)
    assert bad.returncode != 0 and "stack 0.tif: FAILED" in bad.stdout


@pytest.mark.e2e
@needs_sha256sum
def test_provenance_manifest_checks_with_sha256sum(tiny_run, tmp_path):
    results = tiny_run.run_dir / "results" / "tiny"
    raw = tiny_run.acquisition / "raw"
    manifest = "provenance/checksums.sha256"
    checked = {}
    for command in (RESULTS_CHECK, RAW_CHECK):
        ok = _sh(command, results, manifest, raw)
        assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
        checked[command] = ok.stdout
    # every line of the manifest was checked by one of the two commands, the snapshot's files too
    lines = (results / manifest).read_text().splitlines()
    assert sum(len(out.splitlines()) for out in checked.values()) == len(lines)
    assert "provenance/workflow/workflow/rules/common.smk: OK" in checked[RESULTS_CHECK]
    assert "acquisition.json: OK" in checked[RAW_CHECK]
    # a changed file is caught (on copies: the shared run stays as it is)
    copy, raw_copy = tmp_path / "results", tmp_path / "raw"
    shutil.copytree(results, copy)
    shutil.copytree(raw, raw_copy)
    target = copy / "tracks" / "ch0.csv"
    target.write_text(target.read_text() + "\n")
    victim = sorted(raw_copy.glob("Scan_*.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
    bad = _sh(RESULTS_CHECK, copy, manifest, raw_copy)
    assert bad.returncode != 0 and "tracks/ch0.csv: FAILED" in bad.stdout
    bad = _sh(RAW_CHECK, copy, manifest, raw_copy)
    assert bad.returncode != 0 and f"{victim.name}: FAILED" in bad.stdout
