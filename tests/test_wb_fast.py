"""The fast Wiener–Butterworth path: one WB step from a flat start is a linear filter and needs no OTF, and the
back projector's grid (the PSF's plus a margin) sets the padding."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from llsmflow import decon
from llsmflow.decon import engine as decon_engine
from llsmflow.decon.chunks import plan_chunks, reach_shape, wb_kernel_shape
from llsmflow.decon.otf import _place_kernel, wb_back_projector


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
