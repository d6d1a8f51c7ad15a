"""The fast Wiener–Butterworth path: one WB step from a flat start is a linear filter and needs no OTF, the
back projector's grid (the PSF's plus a margin) sets the padding, its spectrum is a pruned transform, and the
whole stays equal to a plain float64 NumPy implementation of the formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from llsmflow import decon
from llsmflow.decon import engine as decon_engine
from llsmflow.decon.chunks import plan_chunks, reach_shape, wb_kernel_shape
from llsmflow.decon.fft import _Workspace
from llsmflow.decon.otf import _folded, _place_kernel, wb_back_projector
from llsmflow.decon.padding import _reflect_fill


def _scene():
    rng = np.random.default_rng(3)
    obj = np.zeros((20, 40, 36))
    obj[tuple(rng.integers([2, 4, 4], [18, 36, 32], (25, 3)).T)] = rng.uniform(500, 2000, 25)
    z, y, x = np.indices((13, 9, 9)) - np.array([6, 4, 4])[:, None, None, None]
    psf = np.exp(-0.5 * ((z / 2.4) ** 2 + (y / 1.1) ** 2 + (x / 1.1) ** 2))
    psf = (psf / psf.sum()).astype(np.float32)
    raw = rng.poisson(ndimage.convolve(obj, psf.astype(np.float64), mode="constant") + 100).astype(np.uint16)
    return raw, psf


def test_one_wb_step_from_flat_is_the_wb_filter_of_the_data_and_makes_no_otf():
    raw, psf = _scene()
    plan = plan_chunks(raw.shape, psf.shape, None, method="wb")
    engine = decon_engine._Engine(psf, plan.padded_shape, np, 1, method="wb")
    try:
        window_start, region, _ = next(plan.boxes())
        offset = tuple(r.start - w for r, w in zip(region, window_start, strict=True))
        engine.load(raw, region, 100.0, offset)
        data = np.array(engine.ws.reals[0], dtype=np.float64)
        eps = 1e-6 * data.max()
        out = np.array(engine.iterate(1, eps, "flat"))
        assert engine._otf is None  # one step from a flat start needs only the kernel's sum
    finally:
        engine.close()
    # reference (float64 NumPy FFTs): x1 = max(c · B(d / (c · sum(psf))), 0) = max(B d / sum(psf), 0)
    kernel = np.empty(plan.padded_shape)
    _place_kernel(kernel, wb_back_projector(psf).astype(np.float64))
    spectrum = np.fft.rfftn(data) * np.fft.rfftn(kernel)
    ref = np.clip(np.fft.irfftn(spectrum, s=data.shape, axes=(0, 1, 2)) / float(psf.sum(dtype=np.float64)), 0, None)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * ref.max())
    # the public call gives the same core
    core = decon.wiener_butterworth(raw, psf, iterations=1, background=100.0, initial="flat", threads=1)
    inner = tuple(slice(o, o + n) for o, n in zip(offset, raw.shape, strict=True))
    np.testing.assert_allclose(core, ref[inner], rtol=0, atol=2e-5 * ref.max())


def test_otf_made_on_first_use_equals_the_eager_one(monkeypatch):
    raw, psf = _scene()
    shape = (32, 48, 48)
    wb = decon_engine._Engine(psf, shape, np, 1, method="wb")
    rl = decon_engine._Engine(psf, shape, np, 1, method="rl")  # RL needs the OTF at once (its adjoint)
    try:
        assert wb._otf is None and rl._otf is not None
        np.testing.assert_array_equal(wb.otf, rl.otf)
        # two WB steps from flat equal the general path (which transforms the constant estimate)
        fast = decon.wiener_butterworth(raw, psf, iterations=2, background=100.0, initial="flat")
        monkeypatch.setattr(decon_engine, "_FLAT_FIRST_STEP", False)
        general = decon.wiener_butterworth(raw, psf, iterations=2, background=100.0, initial="flat")
    finally:
        wb.close()
        rl.close()
    np.testing.assert_allclose(fast, general, rtol=0, atol=2e-5 * float(general.max()))


def test_wb_pads_on_its_back_projector_grid():
    psf_shape = (19, 27, 23)
    kernel = wb_back_projector(np.pad(np.ones((1, 1, 1), np.float32), [(9, 9), (13, 13), (11, 11)]))
    assert kernel.shape == wb_kernel_shape(psf_shape) == (27, 35, 31) == reach_shape(psf_shape, "wb")
    # measured case of bench/bench_decon_quality.py: 96x320x288 instead of 100x320x320 with a 2n-1 grid
    assert plan_chunks((64, 256, 256), psf_shape, None, method="wb").padded_shape == (96, 320, 288)
    assert plan_chunks((64, 256, 256), psf_shape, None, method="rl").padded_shape == (84, 288, 280)


def _plain_wb(raw, psf, background, iterations, initial):
    """Wiener–Butterworth in float64 NumPy, straight from the formulas (reference for the optimised engine):
    pad the background-subtracted data by reflection to the plan's FFT window, x <- max(x · B(d / max(H x,
    eps)), 0) with H and B the FFTs of the PSF and of the back projector placed at the window's origin."""
    plan = plan_chunks(raw.shape, psf.shape, None, method="wb")
    window_start, region, _ = next(plan.boxes())
    offset = [r.start - w for r, w in zip(region, window_start, strict=True)]
    pads = [(o, m - o - n) for o, m, n in zip(offset, plan.padded_shape, raw.shape, strict=True)]
    data = np.pad(np.clip(raw.astype(np.float64) - background, 0, None), pads, mode="reflect")
    spectra = []
    for kernel in (psf, wb_back_projector(psf)):
        placed = np.empty(plan.padded_shape)
        _place_kernel(placed, kernel.astype(np.float64))
        spectra.append(np.fft.rfftn(placed))
    otf, back = spectra

    def convolve(a, spectrum):
        return np.fft.irfftn(np.fft.rfftn(a) * spectrum, s=a.shape, axes=(0, 1, 2))

    eps = 1e-6 * data.max()
    x = np.full_like(data, data.mean()) if initial == "flat" else data.copy()
    for _ in range(iterations):
        x = np.clip(x * convolve(data / np.maximum(convolve(x, otf), eps), back), 0, None)
    return x[tuple(slice(o, o + n) for o, n in zip(offset, raw.shape, strict=True))]


def test_wb_equals_a_plain_numpy_implementation_and_the_pruned_spectrum_the_fft(monkeypatch):
    """The optimised WB (pruned back-projector spectrum, fused first step, float32) against the formulas in
    float64 NumPy, and against itself with the back projector's spectrum by an FFT of the placed kernel."""
    raw, psf = _scene()
    for iterations, initial in ((1, "flat"), (3, "flat"), (2, "data")):
        ours = decon.wiener_butterworth(raw, psf, iterations=iterations, background=100.0, initial=initial)
        ref = _plain_wb(raw, psf, 100.0, iterations, initial)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-6 * ref.max())  # measured: <= 3e-7
        monkeypatch.setattr(decon_engine, "_PRUNED_SPECTRUM", False)
        by_fft = decon.wiener_butterworth(raw, psf, iterations=iterations, background=100.0, initial=initial)
        monkeypatch.setattr(decon_engine, "_PRUNED_SPECTRUM", True)
        np.testing.assert_allclose(ours, by_fft, rtol=0, atol=5e-6 * by_fft.max())


@pytest.mark.parametrize("grid", [(32, 48, 48), (9, 20, 17), (27, 35, 31), (40, 51, 45)])
def test_pruned_kernel_spectrum_equals_the_fft_of_the_placed_kernel(grid):
    """Grids larger than the kernel, smaller along some axes (the kernel folds onto them), odd lengths."""
    psf = wb_back_projector(_scene()[1])  # 21x17x17
    ws = _Workspace(grid, np, 2, 1, transforms=1)  # FFTW_ESTIMATE: nothing to measure
    targets, small = _folded(psf, grid, np.float32)
    out = ws.empty(ws.spec_shape, np.complex64)
    if not ws.fftw:  # without pyFFTW the engine falls back on the FFT of the placed kernel
        assert not ws.kernel_spectrum(targets, small, out)
        return
    assert ws.kernel_spectrum(targets, small, out)
    placed = np.empty(grid)
    _place_kernel(placed, psf.astype(np.float64))
    ref = np.fft.rfftn(placed)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * np.abs(ref).max())  # measured: <= 2e-7


def test_reflect_fill_by_slices_matches_numpy_pad():
    rng = np.random.default_rng(5)
    for _ in range(40):
        block = rng.random(tuple(rng.integers(2, 7, 3))).astype(np.float32)
        pads = [tuple(int(p) for p in rng.integers(0, n, 2)) for n in block.shape]  # shorter than the block
        arr = np.full(tuple(n + a + b for n, (a, b) in zip(block.shape, pads, strict=True)), np.nan, np.float32)
        inner = tuple(slice(a, a + n) for (a, _), n in zip(pads, block.shape, strict=True))
        arr[inner] = block
        _reflect_fill(arr, inner)
        np.testing.assert_array_equal(arr, np.pad(block, pads, mode="reflect"))
