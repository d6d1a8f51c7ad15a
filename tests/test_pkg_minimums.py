"""The declared minimums of the OME-Zarr stack are true: with ome-zarr, ome-zarr-models and zarr at exactly the
versions pyproject.toml's ``>=`` names, an archive is written, read back, converted to NGFF 0.4 and verified.

The three are installed with ``pip install --no-deps --target`` into a temporary directory put first on the
subprocess's ``PYTHONPATH`` (their own dependencies come from the running environment; zarr 3.1's ``crc32c``
is added when missing). Needs the package index: skipped when pip cannot fetch them. The other minimums
(NumPy, pandas, dask, SciPy …) are compiled against each other and are not swapped in here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
KEY = ("ome-zarr", "ome-zarr-models", "zarr")

SCRIPT = """
import importlib.metadata as md, sys
import numpy as np
from llsmflow.archive.convert import convert_archive
from llsmflow.archive.dataset import verify_archive, write_dataset_archive
from llsmflow.archive.read import read_ome_zarr
print({name: md.version(name) for name in sys.argv[2:]})
out = sys.argv[1]
image = np.arange(2 * 1 * 8 * 80 * 70, dtype=np.uint16).reshape(2, 1, 8, 80, 70)
write_dataset_archive(out + "/a.ome.zarr", image, (0.3, 0.1, 0.1), 2.0, ["GFP"], wavelengths_nm=[510.0],
                      origin_um=(1.0, 2.0, 3.0))
data, meta = read_ome_zarr(out + "/a.ome.zarr")
assert (np.asarray(data) == image).all() and meta["origin_um"] == (1.0, 2.0, 3.0) and meta["n_levels"] == 2
convert_archive(out + "/a.ome.zarr", out + "/b.ome.zarr", "0.4")
report = verify_archive(out + "/b.ome.zarr")
assert not any(report.values()), report
print("ok")
"""


def _minimums() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = {}
    for entry in project["dependencies"]:
        requirement = Requirement(entry)
        if requirement.name in KEY:
            (spec,) = [s for s in requirement.specifier if s.operator == ">="]
            found[requirement.name] = spec.version
    return found


def test_declared_minimums_write_read_convert_and_verify(tmp_path):
    minimums = _minimums()
    assert set(minimums) == set(KEY)
    target = tmp_path / "minimums"
    wanted = [f"{name}=={version}" for name, version in minimums.items()]
    try:
        import crc32c  # noqa: F401  (zarr 3.1.x imports it; later versions do not)
    except ImportError:
        wanted.append("crc32c")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *wanted],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.skip(f"pip could not fetch {wanted} (offline?): {result.stderr.strip().splitlines()[-1:]}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO / "src")]))
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), *KEY], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    versions, status = run.stdout.strip().splitlines()[-2:]
    assert status == "ok"
    imported = ast.literal_eval(versions)
    assert {n: Version(v) for n, v in imported.items()} == {n: Version(minimums[n]) for n in KEY}
