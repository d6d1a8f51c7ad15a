"""One-off commands import only what they use (issue 18; figures in bench/RESULTS.md, bench/bench_cli_startup.py):
each command below runs once in a fresh interpreter, on the shared tiny run's archive, and the libraries it has
no use for must not have been imported. ``llsmflow verify`` of a local archive hashes files and reads the root
attributes (as JSON, exactly as Zarr reads them: checked here against Zarr itself); ``llsmflow track`` computes
its frames with dask's threaded scheduler without importing ``distributed``."""

import subprocess
import sys
import warnings

import pytest

from llsmflow.archive.dataset import _group_attributes


def _run_command(argv: list[str]) -> tuple[set[str], str]:
    """The modules a fresh ``llsmflow ARGV…`` has imported when it returns, and what it printed."""
    code = (
        "import sys\nfrom llsmflow.cli import main\n"
        f"code = main({argv!r})\n"
        "print('MODULES', ' '.join(sorted(sys.modules)))\nsys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    return set(lines[-1].split()[1:]), "\n".join(lines[:-1])


def _top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.fixture(scope="module")
def tiny_archive(tiny_run):
    return tiny_run.run_dir / "results" / "tiny" / "tiny.ome.zarr"


def test_verify_imports_neither_the_writer_nor_zarr(tiny_archive):
    modules, out = _run_command(["verify", str(tiny_archive)])
    assert out.endswith("intact (every file matches its sha256)")
    heavy = {"ome_zarr", "ome_zarr_models", "dask", "skimage", "scipy", "zarr", "pydantic", "pandas"}
    assert not heavy & _top_level(modules), heavy & _top_level(modules)
    assert "llsmflow.archive.ome_zarr" not in modules


def test_track_does_not_import_distributed(tiny_archive, tmp_path):
    modules, out = _run_command(["track", str(tiny_archive), "--output", str(tmp_path / "ch0.csv")])
    assert (tmp_path / "ch0.csv").is_file() and "tracks" in out
    assert "distributed" not in _top_level(modules)
    assert "dask" in _top_level(modules)  # the frames are still computed by dask


def _zarr_attributes(path):
    import zarr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr.json beside .zgroup: Zarr warns, then reads zarr.json
            return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return "error"


def _ours(path):
    try:
        return _group_attributes(path)
    except Exception:
        return "error"


def test_root_attributes_are_read_as_zarr_reads_them(tiny_archive, tmp_path):
    import numpy as np
    import zarr

    attrs = {"llsmflow": {"tables": {}, "raw_inputs": {"directories": ["/x"]}}, "ome": {"version": "0.4"}}
    cases = {"archive": tiny_archive}
    for fmt in (2, 3):
        group = zarr.open_group(str(tmp_path / f"v{fmt}"), mode="w", zarr_format=fmt)
        group.attrs.update(attrs)
        cases[f"v{fmt}"] = tmp_path / f"v{fmt}"
        zarr.open_group(str(tmp_path / f"bare{fmt}"), mode="w", zarr_format=fmt)  # no attributes
        cases[f"bare{fmt}"] = tmp_path / f"bare{fmt}"
        zarr.create_array(str(tmp_path / f"array{fmt}"), data=np.zeros(3), zarr_format=fmt)  # not a group
        cases[f"array{fmt}"] = tmp_path / f"array{fmt}"
    both = tmp_path / "both"  # zarr.json and .zgroup: the v3 metadata wins
    zarr.open_group(str(both), mode="w", zarr_format=3).attrs.update({"which": 3})
    (both / ".zgroup").write_text('{"zarr_format": 2}')
    (both / ".zattrs").write_text('{"which": 2}')
    cases["both"] = both
    (tmp_path / "none").mkdir()
    cases["none"] = tmp_path / "none"
    damaged = tmp_path / "damaged"
    zarr.open_group(str(damaged), mode="w", zarr_format=3)
    (damaged / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    cases["damaged"] = damaged
    for name, path in cases.items():
        assert _ours(path) == _zarr_attributes(path), name
    assert _ours(cases["v2"]) == attrs and _ours(cases["both"]) == {"which": 3}
