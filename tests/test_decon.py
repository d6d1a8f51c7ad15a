"""Tests of llsmflow.decon: PSF preparation, Richardson–Lucy on synthetic beads, agreement with scikit-image,
the real LLSM bead PSF, and backend detection.

Fixtures are small (48x64x64 at most) so the whole module runs in a few seconds on two cores.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from llsmflow import decon
from llsmflow.errors import LlsmflowError

from .conftest import REAL_DATA

REAL_PSF = REAL_DATA / "pycudadecon_psf.tif"
REAL_PSF_VOXEL_UM = (0.1, 0.1, 0.1)  # dzpsf = dxpsf = 0.1 µm (field notes)

VOXEL_UM = (0.3, 0.1, 0.1)  # synthetic data voxel size (dz, dy, dx)
SIGMA_VOX = (3.6, 1.2, 1.2)  # anisotropic Gaussian PSF: sigma_z = 3x sigma_xy, in voxels
OFFSET = 100.0  # camera offset of the synthetic beads
BEADS = [(16, 20, 20), (16, 44, 40), (12, 30, 46), (20, 46, 18)]
ISOLATED = BEADS[0]


def gaussian_psf(shape, sigma_vox, centre=None) -> np.ndarray:
    grid = np.indices(shape).astype(np.float64)
    centre = [(n - 1) / 2 for n in shape] if centre is None else centre
    r2 = sum(((grid[i] - centre[i]) / sigma_vox[i]) ** 2 for i in range(3))
    psf = np.exp(-0.5 * r2)
    return psf / psf.sum()


def fwhm(profile) -> float:
    """Full width at half maximum (in samples) of a 1-D peak, crossings found by linear interpolation."""
    p = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(p))
    half = p[i] / 2
    left = i
    while left > 0 and p[left - 1] > half:
        left -= 1
    right = i
    while right < p.size - 1 and p[right + 1] > half:
        right += 1
    assert 0 < left and right < p.size - 1, "peak not inside the profile"
    x_left = left - (p[left] - half) / (p[left] - p[left - 1])
    x_right = right + (p[right] - half) / (p[right] - p[right + 1])
    return x_right - x_left


def profiles_through_peak(vol, near, radius=3):
    """z and x profiles through the brightest voxel within ``radius`` voxels of ``near``."""
    box = tuple(slice(max(c - radius, 0), c + radius + 1) for c in near)
    local = np.unravel_index(np.argmax(vol[box]), vol[box].shape)
    z, y, x = (b.start + o for b, o in zip(box, local, strict=True))
    return vol[:, y, x], vol[z, y, :], vol[z, :, x]


@pytest.fixture(scope="module")
def beads():
    """Point sources blurred by an anisotropic Gaussian, with offset 100 and Poisson noise (uint16)."""
    shape = (32, 64, 64)
    truth = np.zeros(shape)
    for pos in BEADS:
        truth[pos] = 1.0
    psf = gaussian_psf((25, 11, 11), SIGMA_VOX)
    blurred = ndimage.convolve(truth, psf, mode="constant") * 2e5  # peak ~2400 counts above the offset
    rng = np.random.default_rng(0)
    raw = rng.poisson(blurred + OFFSET).astype(np.uint16)
    return {"truth": truth, "psf": psf, "blurred": blurred, "raw": raw}


# ------------------------------------------------------------------------------------------- prepare_psf


def test_prepare_psf_is_centred_normalised_float32():
    psf = gaussian_psf((21, 15, 15), (3.0, 1.5, 1.5))
    out = decon.prepare_psf(psf, (0.1, 0.1, 0.1), (0.1, 0.1, 0.1))
    assert out.dtype == np.float32
    assert all(n % 2 == 1 for n in out.shape)
    assert np.unravel_index(np.argmax(out), out.shape) == tuple(n // 2 for n in out.shape)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    centre = np.array(out.shape) // 2
    # a symmetric PSF already on its central voxel is unchanged (apart from normalisation)
    crop = tuple(slice(c - h, c + h + 1) for c, h in zip(centre, (10, 7, 7), strict=True))
    np.testing.assert_allclose(out[crop], psf / psf.sum(), atol=1e-7)


def test_prepare_psf_centres_an_off_centre_peak():
    shape = (31, 41, 33)
    centre_in = (10.0, 26.0, 8.0)
    psf = gaussian_psf(shape, (3.0, 1.5, 1.5), centre=centre_in) * 1e5 + 100.0
    assert np.unravel_index(np.argmax(psf), shape) != tuple(n // 2 for n in shape)
    out = decon.prepare_psf(psf, (0.1, 0.1, 0.1), (0.1, 0.1, 0.1))
    centre = tuple(n // 2 for n in out.shape)
    assert np.unravel_index(np.argmax(out), out.shape) == centre
    np.testing.assert_allclose(ndimage.center_of_mass(out), centre, atol=0.05)
    # the profile shape survives the move
    assert fwhm(out[:, centre[1], centre[2]]) == pytest.approx(2.3548 * 3.0, rel=0.02)


def test_prepare_psf_resampling_preserves_physical_fwhm():
    # sigma_z = 0.4 µm, sigma_xy = 0.15 µm, sampled at 0.1 µm; the data has a 0.2 µm z step
    psf = gaussian_psf((81, 41, 41), (4.0, 1.5, 1.5)) * 1e4 + 100.0
    fwhm_z_um = 2.3548 * 0.4
    fwhm_xy_um = 2.3548 * 0.15
    for data_voxel in [(0.2, 0.1, 0.1), (0.2613, 0.104, 0.104)]:
        out = decon.prepare_psf(psf, (0.1, 0.1, 0.1), data_voxel)
        c = tuple(n // 2 for n in out.shape)
        assert np.unravel_index(np.argmax(out), out.shape) == c
        assert out.sum() == pytest.approx(1.0, abs=1e-5)
        assert fwhm(out[:, c[1], c[2]]) * data_voxel[0] == pytest.approx(fwhm_z_um, rel=0.03)
        assert fwhm(out[c[0], c[1], :]) * data_voxel[2] == pytest.approx(fwhm_xy_um, rel=0.03)
        assert fwhm(out[c[0], :, c[2]]) * data_voxel[1] == pytest.approx(fwhm_xy_um, rel=0.03)
    # the z extent shrinks with the coarser step: about half as many planes at 0.2 µm
    coarse = decon.prepare_psf(psf, (0.1, 0.1, 0.1), (0.2, 0.1, 0.1))
    fine = decon.prepare_psf(psf, (0.1, 0.1, 0.1), (0.1, 0.1, 0.1))
    assert abs(coarse.shape[0] - (fine.shape[0] + 1) / 2) <= 2


def test_prepare_psf_removes_background():
    psf = gaussian_psf((21, 21, 21), (3.0, 1.5, 1.5)) * 1e5
    rng = np.random.default_rng(3)
    noisy = rng.poisson(psf + 500.0).astype(np.uint16)
    out = decon.prepare_psf(noisy, (0.1,) * 3, (0.1,) * 3)
    assert out.min() >= 0
    c = tuple(n // 2 for n in out.shape)
    expected = psf[10, 10, 10] / psf.sum()
    assert out[c] == pytest.approx(expected, rel=0.15)  # one noisy voxel (Poisson, ~4 %)
    # L1 distance to the true normalised PSF: small; clamping alone would leave the noise floor in
    true = psf / psf.sum()
    true_crop = true[tuple(slice(10 - ci, 10 + ci + 1) for ci in c)]
    assert np.abs(out - true_crop).sum() + (1 - true_crop.sum()) < 0.35  # measured 0.26
    naive = np.clip(noisy - np.median(noisy[0]), 0, None).astype(np.float64)
    assert np.abs(naive / naive.sum() - true).sum() > 0.6  # measured 0.87
    # an explicit background works too
    out_explicit = decon.prepare_psf(psf + 250.0, (0.1,) * 3, (0.1,) * 3, background=250.0)
    np.testing.assert_allclose(out_explicit.sum(), 1.0, atol=1e-5)
    assert out_explicit[tuple(n // 2 for n in out_explicit.shape)] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((21, 21, 21), 100.0), "no signal above background"),
        (np.random.default_rng(1).poisson(100, (21, 21, 21)).astype(float), "no signal above background"),
        (np.ones((21, 21)), "expected a 3-D"),
        (np.where(np.arange(9261).reshape(21, 21, 21) == 4000, np.nan, 1.0), "NaN or infinite"),
        (np.where(np.arange(9261).reshape(21, 21, 21) == 4000, np.inf, 1.0), "NaN or infinite"),
    ],
)
def test_prepare_psf_rejects_bad_input(bad, match):
    with pytest.raises(LlsmflowError, match=match):
        decon.prepare_psf(bad, (0.1,) * 3, (0.1,) * 3)


def test_prepare_psf_rejects_bad_parameters():
    psf = gaussian_psf((21, 15, 15), (3.0, 1.5, 1.5))
    with pytest.raises(LlsmflowError, match="PSF voxel size"):
        decon.prepare_psf(psf, (0.1, 0.0, 0.1), (0.1,) * 3)
    with pytest.raises(LlsmflowError, match="data voxel size"):
        decon.prepare_psf(psf, (0.1,) * 3, None)
    with pytest.raises(LlsmflowError, match="PSF background"):
        decon.prepare_psf(psf, (0.1,) * 3, (0.1,) * 3, background="median")


@pytest.fixture(scope="module")
def real_psf():
    if not REAL_PSF.is_file():
        pytest.skip(f"{REAL_PSF} not present")
    data = tifffile.imread(REAL_PSF)
    assert data.shape == (61, 128, 128) and data.dtype == np.uint16
    return data


def test_prepare_psf_on_real_llsm_psf(real_psf):
    out = decon.prepare_psf(real_psf, REAL_PSF_VOXEL_UM, REAL_PSF_VOXEL_UM)
    c = tuple(n // 2 for n in out.shape)
    assert out.dtype == np.float32 and all(n % 2 == 1 for n in out.shape)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(out), out.shape) == c
    # the whole kernel (not only its peak) sits on the centre: the noise floor was not kept
    np.testing.assert_allclose(ndimage.center_of_mass(out), c, atol=1.0)
    fwhm_z_um = fwhm(out[:, c[1], c[2]]) * 0.1
    fwhm_x_um = fwhm(out[c[0], c[1], :]) * 0.1
    fwhm_y_um = fwhm(out[c[0], :, c[2]]) * 0.1
    assert 0.2 < fwhm_x_um < 0.6 and 0.2 < fwhm_y_um < 0.6
    assert fwhm_z_um > 1.5 * max(fwhm_x_um, fwhm_y_um)  # LLSM PSFs are elongated in z
    # most of the mass lies within +-1.5 µm axially and +-1 µm laterally of the centre
    box = tuple(slice(max(ci - h, 0), ci + h + 1) for ci, h in zip(c, (15, 10, 10), strict=True))
    assert out[box].sum() > 0.9

    # resampled to a deskewed LLSM data step, the axial FWHM in µm is kept
    data_voxel = (0.5 * np.sin(np.deg2rad(31.5)), 0.104, 0.104)
    res = decon.prepare_psf(real_psf, REAL_PSF_VOXEL_UM, data_voxel)
    rc = tuple(n // 2 for n in res.shape)
    assert np.unravel_index(np.argmax(res), res.shape) == rc
    assert res.sum() == pytest.approx(1.0, abs=1e-5)
    assert fwhm(res[:, rc[1], rc[2]]) * data_voxel[0] == pytest.approx(fwhm_z_um, rel=0.1)


# -------------------------------------------------------------------------------------------- psf_to_otf


def test_psf_to_otf_matches_cyclic_convolution():
    rng = np.random.default_rng(2)
    vol = rng.random((12, 16, 15)).astype(np.float32)
    psf = decon.prepare_psf(gaussian_psf((7, 5, 5), (1.5, 1.0, 0.8)), (0.1,) * 3, (0.1,) * 3)
    otf = decon.psf_to_otf(psf, vol.shape)
    assert otf.shape == (12, 16, 15 // 2 + 1) and otf.dtype == np.complex64
    assert otf[0, 0, 0].real == pytest.approx(1.0, abs=1e-5)  # sum of the PSF
    via_otf = np.fft.irfftn(np.fft.rfftn(vol) * otf, s=vol.shape, axes=(0, 1, 2))
    direct = ndimage.convolve(vol.astype(np.float64), psf.astype(np.float64), mode="wrap")
    np.testing.assert_allclose(via_otf, direct, atol=1e-5)
    # a PSF larger than the volume is folded, not cut: its sum is kept
    big = decon.prepare_psf(gaussian_psf((31, 5, 5), (6.0, 1.0, 1.0)), (0.1,) * 3, (0.1,) * 3)
    assert decon.psf_to_otf(big, (8, 16, 16))[0, 0, 0].real == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------- richardson_lucy


def test_rl_sharpens_beads_and_approaches_truth(beads):
    kernel = decon.prepare_psf(beads["psf"], VOXEL_UM, VOXEL_UM)
    raw = beads["raw"]
    out = decon.richardson_lucy(raw, kernel, iterations=10)
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert out.min() >= 0 and np.all(np.isfinite(out))

    bg = decon.resolve_background(raw)
    assert bg == pytest.approx(OFFSET, abs=3)
    raw_z, raw_x, raw_y = profiles_through_peak(raw.astype(np.float64) - bg, ISOLATED)
    dec_z, dec_x, dec_y = profiles_through_peak(out, ISOLATED)
    assert fwhm(raw_z) == pytest.approx(2.3548 * SIGMA_VOX[0], rel=0.15)  # sanity of the fixture
    assert fwhm(dec_z) < 0.8 * fwhm(raw_z)  # measured ~0.55
    assert fwhm(dec_x) < 0.8 * fwhm(raw_x)  # measured ~0.50
    assert fwhm(dec_y) < 0.8 * fwhm(raw_y)

    # closer to the ground-truth object (points blurred by a narrow 1-voxel Gaussian)
    truth = ndimage.gaussian_filter(beads["truth"], 1.0)
    r_raw = np.corrcoef(raw.ravel(), truth.ravel())[0, 1]
    r_dec = np.corrcoef(out.ravel(), truth.ravel())[0, 1]
    assert r_dec > r_raw + 0.05  # measured 0.70 -> 0.81

    # flux is conserved (RL keeps the sum of the background-subtracted data)
    flux = np.clip(raw.astype(np.float64) - bg, 0, None).sum()
    assert out.sum() == pytest.approx(flux, rel=0.02)


def test_rl_acceleration_converges_faster(beads):
    kernel = decon.prepare_psf(beads["psf"], VOXEL_UM, VOXEL_UM)
    plain = decon.richardson_lucy(beads["raw"], kernel, iterations=10)
    fast = decon.richardson_lucy(beads["raw"], kernel, iterations=10, acceleration=True)
    assert fast.dtype == np.float32 and fast.min() >= 0 and np.all(np.isfinite(fast))
    fz_plain = fwhm(profiles_through_peak(plain, ISOLATED)[0])
    fz_fast = fwhm(profiles_through_peak(fast, ISOLATED)[0])
    assert fz_fast < 0.95 * fz_plain  # measured 3.9 vs 4.7 voxels


def test_rl_agrees_with_skimage_away_from_border():
    from skimage.restoration import richardson_lucy as skimage_rl

    # a dense random object plus Poisson noise, kept away from the border so that boundary handling
    # (skimage: zeros outside; here: reflect padding) does not matter; background 0
    shape = (48, 64, 64)
    rng = np.random.default_rng(4)
    obj = np.zeros(shape)
    obj[16:32, 16:48, 16:48] = rng.random((16, 32, 32)) ** 8 * 50
    # an asymmetric kernel (tilted like a skewed LLSM PSF, plus an off-axis lobe) so that convolution and
    # correlation differ
    z, y, x = np.indices((25, 11, 11)) - np.array([12, 5, 5])[:, None, None, None]
    psf = np.exp(-0.5 * ((z / 3.6) ** 2 + (y / 1.2) ** 2 + ((x - 0.25 * z) / 1.2) ** 2))
    psf += 0.3 * np.exp(-0.5 * (((z - 6) / 1.5) ** 2 + ((y - 2) / 1.0) ** 2 + (x / 1.0) ** 2))
    image = rng.poisson(ndimage.convolve(obj, psf, mode="constant") * 100).astype(np.float64)
    kernel = decon.prepare_psf(psf, VOXEL_UM, VOXEL_UM)

    ref = skimage_rl(image, kernel.astype(np.float64), num_iter=10, clip=False, filter_epsilon=1e-12)
    ours = decon.richardson_lucy(image, kernel, iterations=10, background=0, initial="flat")
    interior = (slice(12, -12), slice(5, -5), slice(5, -5))  # PSF half-size from each face
    rel_interior = np.abs(ours[interior] - ref[interior]).max() / np.abs(ref[interior]).max()
    rel_all = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel_interior < 1e-3  # measured ~1e-5 (float32 FFTs vs float64 convolutions)
    assert rel_all < 1e-2
    # the cudaDecon start (the data itself) is a different, valid iteration: not the same numbers
    from_data = decon.richardson_lucy(image, kernel, iterations=10, background=0)
    assert np.abs(from_data - ref).max() / ref.max() > 1e-2


def test_rl_odd_shapes_progress_and_zero_volume():
    kernel = decon.prepare_psf(gaussian_psf((9, 5, 5), (2.0, 1.0, 1.0)), VOXEL_UM, VOXEL_UM)
    rng = np.random.default_rng(5)
    vol = rng.poisson(50, (17, 29, 31)).astype(np.float32)
    calls = []
    out = decon.richardson_lucy(vol, kernel, iterations=3, progress=lambda i, n: calls.append((i, n)))
    assert out.shape == vol.shape and out.dtype == np.float32
    assert calls == [(1, 3), (2, 3), (3, 3)]
    zeros = decon.richardson_lucy(np.zeros((5, 8, 9), np.uint16), kernel, iterations=2)
    assert zeros.shape == (5, 8, 9) and np.all(zeros == 0)


def test_background_auto_ignores_deskew_zeros():
    vol = np.zeros((4, 10, 10), dtype=np.uint16)
    vol[-1, :, 5:] = 120  # half of the last plane is zero-filled deskew padding
    vol[-1, 0, 5] = 500
    assert decon.resolve_background(vol) == pytest.approx(120.0)
    assert decon.resolve_background(np.zeros((3, 4, 4))) == 0.0
    assert decon.resolve_background(vol, 80) == 80.0
    # the subtraction is clamped at zero
    kernel = np.zeros((1, 1, 1), np.float32)
    kernel[0, 0, 0] = 1
    out = decon.richardson_lucy(vol, kernel, iterations=1)
    np.testing.assert_allclose(out, np.clip(vol.astype(np.float32) - 120, 0, None), atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iterations": 0}, "iterations 0"),
        ({"iterations": 2.5}, "iterations 2.5"),
        ({"background": "median"}, "background 'median'"),
        ({"background": -5}, "background -5"),
        ({"initial": "random"}, "initial estimate"),
    ],
)
def test_rl_rejects_bad_parameters(kwargs, match):
    kernel = np.ones((1, 1, 1), np.float32)
    with pytest.raises(LlsmflowError, match=match):
        decon.richardson_lucy(np.ones((4, 4, 4)), kernel, **kwargs)


def test_rl_rejects_bad_volumes():
    kernel = np.ones((1, 1, 1), np.float32)
    with pytest.raises(LlsmflowError, match="expected a 3-D"):
        decon.richardson_lucy(np.ones((4, 4)), kernel)
    with pytest.raises(LlsmflowError, match="NaN or infinite"):
        decon.richardson_lucy(np.full((4, 4, 4), np.nan), kernel)


# ------------------------------------------------------------------------------------------------ backends


def _gpu_present() -> bool:
    return decon._cuda_device_count() > 0


def test_available_backends_here():
    found = decon.available_backends()
    assert set(found) == {"cpu", "cupy", "pycudadecon"}
    assert found["cpu"] == "available"
    assert decon.available_backends() == found  # cached, stable
    if _gpu_present():
        pytest.skip("a CUDA device is present: the GPU backends may legitimately be available")
    for name in ("cupy", "pycudadecon"):
        assert found[name] != "available" and found[name]  # a reason, not a crash
    assert decon.choose_backend("auto") == "cpu"
    assert decon.choose_backend("cpu") == "cpu"
    with pytest.raises(LlsmflowError, match="backend 'cupy' is not available"):
        decon.choose_backend("cupy")
    with pytest.raises(LlsmflowError, match="backend 'pycudadecon' is not available"):
        decon.choose_backend("pycudadecon")


def test_pycudadecon_check_never_warns_or_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = decon._check_pycudadecon()
    assert isinstance(reason, str) and reason


def test_choose_backend_rejects_unknown_name():
    with pytest.raises(LlsmflowError, match="backend 'opencl' is not known"):
        decon.choose_backend("opencl")


# ----------------------------------------------------------------------------------------------- deconvolve


def test_deconvolve_with_real_psf_on_cpu(real_psf):
    # beads blurred by the real PSF resampled to the data grid, then deconvolved from the raw PSF stack
    data_voxel = (0.2, 0.1, 0.1)
    kernel = decon.prepare_psf(real_psf, REAL_PSF_VOXEL_UM, data_voxel).astype(np.float64)
    shape = (32, 64, 64)
    truth = np.zeros(shape)
    for pos in BEADS:
        truth[pos] = 1.0
    rng = np.random.default_rng(6)
    raw = rng.poisson(ndimage.convolve(truth, kernel, mode="constant") * 2e5 + OFFSET).astype(np.uint16)
    calls = []
    result = decon.deconvolve(
        raw,
        real_psf,
        data_voxel,
        REAL_PSF_VOXEL_UM,
        iterations=10,
        backend="auto",
        progress=lambda i, n: calls.append(i),
    )
    assert isinstance(result, decon.DeconResult)
    assert result.backend == ("cpu" if not _gpu_present() else result.backend)
    assert result.iterations == 10 and calls == list(range(1, 11))
    assert result.background == pytest.approx(OFFSET, abs=3)
    assert result.seconds > 0
    assert result.data.shape == shape and result.data.dtype == np.float32
    raw_z, raw_x, _ = profiles_through_peak(raw.astype(np.float64) - OFFSET, ISOLATED)
    dec_z, dec_x, _ = profiles_through_peak(result.data, ISOLATED)
    assert fwhm(dec_z) < 0.8 * fwhm(raw_z)
    assert fwhm(dec_x) < 0.8 * fwhm(raw_x)


def test_deconvolve_rejects_unimplemented_or_unknown_method(beads):
    args = (beads["raw"], beads["psf"], VOXEL_UM, VOXEL_UM)
    with pytest.raises(LlsmflowError, match="not implemented yet"):
        decon.deconvolve(*args, method="wb")
    with pytest.raises(LlsmflowError, match="method 'mystery' is not known"):
        decon.deconvolve(*args, method="mystery")
    with pytest.raises(LlsmflowError, match="backend 'opencl' is not known"):
        decon.deconvolve(*args, backend="opencl")


@pytest.mark.skipif(decon.available_backends()["cupy"] != "available", reason="needs CuPy and a CUDA GPU")
def test_cupy_matches_numpy(beads):
    import cupy

    kernel = decon.prepare_psf(beads["psf"], VOXEL_UM, VOXEL_UM)
    for acceleration in (False, True):
        cpu = decon.richardson_lucy(beads["raw"], kernel, iterations=10, acceleration=acceleration)
        gpu = decon.richardson_lucy(beads["raw"], kernel, iterations=10, acceleration=acceleration, xp=cupy)
        assert isinstance(gpu, np.ndarray) and gpu.dtype == np.float32
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4 * float(cpu.max()))
    result = decon.deconvolve(beads["raw"], beads["psf"], VOXEL_UM, VOXEL_UM, backend="cupy")
    assert result.backend == "cupy"
