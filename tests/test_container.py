"""Apptainer images: the definitions parse (spython) and hold what the pipeline needs; the configured images are
pinned and reach the right rules; the container commands; and, where Apptainer exists, a real build and one
rule run in the CPU image."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from llsmflow.cli import main
from llsmflow.errors import LlsmflowError
from llsmflow.hpc import containers as container
from llsmflow.io import sha256_file

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
CONFIG = REPO / "config" / "config.yaml"
DIGEST = "0123456789abcdef" * 4
RUNTIME = shutil.which("apptainer") or shutil.which("singularity")
NEEDS_APPTAINER = pytest.mark.skipif(
    RUNTIME is None,
    reason="apptainer/singularity is not installed here (not in Debian 12 main, not on PyPI)",
)


def _recipe(flavour):
    return container.parse_definition(container.definition_path(flavour, REPO))


def _test_script(recipe):
    """spython turns %test into `echo ... >> /tests.sh` lines appended to the install lines."""
    return "\n".join(line for line in recipe.install if line.endswith(">> /tests.sh"))


def _post(recipe):
    return "\n".join(line for line in recipe.install if not line.endswith(">> /tests.sh"))


# ---------------------------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("flavour", container.FLAVOURS)
def test_definition_parses_and_identifies_itself(flavour):
    recipe = _recipe(flavour)
    labels = dict(line.split(" ", 1) for line in recipe.labels)
    assert labels["org.opencontainers.image.title"] == f"llsmflow-{flavour}"
    assert labels["llsmflow.flavour"] == flavour
    assert labels["org.opencontainers.image.licenses"] == "BSD-3-Clause"
    assert f"LLSMFLOW_CONTAINER_IMAGE=llsmflow-{flavour}" in recipe.environ
    assert f"LLSMFLOW_CONTAINER_FLAVOUR={flavour}" in recipe.environ
    # the version is only known after installation: written to the environment and labels in %post
    post = _post(recipe)
    assert "LLSMFLOW_CONTAINER_VERSION=${version}" in post and "APPTAINER_ENVIRONMENT" in post
    assert "llsmflow.version ${version}" in post and "APPTAINER_LABELS" in post
    assert recipe.cmd == 'exec llsmflow "$@"'


@pytest.mark.parametrize("flavour", container.FLAVOURS)
def test_definition_installs_this_checkout(flavour):
    recipe = _recipe(flavour)
    sources = {line.split()[0]: line.split()[1] for line in recipe.files}
    # %files paths are relative to the repository root, where `llsmflow container build` runs the build
    for source in sources:
        assert (REPO / source).exists(), source
    assert sources["src"] == "/opt/llsmflow/src/src"
    assert sources["pyproject.toml"] == "/opt/llsmflow/src/pyproject.toml"
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources  # setuptools needs the readme named in pyproject.toml
    assert 'pip install "/opt/llsmflow/src' in _post(recipe)


@pytest.mark.parametrize("flavour", container.FLAVOURS)
def test_definition_tests_what_the_pipeline_needs(flavour):
    script = _test_script(_recipe(flavour))
    assert "llsmflow --version" in script
    assert f'c.check_image("{flavour}")' in script


def test_definitions_use_the_hosts_python_minor_version():
    # Snakemake mounts the host's snakemake package into the container for `script:` rules
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert _recipe("cpu").fromHeader == f"python:{host}-slim-bookworm"
    assert f'"python={host}"' in _post(_recipe("gpu"))


def test_gpu_definition_takes_cudadecon_from_conda_forge():
    post = _post(_recipe("gpu"))
    install = post[post.index("micromamba install") :].split("micromamba clean")[0]
    assert "--channel conda-forge --override-channels" in install
    for package in ("cudadecon", "pycudadecon", "cupy", '"cuda-version=12"', '"python=3.11"'):
        assert package in install.split(), package
    # the PyPI wheel of pycudadecon has no libcudaDecon.so: it must not come from pip
    pip_lines = [line for line in post.splitlines() if "pip install" in line]
    assert pip_lines and not any("pycudadecon" in line or "cupy" in line for line in pip_lines)
    script = _test_script(_recipe("gpu"))
    assert "python -c 'import pycudadecon; pycudadecon.lib.lib; pycudadecon.lib.otf_lib" in script


def test_cpu_definition_has_the_fast_fft_extra():
    assert 'pip install "/opt/llsmflow/src[fast]"' in _post(_recipe("cpu"))
    fast = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["fast"]
    assert any(dep.startswith("pyfftw") for dep in fast)


def test_required_modules_come_with_the_package():
    """Every module the images' self-check imports is a dependency of llsmflow (or of its fast extra)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["fast"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in deps}
    distribution = {"skimage": "scikit-image", "yaml": "pyyaml", "ome_zarr": "ome-zarr"}
    for module in container.REQUIRED_MODULES:
        assert distribution.get(module, module) in names, module


def test_parse_definition_rejects_a_file_that_is_not_a_definition(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11\nRUN pip install llsmflow\n")
    with pytest.raises(LlsmflowError, match="no 'Bootstrap:' header") as info:
        container.parse_definition(bad)
    assert info.value.path == bad
    with pytest.raises(LlsmflowError, match="definition file not found"):
        container.parse_definition(tmp_path / "missing.def")


def test_check_image_cpu_passes_in_this_environment():
    backends = container.check_image("cpu")
    assert backends["cpu"] == "available"


def test_check_image_gpu_fails_without_the_gpu_stack():
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is installed here: the failure path cannot be shown")
    with pytest.raises(LlsmflowError, match="gpu image: cupy cannot be imported"):
        container.check_image("gpu")


# ---------------------------------------------------------------------------------------------- commands


def test_recipe_prints_the_definition(capsys):
    assert main(["container", "recipe", "gpu", "--workflow-dir", str(REPO)]) == 0
    assert capsys.readouterr().out == (REPO / "envs/apptainer/llsmflow-gpu.def").read_text()


def test_recipe_converts_to_a_dockerfile(capsys):
    assert main(["container", "recipe", "cpu", "--format", "docker", "--workflow-dir", str(REPO)]) == 0
    out = capsys.readouterr().out
    assert "FROM python:3.11-slim-bookworm" in out
    assert "ADD src /opt/llsmflow/src/src" in out
    assert "LABEL org.opencontainers.image.title llsmflow-cpu" in out
    assert "ENV LLSMFLOW_CONTAINER_IMAGE=llsmflow-cpu" in out


def test_recipe_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["container", "recipe", str(tmp_path / "nope.def")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.def: definition file not found" in err


def test_build_without_a_runtime_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither apptainer nor singularity
    code = main(
        ["container", "build", "cpu", "--output", str(tmp_path / "x.sif"), "--workflow-dir", str(REPO)]
    )
    assert code == 2
    assert "neither apptainer nor singularity is on PATH" in capsys.readouterr().err
    assert not (tmp_path / "x.sif").exists()


def _stand_in_apptainer(bindir: Path, log: Path, build_status: int = 0) -> None:
    """An executable named `apptainer` that records how it was called and writes the image file it is asked
    for. It stands in for Apptainer (which cannot be installed here) only to show that spython, which
    always runs `singularity`, reaches an `apptainer`-only host's command, with which arguments and where."""
    script = bindir / "apptainer"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$(basename "$0") $*" "cwd $(pwd)" >> {log}\n'
        'if [ "$1" = "--version" ]; then echo "apptainer version 1.3.4"; exit 0; fi\n'
        "for last; do :; done\n"  # the image path is the argument before the recipe
        'eval "image=\\${$(($#-1))}"\n'
        'echo "built from $last" > "$image"\n'
        'echo "INFO:    stand-in build log" >&2\n'
        f"exit {build_status}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_build_reaches_an_apptainer_only_host(tmp_path, monkeypatch, capsys):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    _stand_in_apptainer(bindir, log)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    if shutil.which("singularity"):
        pytest.skip("a real singularity command is installed here: not an apptainer-only host")
    output = tmp_path / "images" / "llsmflow-cpu.sif"
    args = ["container", "build", "cpu", "--output", str(output), "--builder", "fakeroot"]
    assert main(args + ["--workflow-dir", str(REPO)]) == 0
    calls = log.read_text().splitlines()
    # spython checked the install and built through the `singularity` name, which resolved to apptainer
    assert "singularity --version" in calls
    build = next(line for line in calls if " build " in line)
    assert build.startswith("singularity build --fakeroot ")
    assert build.endswith(str(REPO / "envs/apptainer/llsmflow-cpu.def"))
    assert f"cwd {REPO}" in calls  # %files paths are relative to the checkout
    assert output.read_text().startswith("built from ")
    assert not list(output.parent.glob(".*.partial"))  # written under a temporary name, then renamed
    out = capsys.readouterr().out
    assert f"sha256 {sha256_file(output)}" in out
    pinned = yaml.safe_load(out[out.index("containers:") :])
    assert pinned == {"containers": {"cpu": str(output), "cpu_sha256": sha256_file(output)}}
    assert shutil.which("singularity") is None  # PATH restored


def test_failed_build_writes_nothing(tmp_path, monkeypatch, capsys):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _stand_in_apptainer(bindir, tmp_path / "calls.log", build_status=255)  # e.g. %test failed
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    output = tmp_path / "llsmflow-gpu.sif"
    assert main(["container", "build", "gpu", "--output", str(output), "--workflow-dir", str(REPO)]) == 2
    err = capsys.readouterr().err
    assert "INFO:    stand-in build log" in err
    assert "apptainer build of llsmflow-gpu.def failed (exit 255" in err
    assert not output.exists() and not list(tmp_path.glob(".*.partial"))


def test_pin_prints_config_lines(tmp_path, capsys):
    sif = tmp_path / "llsmflow-gpu.sif"
    sif.write_bytes(b"not really a SIF, but a file with a digest")
    assert main(["container", "pin", "gpu", str(sif)]) == 0
    pinned = yaml.safe_load(capsys.readouterr().out)
    assert pinned["containers"] == {"gpu": str(sif), "gpu_sha256": sha256_file(sif)}
    container.resolve_images(pinned["containers"], "cupy", verify_local=True)


# ---------------------------------------------------------------------------------------------- configuration


def test_default_config_uses_no_container_and_validates():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    images = container.resolve_images(config["containers"], config["deconvolution"]["backend"])
    assert images == {"cpu": None, "gpu": None, "deconvolve": None}


def test_schema_rejects_a_malformed_sha256():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    config["containers"]["cpu_sha256"] = "abc"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(config)


@pytest.mark.parametrize(
    ("backend", "expected"), [("cpu", "cpu"), ("auto", "cpu"), ("cupy", "gpu"), ("pycudadecon", "gpu")]
)
def test_deconvolve_image_follows_the_backend(backend, expected):
    section = {
        "cpu": f"oras://ghcr.io/lab/llsmflow-cpu@sha256:{DIGEST}",
        "gpu": f"docker://lab/gpu@sha256:{DIGEST}",
    }
    images = container.resolve_images(section, backend)
    assert images["deconvolve"] == section[expected]
    assert images["cpu"] == section["cpu"]
    # no GPU image: deconvolve stays in the CPU image whatever the backend
    assert container.resolve_images({"cpu": section["cpu"]}, backend)["deconvolve"] == section["cpu"]


def test_unpinned_references_are_refused():
    with pytest.raises(LlsmflowError, match=r"containers.gpu = 'docker://lab/gpu:latest' is not pinned"):
        container.resolve_images({"gpu": "docker://lab/gpu:latest"})
    with pytest.raises(LlsmflowError, match="local image without containers.cpu_sha256"):
        container.resolve_images({"cpu": "/shared/images/llsmflow-cpu.sif"})
    relaxed = container.resolve_images({"gpu": "docker://lab/gpu:latest", "require_digest": False}, "cupy")
    assert relaxed["deconvolve"] == "docker://lab/gpu:latest"


def test_local_images_are_verified_by_sha256(tmp_path):
    sif = tmp_path / "llsmflow-cpu.sif"
    sif.write_bytes(b"image bytes")
    section = {"cpu": str(sif), "cpu_sha256": sha256_file(sif)}
    assert container.resolve_images(section, verify_local=True)["cpu"] == str(sif)
    sif.write_bytes(b"image bytes, rebuilt")
    with pytest.raises(LlsmflowError, match="rebuilt or replaced") as info:
        container.resolve_images(section, verify_local=True)
    assert info.value.path == sif
    container.resolve_images(section, verify_local=False)  # not hashed unless the run uses Apptainer
    with pytest.raises(LlsmflowError, match="image file not found"):
        container.resolve_images({**section, "cpu": str(tmp_path / "gone.sif")}, verify_local=True)


# ---------------------------------------------------------------------------------------------- workflow

RULE_IMAGES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[Path(sys.argv[3])], config=json.loads(sys.argv[1])),
        storage_settings=StorageSettings(),
        snakefile=Path(sys.argv[2]),
        workdir=Path.cwd(),
    )
    # WorkflowApi has no public accessor for the parsed rules; _workflow is the parsed workflow
    print("RULES " + json.dumps({rule.name: rule.container_img or None for rule in workflow._workflow.rules}))
"""


def _rule_images(tmp_path, config):
    result = subprocess.run(
        [sys.executable, "-c", RULE_IMAGES, json.dumps(config), str(REPO / "Snakefile"), str(CONFIG)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RULES "))
    return json.loads(line[len("RULES ") :])


@pytest.fixture(scope="module")
def base_config(tiny_acquisition):
    return {"dataset": "tiny", "raw_dir": str(tiny_acquisition / "raw")}


def test_rules_get_the_configured_images(tmp_path, base_config):
    cpu = f"oras://ghcr.io/lab/llsmflow-cpu@sha256:{DIGEST}"
    gpu = f"oras://ghcr.io/lab/llsmflow-gpu@sha256:{DIGEST}"
    config = dict(base_config, containers={"cpu": cpu, "gpu": gpu}, deconvolution={"backend": "cupy"})
    images = _rule_images(tmp_path, config)
    assert images.pop("deskew_deconvolve") == gpu
    assert {"ingest", "prepare_psf", "fuse", "track", "archive", "provenance"} <= set(images)
    assert set(images.values()) == {cpu}
    assert set(_rule_images(tmp_path, dict(base_config)).values()) == {None}


def _snakemake(tmp_path, *args):
    return subprocess.run(
        [
            str(SNAKEMAKE),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(CONFIG),
            "--dry-run",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_slurm_apptainer_profile_loads_and_dry_runs(tmp_path, base_config):
    profile = yaml.safe_load((REPO / "profiles/slurm-apptainer/config.yaml").read_text())
    assert profile["software-deployment-method"] == "apptainer"
    assert profile["executor"] == "slurm"
    assert "--nv" in profile["apptainer-args"].split()
    config = [f"{key}={value}" for key, value in base_config.items()]
    result = _snakemake(tmp_path, "--profile", str(REPO / "profiles/slurm-apptainer"), "--config", *config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "This was a dry-run" in result.stdout + result.stderr
    # with images configured, Snakemake's dry run checks for the runtime (and would announce the pulls)
    pinned = f"containers={{cpu: 'oras://ghcr.io/lab/llsmflow-cpu@sha256:{DIGEST}'}}"
    result = _snakemake(
        tmp_path, "--profile", str(REPO / "profiles/slurm-apptainer"), "--config", *config, pinned
    )
    if RUNTIME is None:
        assert result.returncode != 0
        assert "apptainer or singularity command has to be" in result.stdout + result.stderr
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "will be pulled" in result.stdout + result.stderr


def test_unpinned_image_stops_the_workflow_with_one_message(tmp_path, base_config):
    config = [f"{key}={value}" for key, value in base_config.items()]
    result = _snakemake(
        tmp_path, "--cores", "1", "--config", *config, "containers={cpu: 'docker://lab/cpu:1.0'}"
    )
    assert result.returncode != 0
    assert (
        "llsmflow: config containers.cpu = 'docker://lab/cpu:1.0' is not pinned"
        in result.stdout + result.stderr
    )


# ---------------------------------------------------------------------------------------------- inside a container


def test_running_container_reads_the_runtime_and_image_variables(tmp_path):
    assert container.running_container(environ={}) is None
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"llsmflow.version": "0.1.0", "llsmflow.flavour": "gpu"}))
    env = {
        "APPTAINER_CONTAINER": "/shared/images/llsmflow-gpu.sif",
        "APPTAINER_NAME": "llsmflow-gpu.sif",
        "LLSMFLOW_CONTAINER_IMAGE": "llsmflow-gpu",
        "LLSMFLOW_CONTAINER_FLAVOUR": "gpu",
    }
    info = container.running_container(environ=env, labels_file=labels)
    assert info == {
        "image": "llsmflow-gpu",
        "flavour": "gpu",
        "version": "0.1.0",
        "path": "/shared/images/llsmflow-gpu.sif",
        "name": "llsmflow-gpu.sif",
        "labels": {"llsmflow.version": "0.1.0", "llsmflow.flavour": "gpu"},
    }
    legacy = container.running_container(
        environ={"SINGULARITY_CONTAINER": "/x.sif"}, labels_file=tmp_path / "no"
    )
    assert legacy["path"] == "/x.sif" and legacy["labels"] == {}


# ---------------------------------------------------------------------------------------------- with Apptainer


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory):
    output = tmp_path_factory.mktemp("images") / "llsmflow-cpu.sif"
    return container.build_image("cpu", output, REPO)


@NEEDS_APPTAINER
def test_cpu_image_builds_and_identifies_itself(cpu_image):
    assert cpu_image["sha256"] == sha256_file(cpu_image["path"])
    result = subprocess.run(
        [RUNTIME, "exec", cpu_image["path"], "llsmflow", "container", "info"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["image"] == "llsmflow-cpu" and info["flavour"] == "cpu"
    assert info["path"] == cpu_image["path"]
    assert info["version"] == info["labels"]["llsmflow.version"]


@NEEDS_APPTAINER
def test_one_rule_runs_in_the_cpu_image(cpu_image, tiny_acquisition, tmp_path):
    config = {
        "dataset": "tiny",
        "raw_dir": str(tiny_acquisition / "raw"),
        "containers": {"cpu": cpu_image["path"], "cpu_sha256": cpu_image["sha256"]},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            str(SNAKEMAKE),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(tmp_path / "config.yaml"),
            "--sdm",
            "apptainer",
            "--apptainer-args",
            f"--bind {tiny_acquisition}",
            "--cores",
            "1",
            "--until",
            "prepare_psf",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "work/tiny/psf").iterdir()) == ["ch0.ome.tif", "ch1.ome.tif"]


def test_slurm_apptainer_profile_keeps_the_slurm_profiles_settings():
    """Snakemake profiles do not inherit: the Apptainer profile must repeat every SLURM setting (a missing
    `slurm-status-command: squeue` hangs runs on clusters without slurmdbd)."""
    slurm = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    apptainer = yaml.safe_load((REPO / "profiles/slurm-apptainer/config.yaml").read_text())
    differing = {
        key: (value, apptainer.get(key)) for key, value in slurm.items() if apptainer.get(key) != value
    }
    # the SLURM profile's queue size may be tuned separately
    differing.pop("jobs", None)
    assert differing == {}
