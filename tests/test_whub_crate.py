"""`llsmflow export workflowhub`: the run crate of a real run, zipped, validated offline by rocrate-validator
for Workflow RO-Crate 1.0 and Provenance Run Crate 0.5 at the RECOMMENDED level, from a fresh cache."""

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import LLSMFLOW
from tests.rocrate_offline import seed_validator_cache, validate

ORCID = "0000-0002-1825-0097"
# The one RECOMMENDED check a crate read from disk cannot pass (docs/fair.md): process-run-crate-0.5_5.1 wants
# the @id of every SoftwareApplication, SoftwareSourceCode and ComputationalWorkflow to be an absolute http URI.
# The main workflow must be a file in the crate (Workflow RO-Crate, REQUIRED), so its id is relative; the rule
# tools and llsmflow itself have no public page (local ids). The profile's text allows both ("MAY be a relative
# URI to a data entity in the crate or a local identifier for tools that are not otherwise described on the
# web"); the validator's shape does not. Every other RECOMMENDED check passes.
ABSOLUTE_ID = "process-run-crate-0.5_5.1"


def _unexpected(issues: list[dict], graph: dict) -> set:
    """The issues other than 5.1 on the main workflow, the rule tools and llsmflow."""
    local = {"workflow/Snakefile"} | {i for i in graph if i.startswith(("#tool-", "#software-llsmflow-"))}
    found = set()
    for issue in issues:
        check, value = issue["check"]["identifier"], str(issue.get("violatingPropertyValue"))
        if check == ABSOLUTE_ID and any(value.endswith("/" + i) for i in local):
            continue
        found.add((check, str(issue.get("violatingEntity")), issue.get("message")))
    return found


def validate_recommended(crate, cache, tmp_path, graph) -> None:
    """Both profiles at the RECOMMENDED level, offline: nothing but the 5.1 ids above."""
    for profile in ("workflow-ro-crate-1.0", "provenance-run-crate-0.5"):
        report = tmp_path / f"{crate.name}-{profile}.json"
        validate(crate, cache, "-l", "recommended", "-f", "json", "-o", str(report), profile=profile)
        issues = json.loads(report.read_text())["issues"]
        assert not _unexpected(issues, graph), sorted(_unexpected(issues, graph))
        if profile == "provenance-run-crate-0.5":  # and 5.1 is there, for exactly those ids (still checked)
            assert {i["check"]["identifier"] for i in issues} == {ABSOLUTE_ID}


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
    validate_recommended(crate, cache, tmp_path, graph)
    # resource usage has a unit on every value (names: QUDT UNITLESS); what a job reported about its data is
    # a result of the job, described by an output FormalParameter of its rule
    usage = [e for i, e in graph.items() if "-usage-" in i]
    assert usage and all(e.get("unitCode", "").startswith("http://qudt.org/vocab/unit/") for e in usage)
    deconvolve = next(
        e for i, e in graph.items() if i.startswith("#exec-deskew_deconvolve-") and e["@type"] == "CreateAction"
    )
    used = {graph[r["@id"]]["propertyID"]: graph[r["@id"]] for r in deconvolve["resourceUsage"]}
    assert used["backend"]["value"] == "cpu" and used["seconds_deconvolution"]["unitCode"].endswith("/SEC")
    reported = {graph[r["@id"]].get("propertyID"): graph[r["@id"]] for r in deconvolve["result"]}
    assert reported["method"]["value"] == "rl" and reported["iterations"]["value"] == 3
    assert graph[reported["method"]["exampleOfWork"]["@id"]]["@id"] in {
        o["@id"] for o in graph["#tool-deskew_deconvolve"]["output"]
    }


def _rebuilt_crate(tiny_run, crate_dir: Path, rembi: Path) -> dict:
    """The shared run's crate built again (what the workflow's provenance step does) with ``rembi`` configured;
    returns its graph by @id."""
    from llsmflow.provenance.crate import CRATE_FILES, write_crate

    provenance = tiny_run.run_dir / "results" / "tiny" / "provenance"
    crate_dir.mkdir()
    for name in CRATE_FILES:
        if (provenance / name).is_file():
            shutil.copyfile(provenance / name, crate_dir / name)
    record = json.loads((provenance / "run-record.json").read_text())
    record["config"]["rembi"] = str(rembi)
    ran = json.loads((provenance / "ro-crate-metadata.json").read_text())["@graph"]
    outputs = [e["name"] for e in ran if e["@id"].startswith("#workflow-output-")]
    write_crate(crate_dir, record, tiny_run.repo, tiny_run.run_dir, outputs)
    return {e["@id"]: e for e in json.loads((crate_dir / "ro-crate-metadata.json").read_text())["@graph"]}


def test_run_crate_carries_the_rembi_study_and_validates_offline(tiny_run, tmp_path):
    """REMBI (validated by rembi-mifa) as schema.org/Bioschemas entities linked from the root's ``about``;
    both profiles at RECOMMENDED with it; an unfilled REMBI leaves the crate without a study."""
    pytest.importorskip("rembi_mifa")
    import yaml

    from llsmflow.fair.rembi import write_rembi_template
    from llsmflow.ingest import read_acquisition
    from tests.rembi_filled import fill_in

    template = write_rembi_template(read_acquisition(tiny_run.acquisition / "raw"), tmp_path / "t.yaml", "tiny")
    rembi = fill_in(template, tmp_path / "rembi.yaml")
    data = yaml.safe_load(rembi.read_text())
    # REMBI's affiliation with a web address ({name, url}): the crate's publisher gets it (RO-Crate: SHOULD)
    data["study"]["authors"][0]["affiliation"] = {"name": "Example Institute", "url": "https://example.org/inst"}
    rembi.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    crate = tmp_path / "provenance"
    graph = _rebuilt_crate(tiny_run, crate, rembi)

    study = graph[graph["./"]["about"]["@id"]]
    assert study["@type"] == "Dataset" and study["name"] == data["study"]["title"]
    assert study["description"] == data["study"]["description"]
    assert study["keywords"] == ["lattice light-sheet", "particle tracking", "synthetic"]
    assert study["license"] == {"@id": "https://spdx.org/licenses/CC0-1.0"}
    assert study["author"] == {"@id": f"https://orcid.org/{ORCID}"} == graph["./"]["author"]
    assert graph[graph["./"]["publisher"]["@id"]]["url"] == "https://example.org/inst"
    sample = graph[study["about"]["@id"]]
    assert sample["@type"] == "BioSample" and sample["name"] == "HeLa cells"
    taxon = graph[sample["taxonomicRange"]["@id"]]
    assert taxon == {"@id": "http://purl.obolibrary.org/obo/NCBITaxon_9606", "@type": "Taxon", "name": "Homo sapiens"}
    assert graph[study["measurementTechnique"]["@id"]]["termCode"] == "FBbi_00000369"
    mentioned = {graph[m["@id"]]["name"]: graph[m["@id"]] for m in study["mentions"]}
    assert mentioned["specimen preparation 1"]["description"] == data["specimen"][0]["sample_preparation"]
    assert mentioned["image analysis"]["mentions"] == {"@id": "workflow/Snakefile"}
    # the acquisition's settings, with units, equal to the run's acquisition record (ground truth: synth)
    acquisition = json.loads((crate / "run-record.json").read_text())["acquisition"]
    protocol = mentioned["image acquisition 1"]
    settings = {graph[p["@id"]]["propertyID"]: graph[p["@id"]] for p in protocol["additionalProperty"]}
    assert settings["dz_um"]["value"] == acquisition["dz_um"] and settings["dz_um"]["unitCode"].endswith("/MicroM")
    assert settings["time_interval_s"]["value"] == acquisition["time_interval_s"]
    assert settings["angle_deg"]["unitCode"].endswith("/DEG")
    assert settings["imaging_instrument"]["value"] == data["image_acquisition"][0]["imaging_instrument"]
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    assert metadata["@context"][1]["BioSample"] == "https://bioschemas.org/BioSample"

    cache = seed_validator_cache(tmp_path / "cache")
    validate_recommended(crate, cache, tmp_path, graph)

    # other authors given at export replace the crate's; the study keeps its own, with their affiliation
    from llsmflow.fair.workflowhub import export_workflowhub

    (tmp_path / "results").mkdir()
    shutil.copytree(crate, tmp_path / "results" / "provenance")
    zipped = export_workflowhub(tmp_path / "results", tmp_path / "x.crate.zip", [{"name": "Grace Hopper"}])
    with zipfile.ZipFile(zipped["output"]) as archive:
        exported = {e["@id"]: e for e in json.loads(archive.read("ro-crate-metadata.json"))["@graph"]}
    assert exported["./"]["author"] == {"@id": "#author-1"} and exported["#author-1"]["name"] == "Grace Hopper"
    ada = exported[exported["#rembi-study"]["author"]["@id"]]
    assert ada["name"] == "Ada Lovelace" and exported[ada["affiliation"]["@id"]]["name"] == "Example Institute"

    unfilled = _rebuilt_crate(tiny_run, tmp_path / "unfilled", template)
    assert "#rembi-study" not in unfilled and "about" not in unfilled["./"]


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
