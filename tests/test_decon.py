"""Tests of llsmflow.decon: PSF preparation, the OTF against cudaDecon's, Richardson–Lucy and Wiener–Butterworth
on synthetic beads, agreement with scikit-image, both FFT paths (pyFFTW and scipy.fft), chunked deconvolution
against whole-volume deconvolution, the real LLSM bead PSF, and backend detection.

Fixtures are small (96x64x64 at most) and FFTW plans with FFTW_ESTIMATE (instant) except in the one test of
FFTW_MEASURE, so the whole module runs in about 20 s on two cores.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from llsmflow import decon
from llsmflow.decon import backends as decon_backends
from llsmflow.decon import engine as decon_engine
from llsmflow.decon import fft as decon_fft
from llsmflow.decon import padding as decon_padding
from llsmflow.decon import wisdom as decon_wisdom
from llsmflow.errors import LlsmflowError

from .conftest import REAL_DATA

REAL_PSF = REAL_DATA / "pycudadecon_psf.tif"
REAL_OTF = REAL_DATA / "pycudadecon_otf.tif"
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


@pytest.fixture(autouse=True)
def _fast_fftw_planning(monkeypatch):
    """FFTW_MEASURE costs ~1 s per new shape (more with threads on a busy machine): plan instantly here."""
    monkeypatch.setattr(decon_fft, "FFTW_PLANNER_EFFORT", "FFTW_ESTIMATE")


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


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


def test_radial_otf_of_a_gaussian_matches_the_analytic_otf():
    # a Gaussian PSF's OTF is exp(-2 pi^2 sigma^2 k^2) per axis (k in cycles/voxel), real and positive
    sigma = (2.0, 1.5, 1.5)
    psf = decon.prepare_psf(gaussian_psf((25, 17, 17), sigma), (0.1,) * 3, (0.1,) * 3)
    table = decon.radial_otf(psf, (32, 64))
    assert table.shape == (32, 33) and table[0, 0] == pytest.approx(1.0)
    kz = np.fft.fftfreq(32)[:, None]
    kr = np.arange(33)[None, :] / 64
    expected = np.exp(-2 * np.pi**2 * (sigma[0] ** 2 * kz**2 + sigma[1] ** 2 * kr**2))
    # ring averaging with linear weights smooths the radial profile slightly: ~1e-2 at most
    assert np.abs(table - expected).max() < 0.02
    assert np.abs(table[:, 0] - expected[:, 0]).max() < 1e-3  # kr = 0 is the exact on-axis value
    with pytest.raises(LlsmflowError, match="OTF grid"):
        decon.radial_otf(psf, (32, 1))


def test_radial_otf_agrees_with_cudadecon(real_psf):
    """Our PSF -> OTF path against the OTF cudaDecon made from the same bead PSF.

    ``pycudadecon_otf.tif`` is 65 x 122 float32: 65 rows = lateral frequency kr = 0..64 (a 128-pixel field),
    122 columns = 61 axial frequencies (FFT order) x (real, imaginary) interleaved; value 1 at DC.
    Measured (both |OTF| normalised to DC = 1, over the support |OTF| > 0.02 in either, 578 samples):
    correlation 0.997, max |difference| 0.156, mean 0.030; the support edges agree exactly (kr 41 bins =
    3.2 cycles/µm, kz 6 bins = 0.98 cycles/µm). Ours is ~16 % higher at every non-DC frequency: one scale
    factor (0.84) leaves a mean difference of 0.005. That is the signature of a constant pedestal in
    cudaDecon's PSF (clamped background noise adds to DC only, so after normalising to DC everything else
    drops), which prepare_psf removes on purpose (see _psf_support).
    """
    if not REAL_OTF.is_file():
        pytest.skip(f"{REAL_OTF} not present")
    raw = tifffile.imread(REAL_OTF)
    assert raw.shape == (65, 122) and raw.dtype == np.float32
    theirs = np.abs(raw[:, 0::2] + 1j * raw[:, 1::2]).T.astype(np.float64)  # [kz, kr], 61 x 65
    theirs /= theirs[0, 0]
    kernel = decon.prepare_psf(real_psf, REAL_PSF_VOXEL_UM, REAL_PSF_VOXEL_UM)
    ours = decon.radial_otf(kernel, (61, 128))
    assert ours.shape == theirs.shape

    support = (theirs > 0.02) | (ours > 0.02)
    diff = np.abs(ours - theirs)[support]
    assert correlation(ours[support], theirs[support]) > 0.99  # measured 0.997
    assert diff.max() < 0.2  # measured 0.156
    assert diff.mean() < 0.05  # measured 0.030
    off_dc = support.copy()
    off_dc[0, 0] = False
    scale = (ours[off_dc] @ theirs[off_dc]) / (ours[off_dc] @ ours[off_dc])
    assert 0.75 < scale < 0.95  # measured 0.84
    assert np.abs(scale * ours - theirs)[off_dc].mean() < 0.01  # measured 0.005
    # same support: the last lateral and axial frequencies above 2 %
    for axis_ours, axis_theirs in [(ours[0], theirs[0]), (ours[:30, 0], theirs[:30, 0])]:
        assert abs(np.flatnonzero(axis_ours > 0.02).max() - np.flatnonzero(axis_theirs > 0.02).max()) <= 1


# ------------------------------------------------------------------------------------ padding and FFT sizes


@pytest.mark.parametrize("shape, inner_start", [((9, 12, 7), (3, 0, 2)), ((20, 5, 16), (2, 2, 7))])
def test_reflect_fill_matches_numpy_pad(shape, inner_start):
    rng = np.random.default_rng(7)
    block = rng.random((4, 3, 2)).astype(np.float32)  # pads longer than the block: periodic reflection
    arr = np.full(shape, np.nan, dtype=np.float32)
    inner = tuple(slice(s, s + n) for s, n in zip(inner_start, block.shape, strict=True))
    arr[inner] = block
    decon_padding._reflect_fill(arr, inner)
    pads = [(s, n - s - b) for s, n, b in zip(inner_start, shape, block.shape, strict=True)]
    np.testing.assert_array_equal(arr, np.pad(block, pads, mode="reflect"))
    single = np.zeros((5, 1, 1), np.float32)
    single[2] = 3.0
    decon_padding._reflect_fill(single, (slice(2, 3), slice(0, 1), slice(0, 1)))
    assert np.all(single == 3.0)


def test_fast_lengths_are_7_smooth_and_cheapest():
    def odd_factors(m):
        while m % 2 == 0:
            m //= 2
        count = 0
        for p in (3, 5, 7):
            while m % p == 0:
                m, count = m // p, count + 1
        return count if m == 1 else None

    for n in [1, 11, 13, 84, 97, 127, 138, 211, 266, 1000, 2068]:
        m = decon_padding._fast_length(n)
        assert m >= n and odd_factors(m) is not None
        costs = {k: k * (1 + 0.1 * odd_factors(k)) for k in range(n, 2 * n + 1) if odd_factors(k) is not None}
        assert costs[m] == min(costs.values())
    # 266 -> 280 (2^3*5*7) rather than the shortest 5-smooth 270 (2*3^3*5): measured 8 % faster with FFTW
    assert [decon_padding._fast_length(n) for n in (84, 138, 266, 1000)] == [84, 140, 280, 1024]


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


@pytest.mark.parametrize("acceleration", [False, True])
def test_pyfftw_and_scipy_fft_paths_agree(beads, monkeypatch, acceleration):
    if decon_fft.pyfftw is None:
        pytest.skip("pyFFTW is not installed: only the scipy.fft path exists here")
    kernel = decon.prepare_psf(beads["psf"], VOXEL_UM, VOXEL_UM)
    used = []
    original = decon_fft._Workspace.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        used.append(self.fftw)

    monkeypatch.setattr(decon_fft._Workspace, "__init__", spy)
    fftw = decon.richardson_lucy(beads["raw"], kernel, iterations=5, acceleration=acceleration)
    monkeypatch.setattr(decon_fft, "USE_PYFFTW", False)
    scipy_path = decon.richardson_lucy(beads["raw"], kernel, iterations=5, acceleration=acceleration)
    assert used == [True, False]
    assert scipy_path.dtype == np.float32
    np.testing.assert_allclose(scipy_path, fftw, rtol=0, atol=2e-5 * float(fftw.max()))  # float32 round-off


def test_fftw_measure_plans_and_keeps_wisdom(monkeypatch, tmp_path):
    if decon_fft.pyfftw is None:
        pytest.skip("pyFFTW is not installed")
    kernel = decon.prepare_psf(gaussian_psf((9, 5, 5), (2.0, 1.0, 1.0)), VOXEL_UM, VOXEL_UM)
    vol = np.random.default_rng(8).poisson(50, (13, 21, 18)).astype(np.float32)
    estimate_plan = decon.richardson_lucy(vol, kernel, iterations=3, threads=1)
    wisdom = tmp_path / "cache" / "fftw.wisdom"
    monkeypatch.setenv(decon.FFTW_WISDOM_ENV, str(wisdom))
    monkeypatch.setattr(decon_fft, "FFTW_PLANNER_EFFORT", "FFTW_MEASURE")
    measured = decon.richardson_lucy(vol, kernel, iterations=3, threads=1)
    np.testing.assert_allclose(measured, estimate_plan, rtol=0, atol=1e-5 * float(measured.max()))
    parts = wisdom.read_bytes().split(b"\0")
    assert len(parts) == 3 and b"fftw" in parts[1]  # single-precision wisdom, FFTW's text format
    # a fresh process would import it: it does not raise and keeps planning correct
    monkeypatch.setattr(decon_wisdom, "_read", set())
    decon_fft._load_wisdom()
    assert decon_wisdom._read == {str(wisdom)}


_WISDOM_CHILD = """
import logging, sys
import numpy as np
from llsmflow import decon
logging.basicConfig(level=logging.INFO, format="%(message)s")
rng = np.random.default_rng(3)
grids = np.indices((9, 7, 7)) - np.array([4, 3, 3])[:, None, None, None]
psf = np.exp(-0.5 * ((grids[0] / 2.0) ** 2 + (grids[1] / 1.0) ** 2 + (grids[2] / 1.0) ** 2)).astype(np.float32)
vol = rng.poisson(50, (40, 72, 60)).astype(np.float32)
np.save(sys.argv[1], decon.richardson_lucy(vol, psf / psf.sum(), iterations=4, threads=1))
"""


def test_second_process_takes_plans_from_wisdom_and_gives_identical_output(tmp_path):
    """Jobs of one run share FFTW plans through the wisdom file: the next process measures nothing, and with
    the same plan its output is bit-identical (measured plans of two processes may differ in round-off)."""
    import subprocess
    import sys

    if not decon_fft.USE_PYFFTW or decon_fft.pyfftw is None:
        pytest.skip("pyFFTW is not installed: the scipy.fft fallback has no plans")
    env = dict(os.environ, **{decon.FFTW_WISDOM_ENV: str(tmp_path / "fftw-wisdom")})
    runs = []
    for name in ("first", "second"):
        out = tmp_path / f"{name}.npy"
        done = subprocess.run(
            [sys.executable, "-c", _WISDOM_CHILD, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        runs.append((done.stderr, np.load(out)))
    assert "FFTW planned (" in runs[0][0] and "taken from wisdom" not in runs[0][0]
    assert "taken from wisdom" in runs[1][0] and "FFTW planned (" not in runs[1][0]
    assert np.array_equal(runs[0][1], runs[1][1])


# ------------------------------------------------------------------------------------ Wiener–Butterworth


def test_wb_back_projector_inverts_the_otf_in_band_and_cuts_beyond():
    kernel = decon.prepare_psf(gaussian_psf((25, 11, 11), SIGMA_VOX), VOXEL_UM, VOXEL_UM)
    shape = (64, 64, 64)
    engine = decon_engine._Engine(kernel, shape, np, 1, method="wb")
    try:
        n = np.prod(shape)
        product = (engine.otf * engine.otf_bp).real * n * n  # H * B with the 1/N of each undone
        rl = decon_engine._Engine(kernel, shape, np, 1, method="rl")
        np.testing.assert_allclose(rl.otf_bp, np.conj(rl.otf))  # RL's back projector is the adjoint
        rl.close()
    finally:
        engine.close()
    # cutoff = 1 / FWHM: z FWHM 2.3548 * 3.6 voxels -> kz bin 64 / 8.48 = 7.5; x FWHM 2.83 voxels -> bin 22.6
    assert np.all(product[:4, 0, 0] > 0.9)  # H*B ~ 1 up to about 0.5 of the cutoff (|H| >= 0.57 there)
    assert np.all(product[0, 0, :10] > 0.9)
    assert np.all(product[8:33, 0, 0] < 0.01)  # nothing beyond the cutoff
    assert np.all(product[0, 0, 24:] < 0.01)


def test_wb_reaches_rl10_quality_within_3_iterations(beads):
    kernel = decon.prepare_psf(beads["psf"], VOXEL_UM, VOXEL_UM)
    truth = ndimage.gaussian_filter(beads["truth"], 1.0)
    r_rl = {n: correlation(decon.richardson_lucy(beads["raw"], kernel, iterations=n), truth) for n in (1, 10)}
    wb = [decon.wiener_butterworth(beads["raw"], kernel, iterations=n) for n in (1, 2, 3)]
    r_wb = [correlation(w, truth) for w in wb]
    # measured: RL 1 -> 0.760, RL 10 -> 0.810; WB 1, 2, 3 -> 0.788, 0.815, 0.810
    assert max(r_wb) >= r_rl[10]
    assert r_wb[0] > r_rl[1] + 0.02
    out = wb[2]
    assert out.dtype == np.float32 and out.shape == beads["raw"].shape and out.min() >= 0
    raw_z, raw_x, _ = profiles_through_peak(beads["raw"].astype(np.float64) - OFFSET, ISOLATED)
    dec_z, dec_x, _ = profiles_through_peak(out, ISOLATED)
    assert fwhm(dec_z) < 0.8 * fwhm(raw_z)  # measured 0.61
    assert fwhm(dec_x) < 0.8 * fwhm(raw_x)
    # unlike RL, the unmatched back projector does not conserve the total intensity (documented)
    bg = decon.resolve_background(beads["raw"])
    flux = np.clip(beads["raw"].astype(np.float64) - bg, 0, None).sum()
    assert 1.0 < out.sum() / flux < 5.0  # measured 3.3 on these isolated beads


@pytest.mark.parametrize(
    "kwargs, match",
    [({"alpha": 0}, "alpha 0"), ({"beta": 1.5}, "beta 1.5"), ({"order": 0}, "order 0")],
)
def test_wb_rejects_bad_parameters(kwargs, match):
    with pytest.raises(LlsmflowError, match=match):
        decon.wiener_butterworth(np.ones((4, 4, 4)), np.ones((1, 1, 1), np.float32), **kwargs)


# ------------------------------------------------------------------------------------------------ chunking


def test_plan_chunks_fits_the_budget():
    shape, psf_shape = (96, 64, 64), (15, 27, 23)
    whole = decon.plan_chunks(shape, psf_shape)
    assert whole.count == 1 and whole.core == shape and whole.halo == (0, 0, 0)
    assert whole.bytes == decon.estimate_memory(shape, psf_shape)
    padded = np.prod(decon.padded_shape(shape, psf_shape))
    fftw = decon_fft.USE_PYFFTW and decon_fft.pyfftw is not None
    copies = 7 if fftw else 9  # float32 copies of the padded volume (complex half-spectra count as one)
    assert decon.estimate_memory(shape, psf_shape) == pytest.approx(copies * 4 * padded, rel=0.01)
    assert decon.estimate_memory(shape, psf_shape, acceleration=True) > decon.estimate_memory(
        shape, psf_shape
    )

    z_only = decon.plan_chunks(shape, psf_shape, whole.bytes / 2e9)
    assert z_only.count > 1 and z_only.core[1:] == (64, 64) and z_only.bytes <= whole.bytes / 2
    assert z_only.halo == (14, 0, 0)  # twice the PSF half-size along the split axis only
    both = decon.plan_chunks(shape, psf_shape, whole.bytes / 6e9)
    assert both.core[1] < 64 and both.bytes <= whole.bytes / 6 and both.halo[:2] == (14, 26)
    # every voxel is in exactly one core, and every window covers its core plus the halo
    for plan in (z_only, both):
        seen = np.zeros(shape, int)
        for start, region, core in plan.boxes():
            seen[core] += 1
            for c, w, p, h, n in zip(core, start, plan.padded_shape, plan.halo, shape, strict=True):
                assert w <= c.start - min(h, c.start) and c.stop + min(h, n - c.stop) <= w + p
            assert all(r.start == max(w, 0) and r.stop == min(w + p, n) for r, w, p, n in
                       zip(region, start, plan.padded_shape, shape, strict=True))  # fmt: skip
        assert np.all(seen == 1)

    with pytest.raises(LlsmflowError, match="too small"):
        decon.plan_chunks(shape, psf_shape, 1e-4)
    for bad in (0, -1.0, float("nan"), "lots"):
        with pytest.raises(LlsmflowError, match="max_memory_gb"):
            decon.plan_chunks(shape, psf_shape, bad)
    with pytest.raises(LlsmflowError, match="halo"):
        decon.plan_chunks(shape, psf_shape, 1.0, halo=(1, 2))


class _LazyVolume:
    """An array read only through slicing (like zarr or h5py), recording the largest block read."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.largest = array, array.shape, array.dtype, 0

    def __getitem__(self, index):
        block = np.array(self.array[index])
        self.largest = max(self.largest, block.size)
        return block


@pytest.fixture(scope="module")
def real_scene(real_psf):
    """96x64x64 beads plus a smooth background structure, blurred by the real PSF at 0.2 µm z steps."""
    data_voxel = (0.2, 0.1, 0.1)
    kernel = decon.prepare_psf(real_psf, REAL_PSF_VOXEL_UM, data_voxel)
    rng = np.random.default_rng(9)
    shape = (96, 64, 64)
    obj = ndimage.gaussian_filter(rng.random(shape), 4) * 200
    points = rng.integers(0, np.array(shape)[:, None], (3, 150))
    obj[tuple(points)] += rng.random(150) * 3e4
    raw = rng.poisson(ndimage.convolve(obj, kernel.astype(np.float64), mode="constant") + OFFSET)
    return {"raw": raw.astype(np.uint16), "voxel": data_voxel, "kernel": kernel}


def test_chunked_deconvolution_matches_whole_volume(real_psf, real_scene):
    raw, voxel, kernel = real_scene["raw"], real_scene["voxel"], real_scene["kernel"]
    whole = decon.deconvolve(raw, real_psf, voxel, REAL_PSF_VOXEL_UM, iterations=10)
    budget = decon.estimate_memory(raw.shape, kernel.shape) / 2.2e9
    lazy = _LazyVolume(raw)
    out = np.full(raw.shape, np.nan, np.float32)
    calls = []
    chunked = decon.deconvolve(
        lazy, real_psf, voxel, REAL_PSF_VOXEL_UM, iterations=10, max_memory_gb=budget, out=out,
        progress=lambda i, n: calls.append((i, n)),
    )  # fmt: skip
    assert chunked.chunks > 1 and chunked.data is out and chunked.background == whole.background
    assert calls[-1] == (10 * chunked.chunks, 10 * chunked.chunks) and len(calls) == 10 * chunked.chunks
    plan = decon.plan_chunks(raw.shape, kernel.shape, budget)
    assert lazy.largest <= np.prod(plan.padded_shape)  # never the whole volume at once
    interior = tuple(slice(k // 2, -(k // 2)) for k in kernel.shape)  # a PSF half-size from every face
    peak = float(whole.data[interior].max())
    rel = np.abs(chunked.data[interior] - whole.data[interior]).max() / peak
    assert rel < 1e-3  # measured 3.7e-4 (halo 2 PSF half-sizes; 1.6e-3 with one)
    assert np.abs(chunked.data - whole.data).max() / peak < 1e-2  # border: reflection at another distance
    # splitting y as well (smaller budget) keeps the agreement
    both = decon.deconvolve(
        raw, real_psf, voxel, REAL_PSF_VOXEL_UM, iterations=10, max_memory_gb=budget / 2.5
    )
    assert both.chunks > chunked.chunks
    assert np.abs(both.data[interior] - whole.data[interior]).max() / peak < 1e-3


def test_chunked_acceleration_and_wb_stay_close(real_psf, real_scene):
    raw, voxel, kernel = real_scene["raw"], real_scene["voxel"], real_scene["kernel"]
    interior = tuple(slice(k // 2, -(k // 2)) for k in kernel.shape)
    # acceleration: lambda is computed per chunk (measured 2.1e-3); WB: measured 1.2e-3 (1.8e-4 a whole PSF
    # size from the border: its back projector is twice as wide as the PSF)
    for kwargs, bound in [({"acceleration": True}, 1e-2), ({"method": "wb"}, 3e-3)]:
        whole = decon.deconvolve(raw, real_psf, voxel, REAL_PSF_VOXEL_UM, **kwargs)
        method, acceleration = kwargs.get("method", "rl"), kwargs.get("acceleration", False)
        budget = decon.estimate_memory(raw.shape, kernel.shape, acceleration, method) / 1.5e9
        chunked = decon.deconvolve(raw, real_psf, voxel, REAL_PSF_VOXEL_UM, max_memory_gb=budget, **kwargs)
        assert chunked.chunks > 1
        peak = float(whole.data[interior].max())
        assert np.abs(chunked.data[interior] - whole.data[interior]).max() / peak < bound


def test_chunked_checks_values_and_out_shape(real_psf):
    vol = np.full((40, 16, 16), 100.0)
    vol[30, 5, 5] = np.nan
    with pytest.raises(LlsmflowError, match="NaN or infinite"):
        decon.deconvolve(_LazyVolume(vol), real_psf, (0.2, 0.1, 0.1), REAL_PSF_VOXEL_UM, max_memory_gb=0.02)
    with pytest.raises(LlsmflowError, match="out has shape"):
        decon.deconvolve(
            vol, real_psf, (0.2, 0.1, 0.1), REAL_PSF_VOXEL_UM, out=np.empty((40, 16, 15), np.float32)
        )


# ------------------------------------------------------------------------------------------------ backends


def _gpu_present() -> bool:
    return decon_backends._cuda_device_count() > 0


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
        reason = decon_backends._check_pycudadecon()
    assert isinstance(reason, str) and reason


def test_choose_backend_rejects_unknown_name():
    with pytest.raises(LlsmflowError, match="backend 'opencl' is not known"):
        decon.choose_backend("opencl")


def test_backend_names_import_without_numpy():
    """The Snakefile and the HPC layer read GPU_BACKENDS: that import must not load NumPy, SciPy or FFTW, and
    the package's front door must not load its submodules."""
    import subprocess
    import sys

    code = (
        "import sys; import llsmflow.decon; n = len([m for m in sys.modules if m.startswith('llsmflow.decon.')]); "
        "from llsmflow.decon.backends import GPU_BACKENDS, DEFAULT_ITERATIONS; "
        "print(n, sorted(m for m in ('numpy', 'scipy', 'pyfftw') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split(None, 1) == ["0", "[]\n"]


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


def test_deconvolve_methods_defaults_and_errors(beads):
    args = (beads["raw"], beads["psf"], VOXEL_UM, VOXEL_UM)
    wb = decon.deconvolve(*args, method="wb", threads=1)
    assert wb.method == "wb" and wb.iterations == 3 and wb.chunks == 1 and wb.backend in decon.BACKENDS
    assert wb.data.dtype == np.float32 and wb.data.shape == beads["raw"].shape
    assert decon.deconvolve(*args, iterations=1).method == "rl"
    with pytest.raises(LlsmflowError, match="method 'mystery' is not known"):
        decon.deconvolve(*args, method="mystery")
    with pytest.raises(LlsmflowError, match="backend 'opencl' is not known"):
        decon.deconvolve(*args, backend="opencl")
    with pytest.raises(LlsmflowError, match="threads 0"):
        decon.deconvolve(*args, threads=0)
    with pytest.raises(LlsmflowError, match="iterations 0"):
        decon.deconvolve(*args, iterations=0)


@pytest.mark.skipif(decon.available_backends()["cupy"] != "available", reason="needs CuPy and a CUDA GPU")
def test_cupy_matches_numpy(beads):
    import cupy

    kernel = decon.prepare_psf(beads["psf"], VOXEL_UM, VOXEL_UM)
    tolerance = 1e-4  # of the maximum: float32 FFTs (cuFFT vs FFTW) round differently
    for acceleration in (False, True):
        cpu = decon.richardson_lucy(beads["raw"], kernel, iterations=10, acceleration=acceleration)
        gpu = decon.richardson_lucy(beads["raw"], kernel, iterations=10, acceleration=acceleration, xp=cupy)
        assert isinstance(gpu, np.ndarray) and gpu.dtype == np.float32
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=tolerance * float(cpu.max()))
    cpu = decon.wiener_butterworth(beads["raw"], kernel)
    gpu = decon.wiener_butterworth(beads["raw"], kernel, xp=cupy)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=tolerance * float(cpu.max()))
    args = (beads["raw"], beads["psf"], VOXEL_UM, VOXEL_UM)
    result = decon.deconvolve(*args, backend="cupy")
    assert result.backend == "cupy"
    budget = decon.estimate_memory(beads["raw"].shape, kernel.shape) / 2.2e9
    chunked = decon.deconvolve(*args, backend="cupy", max_memory_gb=budget)
    on_cpu = decon.deconvolve(*args, backend="cpu", max_memory_gb=budget)
    assert chunked.chunks > 1
    np.testing.assert_allclose(chunked.data, on_cpu.data, rtol=0, atol=tolerance * float(on_cpu.data.max()))


@pytest.mark.parametrize("method", ["rl", "wb"])
def test_flat_start_first_step_shortcut_equals_the_general_path(beads, monkeypatch, method):
    """From a flat first estimate the first iteration skips the transforms of the constant (H c = c·sum of the
    kernel): the same result as the general path to float32 round-off, after one and after three iterations."""
    kernel = decon.prepare_psf(beads["psf"], VOXEL_UM, VOXEL_UM)
    func = decon.richardson_lucy if method == "rl" else decon.wiener_butterworth
    for iterations in (1, 3):
        fast = func(beads["raw"], kernel, iterations=iterations, initial="flat")
        monkeypatch.setattr(decon_engine, "_FLAT_FIRST_STEP", False)
        general = func(beads["raw"], kernel, iterations=iterations, initial="flat")
        monkeypatch.setattr(decon_engine, "_FLAT_FIRST_STEP", True)
        np.testing.assert_allclose(fast, general, rtol=0, atol=2e-5 * float(general.max()))
        assert not np.array_equal(fast, func(beads["raw"], kernel, iterations=iterations, initial="data"))
