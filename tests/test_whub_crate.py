"""`llsmflow export workflowhub`: the run crate of a real run, zipped, validated offline by rocrate-validator
for Workflow RO-Crate 1.0 and Provenance Run Crate 0.5 at the RECOMMENDED level, from a fresh cache."""

import json
import subprocess
import zipfile

from tests.conftest import LLSMFLOW
from tests.rocrate_offline import validate

ORCID = "0000-0002-1825-0097"
# RECOMMENDED checks this crate cannot pass (docs/provenance.md says why): the main workflow (a file inside the
# crate) and the Snakemake rules have no absolute http id; a text-valued resource usage (the deconvolution
# backend, GPU model) has no unit; the main workflow and llsmflow itself have no public url
KNOWN = {"process-run-crate-0.5_5.1", "provenance-run-crate-0.5_20.1"}
NO_URL = "process-run-crate-0.5_3.2"


def _expected(issue) -> bool:
    check, entity = issue["check"]["identifier"], str(issue.get("violatingEntity"))
    if check == NO_URL:
        return entity == "./workflow/Snakefile" or entity.startswith("./#software-llsmflow-")
    return check in KNOWN


def _cli(*args):
    return subprocess.run([str(LLSMFLOW), *args], capture_output=True, text=True, timeout=300)


def test_workflowhub_zip_validates_offline_at_recommended_level(tiny_run, tmp_path):
    results = tiny_run.run_dir / "results" / "tiny"
    out = tmp_path / "tiny.crate.zip"
    done = _cli(
        "export", "workflowhub", str(results), "-o", str(out),
        "--author", "Ada Lovelace", "--orcid", ORCID, "--affiliation", "Analytical Engine Lab",
        "--affiliation-url", "https://example.org/lab",
    )
    assert done.returncode == 0, done.stderr
    crate = tmp_path / "crate"
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        archive.extractall(crate)
    assert "ro-crate-metadata.json" in names and "README.md" in names and "workflow/Snakefile" in names
    assert not any(n.endswith((".zarr", ".parquet", ".tif")) for n in names)  # the workflow, not the data
    text = (crate / "ro-crate-metadata.json").read_text()
    assert str(tiny_run.run_dir) not in text and "file://" not in text  # never the machine's paths
    graph = {e["@id"]: e for e in json.loads(text)["@graph"]}
    assert graph["ro-crate-metadata.json"]["conformsTo"] == [
        {"@id": "https://w3id.org/ro/crate/1.1"},
        {"@id": "https://w3id.org/workflowhub/workflow-ro-crate/1.0"},
    ]
    workflow = graph[graph["./"]["mainEntity"]["@id"]]
    assert workflow["programmingLanguage"] == {"@id": "https://w3id.org/workflowhub/workflow-ro-crate#snakemake"}
    assert graph["./"]["author"] == {"@id": f"https://orcid.org/{ORCID}"}
    assert graph[graph["./"]["publisher"]["@id"]]["@type"] == "Organization"
    assert graph["./"]["license"]["@id"] in graph and graph["./"]["keywords"]
    assert graph["README.md"]["about"] == {"@id": "./"}
    # inputs recorded relative to raw_dir, with their sha256
    raw = [e for i, e in graph.items() if i.startswith("#raw/")]
    assert raw and all(len(e["sha256"]) == 64 for e in raw)
    # a fresh validator cache, seeded by the documented command (no network here)
    cache = tmp_path / "cache"
    assert _cli("export", "validator-cache", str(cache)).returncode == 0
    required = validate(crate, cache)  # the documented command (a REQUIRED issue also fails the loop below)
    assert required.returncode == 0, required.stdout[-4000:]
    for profile in ("workflow-ro-crate-1.0", "provenance-run-crate-0.5"):
        report = tmp_path / f"{profile}.json"
        validate(crate, cache, "-l", "recommended", "-f", "json", "-o", str(report), profile=profile)
        issues = json.loads(report.read_text())["issues"]
        unexpected = {(i["check"]["identifier"], str(i.get("violatingEntity"))) for i in issues if not _expected(i)}
        assert not unexpected, sorted(unexpected)


def test_workflowhub_export_refuses_a_directory_without_crate(tmp_path):
    done = _cli("export", "workflowhub", str(tmp_path), "-o", str(tmp_path / "x.crate.zip"))
    assert done.returncode == 2 and "ro-crate-metadata.json" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "x.crate.zip").exists()


def test_parameter_paths_and_units_are_portable():
    """Absolute paths in parameter values become the crate's relative names; numbers get the unit in their name."""
    from pathlib import Path

    from llsmflow.provenance.crate_meta import local_id, portable
    from llsmflow.provenance.crate_steps import unit_code

    raw, run = Path("/data/raw"), Path("/runs/x")
    value = ["/data/raw/a/b.tif", "/runs/x/results/t.csv", {"psf": "/elsewhere/psf.tif"}, 3, "rel/p"]
    assert portable(value, raw, run) == ["raw/a/b.tif", "results/t.csv", {"psf": "external/psf.tif"}, 3, "rel/p"]
    assert portable("/data/raw", raw, run) == "raw"
    assert local_id(Path("/runs/x/results/x/a.zarr"), raw, run, True) == "#results/x/a.zarr/"
    assert local_id(Path("/data/raw/s.tif"), raw, run, False) == "#raw/s.tif"
    qudt = "http://qudt.org/vocab/unit/"
    assert unit_code("wall_time_s", 1.5, "s") == qudt + "SEC"
    assert unit_code("offset_um2", 0.1, None) == qudt + "MicroM2"
    assert unit_code("shape_raw", [4, 32, 32], None) == qudt + "NUM"
    assert unit_code("min_quality", 0.5, None) == qudt + "UNITLESS"
    assert unit_code("diffusion_um2_s", 0.1, None) is None and unit_code("backend", "cpu", None) is None
