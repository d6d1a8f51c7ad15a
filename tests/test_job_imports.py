"""Light jobs (issue 18): what a workflow job imports, checked in fresh interpreters, and the light archive read.

Each workflow script runs in its own Python process per job; a module it imports for nothing costs every job
its import time (``bench/bench_imports.py`` measures real jobs). These tests run a script's top-level imports,
and where cheap the library call its step makes, in a fresh interpreter, and assert that the heavy packages the
step does not need were not imported. They fail when a change pulls one back in (through a package
``__init__``, a library module's top-level import, or a dask call that looks for a distributed client).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llsmflow.archive.ome_zarr import write_ome_zarr
from llsmflow.archive.read import max_projection_yx, read_ome_zarr
from llsmflow.errors import LlsmflowError

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"


def _script_imports(name: str) -> str:
    tree = ast.parse((SCRIPTS / name).read_text(encoding="utf-8"))
    return "\n".join(
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "module", "") != "__future__"
    )


def _archive(path: Path, ngff_version: str, shape=(2, 2, 9, 40, 56)) -> np.ndarray:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 4000, size=shape, dtype=np.uint16)
    write_ome_zarr(
        path,
        image,
        voxel_size_um=(0.4, 0.1, 0.1),
        time_interval_s=2.5,
        channel_names=["ch0_488nm", "ch1_560nm"][: shape[1]],
        origin_um=(1.0, -2.0, 3.5),
        chunks_zyx=(4, 16, 16),
        ngff_version=ngff_version,
        n_levels=2,
    )
    return image


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    root = tmp_path_factory.mktemp("light-read")
    return {v: (root / f"a{v}.ome.zarr", _archive(root / f"a{v}.ome.zarr", v)) for v in ("0.4", "0.5")}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_max_projection_matches_the_ome_zarr_py_reader(archives, version):
    """The light path gives read_ome_zarr's metadata (ome-zarr-py's reader) and the exact z projection."""
    path, image = archives[version]
    data, reference = read_ome_zarr(path)
    for t in range(image.shape[0]):
        for c in range(image.shape[1]):
            projection, meta = max_projection_yx(path, t=t, c=c)
            assert projection.dtype == image.dtype
            np.testing.assert_array_equal(projection, image[t, c].max(axis=0))
            np.testing.assert_array_equal(projection, data[t, c].max(axis=0).compute())
    assert meta == reference
    assert meta["origin_um"] == pytest.approx((1.0, -2.0, 3.5)) and meta["ngff_version"] == version


def test_max_projection_names_bad_input(archives, tmp_path):
    path, _ = archives["0.5"]
    with pytest.raises(LlsmflowError, match=r"c = 2 is out of range; expected 0 to 1"):
        max_projection_yx(path, c=2)
    with pytest.raises(LlsmflowError, match="not a directory"):
        max_projection_yx(tmp_path / "absent.ome.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LlsmflowError, match=r"plain: cannot read as OME-Zarr"):
        max_projection_yx(tmp_path / "plain")


def _check(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_light_jobs_import_only_what_their_step_needs(archives, tmp_path):
    """In fresh interpreters (run side by side): each script's imports, then its step's library call."""
    archive, _ = archives["0.5"]
    forbidden = "\nbad = sorted(m for m in {names} if m in sys.modules)\nassert not bad, bad\n"
    checks = {
        # the QC mosaic reads the archive with zarr alone and draws without pyplot
        "qc_mosaic": _script_imports("qc_mosaic.py")
        + f"\nimport sys\nmax_projection_yx({str(archive)!r})"
        + forbidden.format(names=["ome_zarr", "ome_zarr_models", "dask", "skimage", "matplotlib.pyplot"]),
        "qc_tile": _script_imports("qc_tile.py")
        + "\nimport sys"
        + forbidden.format(names=["ome_zarr", "dask", "zarr", "pandas", "matplotlib.pyplot"]),
        # tracking needs trackpy, but not the pyFFTW interfaces (and dask.array) trackpy would load for nothing
        "track": _script_imports("track.py")
        + "\nimport sys\nfrom llsmflow.track._common import import_trackpy\ntp = import_trackpy()\n"
        + "assert hasattr(tp, 'locate') and hasattr(tp, 'link')"
        + forbidden.format(names=["pyfftw", "IPython", "dask", "ome_zarr", "matplotlib.pyplot"])
        + "import pyfftw  # a later import still works\n",
        # fusion runs on dask's threads without importing distributed to look for a client
        "fuse": _script_imports("fuse.py")
        + textwrap.dedent(
            f"""
            import sys
            import numpy as np
            ones = np.ones((4, 16, 16), np.float32)
            tiles = [Tile(k, (0.0, 0.0, x), None, data=ones) for k, x in (("a", 0), ("b", 1))]
            fuse_to_zarr(tiles, {{"a": (0, 0, 0), "b": (0, 0, 1.0)}}, (0.2, 0.1, 0.1), {str(tmp_path / "f.zarr")!r})
            """
        )
        + forbidden.format(names=["distributed", "ome_zarr", "matplotlib"]),
    }
    checks["fuse"] = checks["fuse"].replace(
        "from llsmflow.stitch.tiles import tile_from_deskewed", "from llsmflow.stitch.tiles import Tile"
    )
    checks["qc_mosaic"] = checks["qc_mosaic"].replace(
        "from llsmflow.run.steps", "from llsmflow.archive.read import max_projection_yx\nfrom llsmflow.run.steps"
    )
    running = {name: _check(code) for name, code in checks.items()}
    failures = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            failures[name] = err.strip().splitlines()[-1:] + [json.dumps(checks[name])[:300]]
    assert not failures, failures


def test_step_record_states_the_start_up_before_the_step(tmp_path):
    """startup_s: wall seconds from the process's start (here at least the 0.3 s slept before the step);
    startup_cpu_s: CPU seconds used by then (the sleep uses none)."""
    record = tmp_path / "step.json"
    code = (
        "import time\ntime.sleep(0.3)\nfrom llsmflow.run.steps import StepRecorder\n"
        f"with StepRecorder({str(record)!r}, 'probe'):\n    pass\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
    data = json.loads(record.read_text(encoding="utf-8"))
    assert 0.3 <= data["startup_s"] < 30
    assert 0 < data["startup_cpu_s"] < data["startup_s"] - 0.25
