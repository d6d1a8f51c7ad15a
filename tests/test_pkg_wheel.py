"""The wheel carries the workflow: built from this checkout, installed into a fresh virtual environment with no
checkout on its path, ``llsmflow run`` runs the tiny synthetic acquisition to completion from a temporary
directory.

How the fresh environment is made (fast and offline):

1. the checkout's tracked files are copied to a temporary directory (so the build sees only what a clone has,
   and leaves no ``build/`` in the checkout), and ``pip wheel --no-deps`` builds the wheel there, without
   build isolation when setuptools >= 77 is installed (else pip fetches it);
2. ``python -m venv --without-pip`` makes the fresh environment; a ``.pth`` file puts the site-packages of the
   interpreter running the tests *after* its own (the dependencies: NumPy, Snakemake, ...). Lines of a
   ``.pth`` file are plain paths, so the ``.pth`` files in that directory, such as an editable install's
   pointer to a checkout, are not processed: the only llsmflow the fresh environment imports is the wheel's;
3. ``pip --python FRESH install --no-deps`` installs the wheel (its ``llsmflow`` command included), and a
   ``snakemake`` launcher is written into the fresh ``bin/``, the same three lines pip writes for Snakemake's
   console script, so that Snakemake and every job run with the fresh interpreter;
4. the commands run with ``PATH`` starting at the fresh ``bin/``, no ``PYTHONPATH``, in a temporary directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from llsmflow.provenance.crate import WORKFLOW_FILES

REPO = Path(__file__).resolve().parents[1]
PACKAGED = "llsmflow/_workflow/"
# besides what a crate's workflow snapshot takes: what `llsmflow run`/`init`/`container` read
EXTRA_FILES = ("config/config.yaml", "config/README.md", "profiles/*/config.yaml")


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the wheel test copies the tracked files")
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def _setuptools_ok() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in _tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheelhouse")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)]
    if _setuptools_ok():
        command.insert(5, "--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("llsmflow-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> dict:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_llsmflow_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = venv / "bin" / "snakemake"
    launcher.write_text(
        f"#!{python}\nimport sys\nfrom snakemake.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n",
        encoding="utf-8",
    )
    launcher.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", PYTHONNOUSERSITE="1")
    return {"venv": venv, "python": python, "llsmflow": venv / "bin" / "llsmflow", "env": env}


def test_wheel_carries_every_workflow_file(wheel):
    """Every file a provenance crate snapshots (all Snakemake reads) and the default config and profiles."""
    with zipfile.ZipFile(wheel) as archive:
        packed = {n[len(PACKAGED) :] for n in archive.namelist() if n.startswith(PACKAGED)}
        modules = {n for n in archive.namelist() if n.startswith("llsmflow/") and n.endswith(".py")}
    expected = {
        Path(p).relative_to(REPO).as_posix()
        for pattern in (*WORKFLOW_FILES, *EXTRA_FILES)
        for p in glob.glob(str(REPO / pattern))
        if Path(p).is_file() and not Path(p).name.startswith(".")
    }
    assert "Snakefile" in expected and "workflow/rules/track.smk" in expected
    assert expected - packed == set()
    sources = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "llsmflow").rglob("*.py")}
    assert sources - modules == set()
    with zipfile.ZipFile(wheel) as archive:
        # the napari reader's manifest and the entry point that registers it
        assert "llsmflow/viewers/napari.yaml" in archive.namelist()
        (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "llsmflow = llsmflow.viewers:napari.yaml" in archive.read(entry_points).decode()


def test_installed_wheel_runs_the_tiny_workflow(fresh_env, tmp_path):
    env, llsmflow = fresh_env["env"], str(fresh_env["llsmflow"])

    def run(*args, timeout=120):
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        return result.stdout

    where = run(str(fresh_env["python"]), "-c", "import llsmflow.run.config as c; print(c.SOURCE_TREE)")
    # the workflow found is the wheel's copy inside the fresh environment, not a checkout
    assert Path(where.strip()) == next(fresh_env["venv"].glob("lib/python*/site-packages/llsmflow/_workflow"))
    # one channel, three timepoints (the fewest that give tracks of min_track_length 3): 24 jobs, not 45
    run(llsmflow, "synth", "--tiny", "--channels", "1", "--timepoints", "3", "data")
    run(llsmflow, "init", "data/raw", "--dataset", "tiny", "--no-input")
    out = run(llsmflow, "run", "--configfile", "config.yaml", "--cores", "2", timeout=900)
    assert "done in" in out
    archive = tmp_path / "results" / "tiny" / "tiny.ome.zarr"
    assert "intact" in run(llsmflow, "verify", str(archive))
    # the crate's workflow snapshot is the packaged workflow, byte for byte
    snapshot = tmp_path / "results" / "tiny" / "provenance" / "workflow" / "Snakefile"
    assert snapshot.read_bytes() == (Path(where.strip()) / "Snakefile").read_bytes()
    assert (tmp_path / "results" / "tiny" / "tracks").is_dir()
