"""A deconvolution that runs out of GPU memory retries in smaller chunks, then on the CPU, and says so in the
step's provenance record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llsmflow import decon
from llsmflow.decon import api as decon_api
from llsmflow.decon import backends as decon_backends
from llsmflow.provenance import StepRecorder


def _volume_and_psf():
    rng = np.random.default_rng(3)
    volume = rng.poisson(20, size=(24, 64, 64)).astype(np.float32)
    volume[12, 32, 32] += 5000
    volume[8, 20, 40] += 3000
    z, y, x = np.mgrid[:15, :15, :15].astype(np.float32)
    psf = 1000 * np.exp(-((z - 7) ** 2) / 8 - ((y - 7) ** 2 + (x - 7) ** 2) / 2) + 10
    return volume, psf


VOXEL = (0.2, 0.1, 0.1)


@pytest.fixture
def small_gpu(monkeypatch):
    """A stand-in GPU backend with little memory: 'cupy' reports available, and its runs raise MemoryError
    (what CuPy's OutOfMemoryError is) when a chunk's working set exceeds ``limit`` bytes; otherwise they run
    on the CPU engine.

    This stands in for a real GPU only because none is present on the machine that runs these tests; the
    GPU-only test below forces a real CuPy out-of-memory error where a GPU exists.
    """
    state = {"limit": 0, "attempts": []}
    real = decon_api._deconvolve_on

    def deconvolve_on(name, volume, kernel, plan, *args, **kwargs):
        state["attempts"].append((name, plan.count, plan.bytes))
        if name == "cupy":
            if plan.bytes > state["limit"] and state.get("bare"):
                raise MemoryError()  # CuPy's pool can raise without a message
            if plan.bytes > state["limit"]:
                raise MemoryError(
                    f"Out of memory allocating {plan.bytes:,} bytes (allocated so far: 0 bytes)."
                )
            name = "cpu"
        return real(name, volume, kernel, plan, *args, **kwargs)

    detected = dict(decon.available_backends(), cupy="available")
    monkeypatch.setattr(decon_backends, "_detect_backends", lambda: tuple(detected.items()))
    monkeypatch.setattr(decon_api, "_deconvolve_on", deconvolve_on)
    return state


def test_out_of_gpu_memory_retries_in_chunks(small_gpu, tmp_path):
    volume, psf = _volume_and_psf()
    whole = decon.deconvolve(volume, psf, VOXEL, VOXEL, iterations=5, backend="cpu")
    single = decon.plan_chunks(volume.shape, whole_kernel_shape(psf), None)
    small_gpu["limit"] = single.bytes // 3  # the whole volume does not fit; a few chunks do
    result = decon.deconvolve(volume, psf, VOXEL, VOXEL, iterations=5, backend="cupy")
    assert result.backend == "cupy" and result.chunks > 1
    assert [a[0] for a in small_gpu["attempts"]] == ["cpu"] + ["cupy"] * (len(small_gpu["attempts"]) - 1)
    assert all(a[2] > small_gpu["limit"] for a in small_gpu["attempts"][1:-1])
    assert len(result.fallbacks) == len(small_gpu["attempts"]) - 2
    assert (
        "ran out of GPU memory in 1 chunk(s)" in result.fallbacks[0] and "retried in" in result.fallbacks[0]
    )
    # chunks with halos: the whole-volume result up to small chunk-border differences
    np.testing.assert_allclose(result.data, whole.data, atol=2e-3 * float(whole.data.max()))
    _assert_recorded(result, tmp_path)


def test_out_of_gpu_memory_falls_back_to_cpu(small_gpu, tmp_path):
    volume, psf = _volume_and_psf()
    small_gpu["limit"] = 0  # nothing fits on this "GPU"
    small_gpu["bare"] = True
    result = decon.deconvolve(volume, psf, VOXEL, VOXEL, iterations=5, backend="cupy")
    assert result.backend == "cpu" and result.chunks == 1
    counts = [a[1] for a in small_gpu["attempts"] if a[0] == "cupy"]
    assert len(counts) == decon.GPU_OOM_RETRIES + 1 and counts == sorted(counts) and counts[-1] > 1
    assert result.fallbacks[-1].endswith("fell back to the CPU")
    assert sum("retried in" in f for f in result.fallbacks) == decon.GPU_OOM_RETRIES
    reference = decon.deconvolve(volume, psf, VOXEL, VOXEL, iterations=5, backend="cpu")
    np.testing.assert_array_equal(result.data, reference.data)
    assert reference.fallbacks == [] and "fallbacks" not in reference.summary()
    _assert_recorded(result, tmp_path)


def test_other_gpu_errors_are_not_retried(small_gpu, monkeypatch):
    """Only memory errors trigger the fallback: a real bug on the GPU must surface, not be hidden by a CPU
    run."""
    volume, psf = _volume_and_psf()

    def broken(name, *args, **kwargs):
        raise RuntimeError("cuFFT internal error")

    monkeypatch.setattr(decon_api, "_deconvolve_on", broken)
    with pytest.raises(RuntimeError, match="cuFFT internal error"):
        decon.deconvolve(volume, psf, VOXEL, VOXEL, iterations=2, backend="cupy")


def whole_kernel_shape(psf):
    return decon.prepare_psf(psf, VOXEL, VOXEL).shape


def _assert_recorded(result, tmp_path):
    """The step record (what the workflow's deconvolve step writes) carries the fallbacks."""
    record = tmp_path / "step.json"
    with StepRecorder(record, "deconvolve") as step:
        step.note(**result.summary())
    notes = json.loads(record.read_text())["notes"]
    assert notes["backend"] == result.backend and notes["fallbacks"] == result.fallbacks


def _cupy_gpu():
    status = decon.available_backends()["cupy"]
    return status == "available", status


@pytest.mark.skipif(not _cupy_gpu()[0], reason=f"needs CuPy and a CUDA GPU: {_cupy_gpu()[1]}")
def test_real_cupy_out_of_memory_falls_back(tmp_path):
    """A real CuPy OutOfMemoryError, forced by a memory pool limit smaller than the working set."""
    import cupy

    volume, psf = _volume_and_psf()
    volume = np.tile(volume, (2, 4, 4))  # 48 x 256 x 256
    pool = cupy.get_default_memory_pool()
    plan = decon.plan_chunks(volume.shape, whole_kernel_shape(psf), None)
    previous = pool.get_limit()
    pool.set_limit(size=plan.bytes // 3)
    try:
        result = decon.deconvolve(volume, psf, VOXEL, VOXEL, iterations=3, backend="cupy")
    finally:
        pool.set_limit(size=previous)
    assert result.fallbacks and "ran out of GPU memory" in result.fallbacks[0]
    assert result.backend in ("cupy", "cpu")
    reference = decon.deconvolve(volume, psf, VOXEL, VOXEL, iterations=3, backend="cpu")
    np.testing.assert_allclose(result.data, reference.data, atol=2e-3 * float(reference.data.max()))
    _assert_recorded(result, tmp_path)
