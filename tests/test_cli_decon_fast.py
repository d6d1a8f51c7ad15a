"""What makes a repeated ``llsmflow deconvolve`` fast (issue 18): the prepared PSF kept on disk
(``decon.kernel_cache``), the imports a warm call skips (scipy.ndimage, scipy.fft, pandas) and the OTF by a
pruned transform; each checked against the plain computation it replaces."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from llsmflow import decon
from llsmflow.decon import engine as decon_engine
from llsmflow.decon import kernel_cache
from llsmflow.decon import psf as decon_psf
from llsmflow.decon.otf import _folded
from llsmflow.io import write_volume

SRC = Path(__file__).resolve().parents[1] / "src"
VOXEL_UM = (0.3, 0.1, 0.1)

# one fresh process: the command, then which of the heavy modules it imported
CHILD = """
import json, sys
from llsmflow.cli import main
rc = main(sys.argv[1:])
heavy = [m for m in ("pandas", "scipy", "scipy.fft", "scipy.ndimage") if m in sys.modules]
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def _bead_psf(shape=(15, 17, 17), sigma=(2.0, 1.2, 1.2), offset=100.0, seed=1) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    r2 = sum(((g - n // 2) / s) ** 2 for g, n, s in zip(grid, shape, sigma, strict=True))
    rng = np.random.default_rng(seed)
    return rng.poisson(np.exp(-0.5 * r2) * 3000 + offset).astype(np.uint16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-decon-fast")
    rng = np.random.default_rng(0)
    data = rng.poisson(100 + 50 * rng.random((24, 48, 48))).astype(np.uint16)
    data[12, 20:23, 30:33] += 3000
    write_volume(folder / "data.ome.tif", data, VOXEL_UM, compression=None)
    # the PSF sampled finer in z than the data: the preparation resamples it (scipy.ndimage)
    write_volume(folder / "psf.ome.tif", _bead_psf(), (0.2, 0.1, 0.1), compression=None)
    return folder


def _deconvolve(folder: Path, cache: Path, out: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLSMFLOW_")}
    env.update(PYTHONPATH=str(SRC), XDG_CACHE_HOME=str(cache), LLSMFLOW_FFTW_WISDOM="off")
    args = [
        "deconvolve", str(folder / "data.ome.tif"), str(folder / out), "--psf", str(folder / "psf.ome.tif"),
        "--psf-geometry", "objective", "--iterations", "3",
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_repeated_deconvolve_reads_the_kernel_from_disk_and_skips_the_heavy_imports(files, tmp_path):
    cache = tmp_path / "cache"
    cold = _deconvolve(files, cache, "cold.tif")
    assert cold["rc"] == 0 and "scipy.ndimage" in cold["heavy"]  # the first call prepares the PSF
    kernels = sorted((cache / "llsmflow" / "psf-kernels").glob("*.npy"))
    assert len(kernels) == 2  # the size check's (geometry declared) and the deconvolution's (auto)
    warm = _deconvolve(files, cache, "warm.tif")
    assert warm == {"rc": 0, "heavy": []}
    # the same result bit for bit, and the kernel is the one prepare_psf makes
    np.testing.assert_array_equal(tifffile.imread(files / "warm.tif"), tifffile.imread(files / "cold.tif"))
    raw = tifffile.imread(files / "psf.ome.tif")
    expected = decon.prepare_psf(raw, (0.2, 0.1, 0.1), VOXEL_UM)
    assert any(np.array_equal(np.load(k), expected) for k in kernels)


def test_kernel_cache_ignores_bad_files_and_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(kernel_cache.PSF_CACHE_ENV, raising=False)
    monkeypatch.setattr(decon_psf, "_PREPARED", {})
    raw = _bead_psf()
    expected = decon.prepare_psf(raw, (0.2, 0.1, 0.1), VOXEL_UM)
    first = decon_psf._prepare_psf_cached(raw, (0.2, 0.1, 0.1), VOXEL_UM)
    np.testing.assert_array_equal(first, expected)
    (path,) = (tmp_path / "llsmflow" / "psf-kernels").glob("*.npy")
    assert path.name == kernel_cache.kernel_path(np.ascontiguousarray(raw), ((0.2, 0.1, 0.1), VOXEL_UM,
                                                                             "auto", "auto")).name  # fmt: skip
    # another voxel size, background or PSF: another file
    for args in (((0.2, 0.1, 0.1), (0.3, 0.1, 0.1), "10.0", "auto"), ((0.25, 0.1, 0.1), VOXEL_UM, "auto", "auto")):
        assert kernel_cache.kernel_path(np.ascontiguousarray(raw), args) != path
    assert kernel_cache.kernel_path(np.ascontiguousarray(_bead_psf(seed=2)), ((0.2, 0.1, 0.1), VOXEL_UM,
                                                                             "auto", "auto")) != path  # fmt: skip
    # damaged or forged files are ignored and replaced by the prepared kernel
    bad = [b"not a numpy file", None, np.full((3, 3, 3), 1 / 27, np.float64), np.ones((3, 3, 3), np.float32),
           np.full((2, 3, 3), 1 / 18, np.float32), np.array([object()], dtype=object)]  # fmt: skip
    for content in bad:
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is None:
            path.write_bytes(path.read_bytes()[:50])  # truncated
        else:
            np.save(path, content, allow_pickle=True)
        monkeypatch.setattr(decon_psf, "_PREPARED", {})
        np.testing.assert_array_equal(decon_psf._prepare_psf_cached(raw, (0.2, 0.1, 0.1), VOXEL_UM), expected)
        np.testing.assert_array_equal(np.load(path), expected)
    # at most _MAX_FILES kernels are kept: the oldest go
    monkeypatch.setattr(kernel_cache, "_MAX_FILES", 2)
    for voxel in (0.21, 0.22, 0.23):
        decon_psf._prepare_psf_cached(raw, (voxel, 0.1, 0.1), VOXEL_UM)
    assert not path.exists() and len(list(path.parent.glob("*.npy"))) == 2
    # off: nothing written, nothing read
    monkeypatch.setenv(kernel_cache.PSF_CACHE_ENV, "off")
    monkeypatch.setattr(decon_psf, "_PREPARED", {})
    np.save(path, np.full((3, 3, 3), 1 / 27, np.float32))
    np.testing.assert_array_equal(decon_psf._prepare_psf_cached(raw, (0.2, 0.1, 0.1), VOXEL_UM), expected)
    np.testing.assert_array_equal(np.load(path), np.full((3, 3, 3), 1 / 27, np.float32))
    assert not kernel_cache._enabled() and kernel_cache.kernel_path(raw, ()) is None
    # an unwritable cache directory: the kernel is prepared as before
    monkeypatch.delenv(kernel_cache.PSF_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("a file, not a directory")
    monkeypatch.setattr(decon_psf, "_PREPARED", {})
    np.testing.assert_array_equal(decon_psf._prepare_psf_cached(raw, (0.2, 0.1, 0.1), VOXEL_UM), expected)


@pytest.mark.parametrize("shape", [(40, 48, 50), (9, 48, 45)])  # the second folds the kernel along z
def test_pruned_otf_is_as_accurate_as_the_fft_of_the_placed_kernel(shape, monkeypatch):
    kernel = decon.prepare_psf(_bead_psf(), (0.2, 0.1, 0.1), VOXEL_UM)
    targets, small = _folded(kernel.astype(np.float64), shape, np.float64)
    placed = np.zeros(shape)
    placed[np.ix_(*targets)] = small
    reference = np.fft.rfftn(placed) / math.prod(shape)  # float64
    errors = {}
    for pruned in (True, False):
        monkeypatch.setattr(decon_engine, "_PRUNED_SPECTRUM", pruned)
        engine = decon_engine._Engine(kernel, shape, np, 1, method="rl")
        try:
            errors[pruned] = float(np.abs(engine.otf - reference).max() / np.abs(reference).max())
            np.testing.assert_array_equal(engine.otf_bp, np.conj(engine.otf))
        finally:
            engine.close()
    assert errors[False] < 1e-6
    assert errors[True] <= max(1.2 * errors[False], 2e-7)
