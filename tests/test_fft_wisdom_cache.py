"""FFT planning that pays for itself: the per-user wisdom cache (location, opt-out, machine key), corrupt or
foreign wisdom files, concurrent writers, and the planning-effort choice, each checked against a fresh plan."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from llsmflow import decon
from llsmflow.decon import fft as decon_fft
from llsmflow.decon import wisdom as decon_wisdom

pytestmark = pytest.mark.skipif(decon_fft.pyfftw is None, reason="pyFFTW is not installed: no FFTW plans")

SRC = Path(__file__).resolve().parents[1] / "src"

# A child process: deconvolve one volume of the given shape (logs at INFO on stderr), save the result.
CHILD = """
import logging, sys
import numpy as np
from llsmflow import decon
logging.basicConfig(level=logging.INFO, format="%(message)s")
shape = tuple(int(n) for n in sys.argv[2].split(","))
rng = np.random.default_rng(5)
grids = np.indices((7, 5, 5)) - np.array([3, 2, 2])[:, None, None, None]
psf = np.exp(-0.5 * ((grids[0] / 1.5) ** 2 + grids[1] ** 2 + grids[2] ** 2)).astype(np.float32)
vol = rng.poisson(50, shape).astype(np.float32)
np.save(sys.argv[1], decon.richardson_lucy(vol, psf / psf.sum(), iterations=3, threads=1))
"""


def child(tmp_path: Path, name: str, shape: str, wait: bool = True, **env):
    """Run CHILD with the environment ``env`` added (and the cache in ``tmp_path/cache``)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LLSMFLOW_FFTW")}
    environment.update(PYTHONPATH=str(SRC), XDG_CACHE_HOME=str(tmp_path / "cache"), **env)
    command = [sys.executable, "-c", CHILD, str(tmp_path / f"{name}.npy"), shape]
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    return finish(process, tmp_path, name) if wait else process


def finish(process, tmp_path: Path, name: str):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return stderr, np.load(tmp_path / f"{name}.npy")


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """This process: the cache in tmp_path, no wisdom file named, FFTW's effort 'auto', files re-read."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(decon.FFTW_WISDOM_ENV, raising=False)
    monkeypatch.delenv(decon_fft.FFTW_PLANNING_ENV, raising=False)
    monkeypatch.setattr(decon_fft, "FFTW_PLANNER_EFFORT", "auto")
    monkeypatch.setattr(decon_wisdom, "_read", set())
    return tmp_path


def test_cache_location_override_and_opt_out(clean, monkeypatch):
    key = decon_wisdom.machine_key()
    assert key == decon_wisdom.machine_key(decon_fft.pyfftw.__version__)
    assert key != decon_wisdom.machine_key("0.0.0-another-build")  # another pyFFTW/FFTW build: another file
    assert decon_wisdom.wisdom_file() == (clean / "cache" / "llsmflow" / f"fftw-wisdom-{key}", False)
    for off in ("off", "", "none", "0", "false"):
        monkeypatch.setenv(decon.FFTW_WISDOM_ENV, off)
        assert decon_wisdom.wisdom_file() == (None, False)
    monkeypatch.setenv(decon.FFTW_WISDOM_ENV, str(clean / "shared-wisdom"))
    assert decon_wisdom.wisdom_file() == (clean / "shared-wisdom", True)


def test_cached_plans_equal_a_fresh_plan_and_opt_out_writes_nothing(tmp_path):
    """First process measures and fills the default cache; the second takes the plans from it (nothing
    measured) with a bit-identical result; an opted-out process plans afresh (FFTW_ESTIMATE) and agrees to
    float32 round-off; opting out leaves no file."""
    cache = tmp_path / "cache" / "llsmflow"
    log1, first = child(tmp_path, "first", "24,40,36", LLSMFLOW_FFTW_PLANNING="measure")
    files = list(cache.glob("fftw-wisdom-*"))
    assert [f.name for f in files] == [f"fftw-wisdom-{decon_wisdom.machine_key()}"]
    assert "FFTW planned (" in log1 and "with FFTW_MEASURE" in log1
    log2, second = child(tmp_path, "second", "24,40,36")  # auto: plans from the cache
    assert "taken from wisdom" in log2 and "FFTW planned (" not in log2
    assert np.array_equal(first, second)
    (tmp_path / "cache").rename(tmp_path / "kept")
    log3, fresh = child(tmp_path, "fresh", "24,40,36", LLSMFLOW_FFTW_WISDOM="off", LLSMFLOW_FFTW_PLANNING="measure")
    assert "FFTW planned (" in log3 and not (tmp_path / "cache").exists()
    np.testing.assert_allclose(fresh, first, rtol=0, atol=2e-6 * float(first.max()))


def test_concurrent_jobs_keep_each_others_plans(tmp_path):
    """Two processes measuring different shapes at once, into one shared wisdom file: each save merges what
    the file holds under a lock, so a third process finds both shapes' plans."""
    shared = str(tmp_path / "shared" / "fftw-wisdom")
    shapes = ("20,36,30", "22,30,40")
    running = [child(tmp_path, f"job{i}", s, wait=False, LLSMFLOW_FFTW_WISDOM=shared) for i, s in enumerate(shapes)]
    for i, process in enumerate(running):
        finish(process, tmp_path, f"job{i}")
    assert not [p for p in (tmp_path / "shared").iterdir() if p.name.endswith((".tmp", ".partial"))]  # no temporary
    for i, shape in enumerate(shapes):
        log, _ = child(tmp_path, f"check{i}", shape, LLSMFLOW_FFTW_WISDOM=shared)
        assert "taken from wisdom" in log and "FFTW planned (" not in log, shape


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


CORRUPT = {
    "garbage": b"not wisdom at all",
    "truncated": b"(fftw-3.3.5 fftw_wisdom #x1\n)\n\0(fftw-3.3.5 fftwf_wisdom #x1 #x2\n  (fftwf_codelet",
    "foreign-version": b"(fftw-9.9.9 fftw_wisdom #x1 #x2 #x3 #x4\n)\n\0(fftw-9.9.9 fftwf_wisdom #x1 #x2 #x3 #x4\n)\n\0",
    "binary": b"\xff\xfe\0\x00binary\0\x80",
    "pickle": None,
    "python": None,
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_or_foreign_wisdom_is_ignored_with_one_warning(clean, caplog, monkeypatch, name):
    marker = clean / "executed"
    content = CORRUPT[name]
    if name == "pickle":  # would create the marker if anything unpickled it
        content = pickle.dumps(Boom(str(marker)))
    elif name == "python":
        content = f"open({str(marker)!r}, 'w')\n".encode()
    path = clean / "wisdom"
    path.write_bytes(content)
    monkeypatch.setenv(decon.FFTW_WISDOM_ENV, str(path))
    # a shape per case: FFTW keeps the plans of this process in memory, and the file is rewritten only when a
    # plan is measured
    shape = (18 + 4 * list(CORRUPT).index(name), 26, 22)  # padded z: 20, 24, 28, ... (distinct)
    vol = np.random.default_rng(2).poisson(30, shape).astype(np.float32)
    kernel = np.ones((3, 3, 3), np.float32) / 27
    with caplog.at_level(logging.INFO, logger="llsmflow.decon"):
        result = decon.richardson_lucy(vol, kernel, iterations=2, threads=1)
        again = decon.richardson_lucy(vol, kernel, iterations=2, threads=1)
    warned = [w for w in _warnings(caplog) if str(path) in w]
    assert len(warned) == 1 and "ignored" in warned[0], _warnings(caplog)
    assert not marker.exists()
    assert np.array_equal(result, again) and np.isfinite(result).all()
    # a named (shared) file: planned with FFTW_MEASURE, and the corrupt file replaced by FFTW's wisdom
    parts = path.read_bytes().split(b"\0")
    assert len(parts) == 3 and parts[1].startswith(b"(fftw-") and b"fftwf_wisdom" in parts[1]


class Boom:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_oversized_wisdom_file_is_not_read(clean, caplog, monkeypatch):
    path = clean / "big-wisdom"
    with path.open("wb") as handle:
        handle.truncate(decon_wisdom._MAX_BYTES + 1)
    with caplog.at_level(logging.WARNING, logger="llsmflow.decon"):
        assert decon_wisdom.import_file(path, decon_fft.pyfftw) is False
    assert len(_warnings(caplog)) == 1


def test_planning_effort_follows_the_expected_work_and_not_the_result(clean, monkeypatch, caplog):
    """auto: FFTW_ESTIMATE for one volume's few iterations, FFTW_MEASURE when many transforms follow; the
    result does not depend on the choice (float32 round-off), nor on the thread count of the plan."""
    monkeypatch.setenv(decon.FFTW_WISDOM_ENV, "off")
    assert not decon_fft.measuring_pays(4 * 10 + 1, threads=2)
    assert not decon_fft.measuring_pays(4 * 10 + 1, threads=1)
    assert decon_fft.measuring_pays(4 * 10 * 16, threads=2)  # e.g. 16 chunks of 10 iterations
    assert decon_fft.measuring_pays(4 * 30, threads=16)  # many idle cores: the threaded plan pays soon
    assert not decon_fft.measuring_pays(4 * 30, threads=16, estimate_threads=16)
    assert decon_fft.measuring_pays(None, threads=1)
    shape = (26, 30, 28)  # a shape no other test plans (FFTW keeps wisdom per process)
    few = decon_fft._Workspace(shape, np, 2, 3, transforms=41)
    many = decon_fft._Workspace(shape, np, 2, 3, transforms=4000)
    assert (few.effort, many.effort) == ("FFTW_ESTIMATE", "FFTW_MEASURE")
    # once measured in this process, auto takes the measured plans even for little work (free)
    assert decon_fft._Workspace(shape, np, 2, 3, transforms=41).effort == "FFTW_MEASURE"
    rng = np.random.default_rng(4)
    vol = rng.poisson(40, (24, 64, 60)).astype(np.float32)  # padded: > _MIN_VOXELS_FOR_THREADS
    kernel = decon.prepare_psf(np.pad(np.ones((3, 3, 3)), 2) + 0.01, (0.3, 0.1, 0.1), (0.3, 0.1, 0.1))
    results = {}
    for effort in ("FFTW_ESTIMATE", "FFTW_MEASURE", "auto"):
        for threads in (1, 2):
            monkeypatch.setattr(decon_fft, "FFTW_PLANNER_EFFORT", effort)
            results[effort, threads] = decon.richardson_lucy(vol, kernel, iterations=4, threads=threads)
    reference = results["FFTW_ESTIMATE", 1]
    for key, value in results.items():
        np.testing.assert_allclose(value, reference, rtol=0, atol=2e-6 * float(reference.max()), err_msg=str(key))


def test_planning_environment_variable(clean, monkeypatch, caplog):
    monkeypatch.setenv(decon_fft.FFTW_PLANNING_ENV, "measure")
    assert decon_fft.planner_effort() == "FFTW_MEASURE"
    monkeypatch.setenv(decon_fft.FFTW_PLANNING_ENV, "FFTW_ESTIMATE")
    assert decon_fft.planner_effort() == "FFTW_ESTIMATE"
    monkeypatch.setenv(decon_fft.FFTW_PLANNING_ENV, "hard")
    with caplog.at_level(logging.WARNING, logger="llsmflow.decon"):
        assert decon_fft.planner_effort() == "auto"
        assert decon_fft.planner_effort() == "auto"
    assert len(_warnings(caplog)) <= 1  # once per process and value


def test_cli_writes_uncompressed_unless_asked(clean, monkeypatch):
    from llsmflow.cli import main
    from llsmflow.io import read_volume_description, write_volume

    monkeypatch.setenv(decon.FFTW_WISDOM_ENV, "off")
    rng = np.random.default_rng(1)
    write_volume(clean / "in.tif", rng.poisson(80, (16, 40, 36)).astype(np.uint16), (0.3, 0.1, 0.1))
    grids = np.indices((7, 5, 5)) - np.array([3, 2, 2])[:, None, None, None]
    psf = np.exp(-0.5 * ((grids[0] / 1.5) ** 2 + grids[1] ** 2 + grids[2] ** 2)).astype(np.float32)
    write_volume(clean / "psf.tif", psf * 1000, (0.3, 0.1, 0.1))
    common = ["--psf", str(clean / "psf.tif"), "--psf-geometry", "objective", "--iterations", "2"]
    assert main(["deconvolve", str(clean / "in.tif"), str(clean / "plain.tif"), *common]) == 0
    assert main(["deconvolve", str(clean / "in.tif"), str(clean / "zlib.tif"), *common, "--compression", "zlib"]) == 0
    with tifffile.TiffFile(clean / "plain.tif") as plain, tifffile.TiffFile(clean / "zlib.tif") as packed:
        assert plain.pages[0].compression == 1 and packed.pages[0].compression == 8  # none / deflate
        np.testing.assert_array_equal(plain.asarray(), packed.asarray())
    assert read_volume_description(clean / "plain.tif")["deconvolution"]["iterations"] == 2


def test_pyfftw_interfaces_still_work_for_libraries_imported_after_the_engine():
    """The engine imports pyFFTW without its interfaces (start-up time); a library that reads
    ``pyfftw.interfaces`` right after ``import pyfftw`` (trackpy does, at import) must still get them: in one
    process, deconvolution then tracking (a notebook, ``llsmflow watch``) once failed with AttributeError."""
    pytest.importorskip("pyfftw")
    code = (
        "import llsmflow.decon.fft, sys\n"
        "assert 'dask.array' not in sys.modules, 'the engine import pulled in pyfftw.interfaces'\n"
        "import trackpy.preprocessing, pyfftw\n"
        "assert pyfftw.interfaces.cache is not None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_saved_wisdom_follows_the_umask_and_leaves_nothing_temporary(clean):
    """``wisdom.save`` writes through io.atomic_output: a new file whose mode follows the umask (a group's jobs
    share a work directory's file), FFTW's three parts, nothing temporary left (the merge of concurrent
    writers: test_concurrent_jobs_keep_each_others_plans); an unwritable place costs one warning, never an
    exception."""
    pyfftw = decon_fft.pyfftw
    path = clean / "shared" / "fftw-wisdom"
    old = os.umask(0o002)
    try:
        decon_wisdom.save(path, pyfftw)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, f".{path.name}.lock"])
    parts = path.read_bytes().split(b"\0")
    assert len(parts) == 3 and parts == list(pyfftw.export_wisdom())
    blocked = clean / "file" / "fftw-wisdom"
    blocked.parent.write_text("a file, not a directory")
    decon_wisdom.save(blocked, pyfftw)  # one warning, no exception
    assert blocked.parent.read_text() == "a file, not a directory"
