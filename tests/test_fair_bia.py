"""``llsmflow export bia`` on a real workflow run (the session's ``tiny_run``, read only).

Checked against ground truth: the checksums the run itself recorded, the files' bytes, the results directory
before and after. The submission's metadata is checked by the BioImage Archive's own validator
(``bia-ro-crate-validator``, Python ≥ 3.13) when ``LLSMFLOW_BIA_VALIDATOR_PYTHON`` names an interpreter that
has it (docs/fair.md), and always by the schema below, written from that validator's models
(``bia_ro_crate.models.ro_crate_models`` 0.3.1: the required fields of each entity, the file list's required
``bia:filePath`` and ``schema:isPartOf`` columns, references that resolve).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest

from llsmflow.cli import main
from tests.rembi_filled import fill_in

pytest.importorskip("rembi_mifa")

BIA = "http://bia/"
ENTITY_SCHEMA = {  # required fields per BIA type, from bia-ro-crate-validator 0.3.1's pydantic models
    "bia:Study": {
        "required": ["name", "author", "description", "license", "datePublished", "hasPart", "accessionId"],
        "properties": {"author": {"minItems": 1}, "license": {"format": "uri"}},
    },
    "bia:Contributor": {"required": ["name"]},
    "bia:Affiliation": {"required": ["name"]},
    "bia:Dataset": {"required": ["name"]},
    "bia:BioSample": {"required": ["description"]},
    "bia:Specimen": {
        "required": ["biologicalEntity", "imagingPreparationProtocol"],
        "properties": {"biologicalEntity": {"minItems": 1}, "imagingPreparationProtocol": {"minItems": 1}},
    },
    "bia:SpecimenImagingPreparationProtocol": {"required": ["name", "description"]},
    "bia:ImageAcquisitionProtocol": {"required": ["name", "description", "imagingInstrumentDescription"]},
    "bia:ImageAnalysisMethod": {"required": ["name", "description"]},
    "bia:Protocol": {"required": ["name", "description"]},
    "bia:FileList": {"required": ["tableSchema"]},
    "csvw:Schema": {"required": ["column"], "properties": {"column": {"minItems": 1}}},
    "csvw:Column": {"required": ["columnName"]},
}


def _types(entity) -> list[str]:
    t = entity["@type"]
    return t if isinstance(t, list) else [t]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): (sha256(p), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def rembi(tiny_acquisition, tmp_path_factory) -> Path:
    from llsmflow.fair.rembi import write_rembi_template
    from llsmflow.ingest import read_acquisition

    tmp = tmp_path_factory.mktemp("bia-rembi")
    template = write_rembi_template(read_acquisition(tiny_acquisition / "raw"), tmp / "rembi.yaml", "tiny")
    return fill_in(template, tmp / "rembi-filled.yaml")


@pytest.fixture(scope="module")
def export(tiny_run, rembi, tmp_path_factory):
    """One export of the run's results (hard links), through the command line; the results' state before."""
    results = tiny_run.run_dir / "results" / "tiny"
    before = snapshot(results)
    out = tmp_path_factory.mktemp("bia") / "submission"
    assert main(["export", "bia", str(results), "-o", str(out), "--rembi", str(rembi)]) == 0
    return results, out, before


def read_filelist(out: Path) -> list[dict]:
    with open(out / "filelist.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_results_are_untouched_and_files_are_hard_links(export):
    results, out, before = export
    assert snapshot(results) == before
    chunk = next(p for p in (results / "tiny.ome.zarr").rglob("*") if p.is_file() and "/c/" in p.as_posix())
    copy = out / chunk.relative_to(results)
    assert copy.stat().st_ino == chunk.stat().st_ino and copy.read_bytes() == chunk.read_bytes()
    assert not list(out.parent.glob(".*partial"))


def test_file_list_rows_and_checksums_match_the_files_and_the_runs_record(export):
    results, out, _ = export
    rows = read_filelist(out)
    header = (out / "filelist.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header[0] == "Files"  # what BioStudies file lists require
    manifest = dict(reversed(line.split("  ", 1)) for line in (out / "files.sha256").read_text().splitlines())
    deposited = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(manifest) == deposited - {
        "filelist.tsv",
        "files.sha256",
        "rembi.json",
        "ro-crate-metadata.json",
    }
    for rel, digest in manifest.items():
        assert sha256(out / rel) == digest
    # the run's own record: the archive's manifest (zarr files) and provenance/checksums.sha256
    recorded = dict(
        reversed(line.split("  ", 1))
        for line in (results / "tiny.ome.zarr" / "checksums.sha256").read_text().splitlines()
    )
    zarr_rows = {k: v for k, v in recorded.items() if not k.startswith("raw/")}
    assert zarr_rows and all(manifest[f"tiny.ome.zarr/{k}"] == v for k, v in zarr_rows.items())
    by_path = {row["Files"]: row for row in rows}
    expected_items = {
        "tiny.ome.zarr",
        "qc/report.html",
        *(f"tracks/{p.name}" for p in (results / "tracks").glob("*.csv")),
    }
    assert expected_items <= set(by_path)
    for path, row in by_path.items():
        if path == "tiny.ome.zarr":
            lines = "".join(
                f"{manifest[r]}  {r}\n" for r in sorted(manifest) if r.startswith("tiny.ome.zarr/")
            )
            assert row["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
            assert int(row["size_bytes"]) == sum(
                (out / r).stat().st_size for r in manifest if r.startswith("tiny.ome.zarr/")
            )
            assert (row["type"], row["format"]) == ("image", "OME-Zarr 0.5")
            assert row["image_acquisition"] == "#image-acquisition-0"
        else:
            assert (
                row["sha256"] == sha256(results / path)
                and int(row["size_bytes"]) == (results / path).stat().st_size
            )
    # the BIA's file-list rules: forward slashes, no ./ or ../, no blank lines, one row per path
    assert all("\\" not in p and not p.startswith(("./", "../", "/")) and p for p in by_path)
    assert len(by_path) == len(rows)


def test_crate_satisfies_the_bia_models(export):
    _, out, _ = export
    crate = json.loads((out / "ro-crate-metadata.json").read_text(encoding="utf-8"))
    entities = {e["@id"]: e for e in crate["@graph"]}
    assert entities["ro-crate-metadata.json"]["about"] == {"@id": "./"}
    assert "bia:Study" in _types(entities["./"])
    for entity in crate["@graph"]:
        for t in _types(entity):
            if t in ENTITY_SCHEMA:
                jsonschema.validate(
                    entity, {"type": "object", **ENTITY_SCHEMA[t]}, format_checker=jsonschema.FormatChecker()
                )
    terms = crate["@context"][1]
    for entity in crate["@graph"]:  # every property has a context term, every reference resolves
        for key, value in entity.items():
            if key.startswith("@") or key in ("conformsTo", "about"):
                continue
            assert key in terms, key
            refs = value if isinstance(value, list) else [value]
            for ref in refs:
                if isinstance(ref, dict):
                    assert ref["@id"] in entities, (entity["@id"], key, ref)
    columns = [entities[c["@id"]] for c in entities["#filelist-schema"]["column"]]
    properties = {c.get("propertyUrl") for c in columns}
    assert {BIA + "filePath", "http://schema.org/isPartOf"} <= properties
    assert [c["columnName"] for c in columns] == list(read_filelist(out)[0])
    for row in read_filelist(out):  # file-list references name entities of the right type
        for column in columns:
            value = row[column["columnName"]]
            if value and column.get("propertyUrl") in (
                BIA + "associatedBiologicalEntity",
                "http://schema.org/isPartOf",
            ):
                assert _types(entities[value]) in (["bia:BioSample"], ["bia:Dataset"])
    rembi = json.loads((out / "rembi.json").read_text(encoding="utf-8"))
    assert entities["./"]["name"] == rembi["study"]["title"]


def test_bia_validator_accepts_the_submission(export, tmp_path):
    """The BioImage Archive's own validator (bia-ro-crate-validator), offline, when an interpreter has it."""
    python = os.environ.get("LLSMFLOW_BIA_VALIDATOR_PYTHON")
    if not python:
        pytest.skip(
            "set LLSMFLOW_BIA_VALIDATOR_PYTHON to a Python ≥ 3.13 with bia-ro-crate-validator (docs/fair.md)"
        )
    from tests.rocrate_offline import RO_CRATE_1_1_BIOSCHEMAS

    document = json.loads((files("rocrate") / "data" / "ro-crate.jsonld").read_bytes())
    document["@context"].update(RO_CRATE_1_1_BIOSCHEMAS)
    context = tmp_path / "context.json"
    context.write_text(json.dumps(document), encoding="utf-8")
    driver = Path(__file__).with_name("fair_bia_offline.py")
    _, out, _ = export
    result = subprocess.run(
        [python, str(driver), str(out), str(context)], capture_output=True, text=True, timeout=300
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["highest_error_level"] is None, (
        result.stdout + result.stderr[-3000:]
    )
    # and it does reject: the same crate without an author
    bad = tmp_path / "bad"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("*.ome.zarr", "provenance"))
    crate = json.loads((bad / "ro-crate-metadata.json").read_text())
    next(e for e in crate["@graph"] if e["@id"] == "./").pop("author")
    (bad / "ro-crate-metadata.json").write_text(json.dumps(crate))
    result = subprocess.run(
        [python, str(driver), str(bad), str(context)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "Missing required field: author" in result.stdout


def test_copy_mode_and_a_changed_result_leave_nothing_behind(tiny_run, rembi, tmp_path, capsys):
    results = tmp_path / "results" / "tiny"
    shutil.copytree(tiny_run.run_dir / "results" / "tiny", results)
    out = tmp_path / "copied"
    assert main(["export", "bia", str(results), "-o", str(out), "--rembi", str(rembi), "--link", "copy"]) == 0
    report = results / "qc" / "report.html"
    assert (out / "qc" / "report.html").stat().st_ino != report.stat().st_ino
    assert main(["export", "bia", str(results), "-o", str(out), "--rembi", str(rembi)]) == 2
    assert (
        capsys.readouterr().err
        == f"llsmflow export: error: {out}: exists; expected a new folder for the submission\n"
    )
    chunk = sorted(
        p for p in (results / "tiny.ome.zarr").rglob("*") if p.is_file() and "/c/" in p.as_posix()
    )[0]
    chunk.write_bytes(chunk.read_bytes() + b"x")  # a result changed after the run recorded it
    again = tmp_path / "again"
    assert main(["export", "bia", str(results), "-o", str(again), "--rembi", str(rembi)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"llsmflow export: error: {chunk}: sha256 ") and "differs from the run's record" in err
    )
    assert err.count("\n") == 1
    assert not again.exists() and not list(tmp_path.glob(".again*"))  # nothing that looks complete


def test_missing_rembi_is_one_line(tiny_run, tmp_path, capsys):
    results = tiny_run.run_dir / "results" / "tiny"
    assert main(["export", "bia", str(results), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"llsmflow export: error: {results}: no REMBI file given; expected --rembi FILE or config key "
        "rembi (the YAML `llsmflow init` writes)\n"
    )
    assert not (tmp_path / "x").exists()


def test_raw_inputs_are_deposited_when_asked_and_match_the_run_record(tiny_run, rembi, tmp_path):
    results = tiny_run.run_dir / "results" / "tiny"
    raw = Path(tiny_run.config["raw_dir"])
    before = snapshot(raw)
    out = tmp_path / "with-raw"
    args = ["export", "bia", str(results), "-o", str(out), "--rembi", str(rembi), "--raw", "--link", "copy"]
    assert main(args) == 0
    rows = {row["Files"]: row for row in read_filelist(out) if row["type"] == "raw data"}
    assert set(rows) == {f"raw/{p.name}" for p in raw.iterdir() if p.is_file()}
    for path, row in rows.items():
        assert row["sha256"] == sha256(raw / path.removeprefix("raw/")) == sha256(out / path)
        assert row["image_acquisition"] == "#image-acquisition-0" and row["protocol"] == ""
    assert snapshot(raw) == before
