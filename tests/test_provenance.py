"""Provenance: secrets never recorded, container/GPU facts, and the Provenance Run Crate validated for real."""

import json
import shutil
from pathlib import Path

import pytest

from llsmflow import provenance
from llsmflow.provenance import StepRecorder, container_info, run_record, scrub
from llsmflow.provenance.crate import METADATA, write_crate
from tests.rocrate_offline import seed_validator_cache, validate

REPO = Path(__file__).resolve().parents[1]
TOKEN = "fake-token-value-7f3a9"
PASSWORD = "hunter2-pw-91c"
DIGEST = "sha256:" + "ab" * 32


def test_scrub_removes_url_credentials_and_secret_keys():
    value = {
        "url": f"https://alice:{PASSWORD}@example.org/data?x=1",
        "list": ["s3://AKIA:{PASSWORD}@bucket/key", "plain text"],
        "api_token": TOKEN,
        "nested": {"db_password": PASSWORD, "iterations": 10},
        "directives": [f"--export=ALL,LAB_API_TOKEN={TOKEN}", "--mem=4G", f"https://h.org/x?a=1&token={TOKEN}"],
    }
    clean = scrub(value)
    assert clean["directives"] == [
        "--export=ALL,LAB_API_TOKEN=[redacted]",
        "--mem=4G",
        "https://h.org/x?a=1&token=[redacted]",
    ]
    assert clean["url"] == "https://example.org/data?x=1"
    assert clean["list"] == ["s3://bucket/key", "plain text"]
    assert clean["api_token"] == clean["nested"]["db_password"] == provenance.REDACTED
    assert clean["nested"]["iterations"] == 10
    assert TOKEN not in json.dumps(clean) and PASSWORD not in json.dumps(clean)


def test_allowed_environment_takes_only_the_allow_list():
    environ = {
        "SLURM_JOB_ID": "42",
        "LLSMFLOW_TEST_TOKEN": TOKEN,
        "HOME": "/home/alice",
        "AWS_SECRET_KEY": "x",
    }
    assert provenance.allowed_environment(environ) == {"SLURM_JOB_ID": "42"}


def test_container_info_reads_image_reference_and_digest():
    environ = {
        "APPTAINER_CONTAINER": "/images/llsmflow-cpu.sif",
        "LLSMFLOW_CONTAINER_IMAGE": f"oras://ghcr.io/lab/llsmflow-cpu@{DIGEST}",
    }
    assert container_info(environ) == {
        "image": "/images/llsmflow-cpu.sif",
        "reference": f"oras://ghcr.io/lab/llsmflow-cpu@{DIGEST}",
        "digest": DIGEST,
    }
    assert container_info({}) == {}


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no NVIDIA GPU (nvidia-smi) on this machine")
def test_gpu_info_names_the_gpu():
    info = provenance.gpu_info()
    assert info["model"] and info["driver"]


@pytest.fixture(scope="module")
def validator_cache(tmp_path_factory):
    return seed_validator_cache(tmp_path_factory.mktemp("validator-cache"))


@pytest.fixture()
def small_run(tmp_path, monkeypatch):
    """A two-step run (real step records, real files) with secrets planted in the environment and parameters."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLSMFLOW_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("LLSMFLOW_CONTAINER_IMAGE", f"docker://bob:{PASSWORD}@ghcr.io/lab/llsmflow@{DIGEST}")
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/llsmflow.sif")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "stack.tif").write_bytes(b"raw bytes")
    results = Path("results/x")
    (results / "provenance").mkdir(parents=True)
    (results / "archive.zarr").mkdir()
    (results / "archive.zarr" / "zarr.json").write_text("{}")
    (results / "tracks.csv").write_text("particle,frame\n0,0\n")
    params = {
        "iterations": 10,
        "source": f"https://carol:{PASSWORD}@example.org/psf.tif",
        "secret_key": TOKEN,
    }
    with StepRecorder(
        "work/steps/deconvolve.json",
        "deconvolve",
        params=params,
        wildcards={"sample": "s1"},
        inputs=[str(raw / "stack.tif")],
        outputs=["work/deconvolved.tif"],
    ) as step:
        step.note(backend="cpu", iterations=10)
    with StepRecorder(
        "work/steps/track.json",
        "track",
        inputs=["work/deconvolved.tif"],
        outputs=[str(results / "tracks.csv")],
    ):
        pass
    config = {"dataset": "x", "raw_dir": str(raw), "deconvolution": {"iterations": 10, "api_token": TOKEN}}
    outputs = [str(results / "archive.zarr"), str(results / "tracks.csv")]
    record = run_record(
        config,
        REPO,
        sorted(Path("work/steps").glob("*.json")),
        [str(raw / "stack.tif")],
        outputs,
        run_dir=tmp_path,
    )
    crate_dir = results / "provenance"
    (crate_dir / "run-record.json").write_text(json.dumps(record))
    write_crate(crate_dir, record, REPO, tmp_path, outputs)
    return tmp_path, crate_dir, record


def test_crate_validates_as_provenance_run_crate(small_run, validator_cache):
    _, crate_dir, _ = small_run
    result = validate(crate_dir, validator_cache)
    assert result.returncode == 0, result.stdout[-6000:]


def test_crate_records_no_secret(small_run):
    run_dir, _, _ = small_run
    for path in run_dir.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert TOKEN.encode() not in text, path
            assert PASSWORD.encode() not in text, path


def _graph(crate_dir):
    return {e["@id"]: e for e in json.loads((crate_dir / METADATA).read_text())["@graph"]}


def _ids(value):
    return [v["@id"] for v in (value if isinstance(value, list) else [value])]


def test_crate_describes_steps_software_and_data(small_run):
    run_dir, crate_dir, record = small_run
    graph = _graph(crate_dir)
    workflow = graph[graph["./"]["mainEntity"]["@id"]]
    assert "ComputationalWorkflow" in workflow["@type"] and (crate_dir / workflow["@id"]).is_file()
    assert workflow["version"] == record["workflow"]["version"]
    # one execution per step, linked to its tool and its HowToStep through a ControlAction
    execution = graph["#exec-deconvolve-s1"]
    assert execution["@type"] == "CreateAction" and execution["instrument"]["@id"] == "#tool-deconvolve"
    control = next(
        e
        for e in graph.values()
        if e["@type"] == "ControlAction" and e["object"] == {"@id": execution["@id"]}
    )
    assert graph[control["instrument"]["@id"]]["workExample"]["@id"] == "#tool-deconvolve"
    organize = next(e for e in graph.values() if e["@type"] == "OrganizeAction")
    assert control["@id"] in _ids(organize["object"])
    step = next(s for s in record["steps"] if s["step"] == "deconvolve")
    assert execution["startTime"] == step["start"] and execution["endTime"] == step["end"]
    usage = {graph[i]["propertyID"]: graph[i]["value"] for i in _ids(execution["resourceUsage"])}
    assert usage["backend"] == "cpu" and usage["peak_memory_mb"] == step["peak_memory_mb"]
    objects = [graph[i] for i in _ids(execution["object"])]
    params = {e["name"]: e["value"] for e in objects if e["@type"] == "PropertyValue"}
    assert params["iterations"] == 10 and params["sample"] == "s1"
    # inputs and outputs: local ids relative to raw_dir / the run directory, with the size and sha256 of the file
    raw = (run_dir / "raw" / "stack.tif").resolve()
    entity = graph["#raw/stack.tif"]
    assert entity["sha256"] == provenance.sha256_file(raw) and entity["contentSize"] == str(
        raw.stat().st_size
    )
    assert str(run_dir) not in (crate_dir / METADATA).read_text()  # never the machine's paths
    tracks = graph["#results/x/tracks.csv"]
    assert tracks["sha256"] == provenance.sha256_file(run_dir / "results/x/tracks.csv")
    # software and container
    packages = {graph[i]["name"]: graph[i]["version"] for i in _ids(workflow["softwareRequirements"])}
    assert packages["numpy"] == record["software"]["packages"]["numpy"]
    container = graph[execution["containerImage"]["@id"]]
    assert container["sha256"] == DIGEST.removeprefix("sha256:")
    assert container["name"] == f"docker://ghcr.io/lab/llsmflow@{DIGEST}"


def test_png_comparison_tolerates_flipped_edge_pixels_but_not_changed_content():
    """A handful of anti-aliased edge pixels flipped by round-off is within tolerance; a changed region is not."""
    import numpy as np

    from llsmflow.provenance.reproduce import compare_png

    original = np.random.default_rng(0).integers(0, 256, size=(400, 600, 3), dtype=np.uint8)
    # (byte-identical files are recognised before any decoding; equal pixels measure 0 here)
    assert "max 0 levels" in compare_png(original, original.copy(), "a.png").detail

    edges = original.copy()
    edges[10, 10:12] ^= 0xFF  # 2 of 240 000 pixels flipped completely (0.0008 %)
    edges[200:210, 300] = np.minimum(edges[200:210, 300].astype(int) + 2, 255).astype(np.uint8)
    assert compare_png(original, edges, "a.png").status == "within tolerance"

    changed = original.copy()
    changed[100:120, 100:140] = 0  # a label or a tile outline really moved: 800 pixels (0.33 %)
    verdict = compare_png(original, changed, "a.png")
    assert verdict.status == "different" and "% by more than 2" in verdict.detail


def test_json_comparison_skips_environment_versions_but_not_results():
    """Package versions in an archive's metadata describe the environment (reproduce warns about them
    separately); a changed value anywhere else is a difference."""
    from llsmflow.provenance.reproduce import json_differences

    original = {"attributes": {"llsmflow": {"software": {"numpy": "2.1"}, "voxel_size_um": [0.2, 0.1, 0.1]}}}
    software = {"numpy": "2.2", "pyyaml": "6"}
    newer_env = {"attributes": {"llsmflow": {"software": software, "voxel_size_um": [0.2, 0.1, 0.1]}}}
    assert json_differences(original, newer_env) == []
    changed = {"attributes": {"llsmflow": {"software": {"numpy": "2.1"}, "voxel_size_um": [0.2, 0.1, 0.2]}}}
    assert json_differences(original, changed) == ["/attributes/llsmflow/voxel_size_um[2]: 0.2 vs 0.1"]
    extra = {"attributes": {"llsmflow": {**original["attributes"]["llsmflow"], "tracks": 3}}}
    assert json_differences(original, extra) == ["/attributes/llsmflow: keys ['tracks']"]


def test_recorded_packages_follow_the_declared_requirements():
    """One list: llsmflow, every requirement of pyproject.toml with its extras (not the test tools), GPU ones."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]] + [
        entry
        for extra, entries in project["optional-dependencies"].items()
        if extra != "test"
        for entry in entries
    ]
    names = provenance.recorded_packages()
    assert names[0] == "llsmflow" and {"cupy-cuda12x", "pycudadecon"} <= set(names)
    for requirement in declared:
        assert requirement.split(">")[0].split("<")[0].split("[")[0].split("=")[0].strip() in names
    assert "pytest" not in names and "ruff" not in names
    assert list(provenance.package_versions())[0] == "llsmflow"


def test_provenance_front_door_is_light():
    """Every workflow job imports StepRecorder through llsmflow.provenance: no Zarr, dask, RO-Crate or archive."""
    import subprocess
    import sys

    code = (
        "import sys; from llsmflow.provenance import StepRecorder, scrub; "
        "print(sorted(m for m in ('zarr', 'dask', 'rocrate', 'llsmflow.archive', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
