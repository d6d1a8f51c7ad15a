"""The GPU code path, run with NumPy as the array module (no GPU here): the xp deskew against the CPU kernels,
``deskew_deconvolve`` against deskew followed by ``deconvolve``, the staged pinned-memory transfer logic, and
the per-process engine cache. What only a GPU can run (CuPy itself, pinned memory, cuFFT) is checked by
``bench/bench_gpu.py`` on a lent GPU (docs/gpu.md)."""

from __future__ import annotations

import numpy as np
import pytest

from llsmflow.decon import deconvolve, deskew_deconvolve
from llsmflow.decon import engine as decon_engine
from llsmflow.decon.transfer import _HostCopies, _staged_to_device, _staged_to_host, to_device, to_host
from llsmflow.deskew import deskew, deskew_rotate, deskew_rotate_xp, deskew_xp
from llsmflow.errors import LlsmflowError
from llsmflow.io import read_volume

GEOMETRIES = [  # (dz µm, dx µm, dy µm, angle °, scan axis)
    (0.3, 0.104, 0.104, 31.5, "x"),
    (0.5, 0.104, 0.11, -31.5, "x"),
    (0.25, 0.104, 0.1, 45.0, "y"),
    (0.3, 0.1449922, 0.1449922, -30.0, "y"),
    (0.104 / np.cos(np.radians(31.5)), 0.104, 0.104, 31.5, "x"),  # whole-pixel shifts: copied planes
]


def _raw(shape=(17, 23, 29), seed=0):
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(np.uint16)


def _rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(("dz", "dx", "dy", "angle", "axis"), GEOMETRIES)
def test_xp_deskew_equals_cpu_deskew_bit_for_bit(dz, dx, dy, angle, axis):
    raw = _raw()
    cpu = deskew(raw, dz, dx, angle, dy_um=dy, scan_axis=axis, fill_value=7.0)
    data, voxel, origin, shear = deskew_xp(
        raw, dz, dx, angle, dy_um=dy, scan_axis=axis, fill_value=7.0, xp=np
    )
    assert data.dtype == np.float32 and data.shape == cpu.data.shape
    np.testing.assert_array_equal(data, cpu.data)
    assert (voxel, origin, shear) == (cpu.voxel_size_um, cpu.origin_offset_um, cpu.shear_px_per_plane)


@pytest.mark.parametrize(("dz", "dx", "dy", "angle", "axis"), GEOMETRIES)
@pytest.mark.parametrize("output_voxel", [None, 0.15])
def test_xp_deskew_rotate_equals_cpu_within_float32(dz, dx, dy, angle, axis, output_voxel):
    raw = _raw(seed=1)
    cpu, cpu_voxel, cpu_origin = deskew_rotate(
        raw, dz, dx, angle, dy_um=dy, output_voxel_um=output_voxel, fill_value=3.0, scan_axis=axis
    )
    data, voxel, origin = deskew_rotate_xp(
        raw, dz, dx, angle, dy_um=dy, output_voxel_um=output_voxel, fill_value=3.0, scan_axis=axis, xp=np
    )
    assert data.dtype == np.float32 and data.shape == cpu.shape and voxel == cpu_voxel
    np.testing.assert_allclose(origin, cpu_origin, rtol=1e-12, atol=1e-12)
    assert _rel_l2(data, cpu) < 2e-7
    np.testing.assert_allclose(data, cpu, rtol=0, atol=4e-7 * float(cpu.max()))


@pytest.mark.parametrize(
    ("name", "dz", "dx", "angle", "axis"),
    [
        ("LLS7_t1_ch1.czi", 0.3, 0.1449922, 30.0, "y"),  # Zeiss LLS7: stage scan along y
        ("janelia/psf642_ch0_stack0000_642nm_0000000msec_0008096612msecAbs.tif", 0.3, 0.104, 31.5, "x"),
    ],
)
def test_xp_deskew_on_real_stacks(real_data, name, dz, dx, angle, axis):
    if name.endswith(".czi"):
        pytest.importorskip("czifile")  # not on the lent GPU machine (it has no real data either)
    raw = read_volume(real_data / name).data
    cpu = deskew(raw, dz, dx, angle, scan_axis=axis)
    np.testing.assert_array_equal(deskew_xp(raw, dz, dx, angle, scan_axis=axis, xp=np)[0], cpu.data)
    rotated, _, _ = deskew_rotate(raw, dz, dx, angle, scan_axis=axis)
    assert _rel_l2(deskew_rotate_xp(raw, dz, dx, angle, scan_axis=axis, xp=np)[0], rotated) < 2e-7


def _bead_stack_and_psf():
    raw = np.random.default_rng(2).poisson(100, size=(20, 40, 36)).astype(np.uint16)
    raw[10, 20, 18] += 3000
    raw[6, 12, 10] += 2000
    z, y, x = np.mgrid[:9, :15, :15].astype(np.float32)
    psf = 1000 * np.exp(-((z - 4) ** 2) / 4 - ((y - 7) ** 2 + (x - 7) ** 2) / 2) + 10
    return raw, psf


GEOMETRY = dict(dz_um=0.3, dx_um=0.104, angle_deg=31.5)
PSF_VOXEL = (0.2, 0.104, 0.104)


@pytest.mark.parametrize(("method", "acceleration"), [("rl", False), ("rl", True), ("wb", False)])
def test_deskew_deconvolve_equals_deskew_then_deconvolve(method, acceleration):
    raw, psf = _bead_stack_and_psf()
    options = dict(iterations=3, method=method, acceleration=acceleration)
    deskewed = deskew(raw, **GEOMETRY)
    reference = deconvolve(deskewed.data, psf, deskewed.voxel_size_um, PSF_VOXEL, **options)
    cpu = deskew_deconvolve(raw, psf, PSF_VOXEL, **GEOMETRY, **options)  # backend 'cpu'
    np.testing.assert_array_equal(cpu.data, reference.data)
    assert cpu.deconvolution.summary() == reference.summary()
    assert (cpu.voxel_size_um, cpu.origin_offset_um) == (deskewed.voxel_size_um, deskewed.origin_offset_um)
    # the GPU code path with NumPy: deskew on "the device", engine from the per-process cache (twice)
    decon_engine.clear_engine_cache()
    for _ in range(2):
        device = deskew_deconvolve(raw, psf, PSF_VOXEL, **GEOMETRY, **options, xp=np)
        np.testing.assert_array_equal(device.data, reference.data)
        assert device.deconvolution.summary() == reference.summary()
    assert len(decon_engine._engines) == 1
    summary = device.summary()
    assert summary["deskew"]["shear_px_per_plane"] == pytest.approx(deskewed.shear_px_per_plane)
    assert set(device.seconds) == {"upload", "deskew", "deconvolution", "total"}
    decon_engine.clear_engine_cache()
    assert not decon_engine._engines


def test_deskew_deconvolve_rotated_and_into_out():
    raw, psf = _bead_stack_and_psf()
    rotated, voxel, origin = deskew_rotate(raw, **GEOMETRY, dy_um=0.11, output_voxel_um=0.15)
    reference = deconvolve(rotated, psf, voxel, PSF_VOXEL, iterations=3, background=90.0)
    options = dict(iterations=3, background=90.0, rotate=True, dy_um=0.11, output_voxel_um=0.15)
    cpu = deskew_deconvolve(raw, psf, PSF_VOXEL, **GEOMETRY, **options)
    np.testing.assert_array_equal(cpu.data, reference.data)
    out = np.full(reference.data.shape, np.nan, np.float32)
    device = deskew_deconvolve(raw, psf, PSF_VOXEL, **GEOMETRY, **options, xp=np, out=out)
    assert device.data is out and device.origin_offset_um == pytest.approx(origin)
    # the affine resampler and the CPU kernel differ by float32 round-off, which the iterations carry along
    np.testing.assert_allclose(out, reference.data, rtol=0, atol=1e-5 * float(reference.data.max()))
    decon_engine.clear_engine_cache()
    # with a memory budget: the host deskew and deconvolve()'s chunks
    budget = dict(iterations=2, background=90.0, max_memory_gb=0.002)
    chunked = deskew_deconvolve(raw, psf, PSF_VOXEL, **GEOMETRY, **budget, xp=np)
    deskewed = deskew(raw, **GEOMETRY)
    expected = deconvolve(deskewed.data, psf, deskewed.voxel_size_um, PSF_VOXEL, **budget)
    assert chunked.deconvolution.chunks == expected.chunks > 1
    np.testing.assert_array_equal(chunked.data, expected.data)
    with pytest.raises(LlsmflowError, match="expected float32 of the deskewed shape"):
        deskew_deconvolve(raw, psf, PSF_VOXEL, **GEOMETRY, **options, xp=np, out=out[:-1])
    with pytest.raises(LlsmflowError, match="sheet angle 95"):
        deskew_deconvolve(raw, psf, PSF_VOXEL, dz_um=0.3, dx_um=0.104, angle_deg=95, xp=np)
    with pytest.raises(LlsmflowError, match="backend 'gpu' is not known"):
        deskew_deconvolve(raw, psf, PSF_VOXEL, **GEOMETRY, backend="gpu")


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_staged_transfer_pieces_round_trip(dtype):
    """The pinned-memory staging (pieces, two buffers, offsets) with host copies standing in for the GPU."""
    host = np.random.default_rng(3).integers(0, 60000, size=(7, 13, 11)).astype(dtype)
    copies = _HostCopies()
    device = np.zeros(host.nbytes, np.uint8)
    _staged_to_device(host, device, copies, piece=300)  # an odd piece size: the last piece is short
    assert copies.pieces == -(-host.nbytes // 300)
    np.testing.assert_array_equal(device.view(dtype).reshape(host.shape), host)
    back = np.empty_like(host)
    _staged_to_host(device, back, copies, piece=256)
    np.testing.assert_array_equal(back, host)
    # with NumPy as the array module nothing moves
    assert to_device(host, np) is host and to_host(host) is host


def test_cached_engine_gives_the_fresh_engines_result():
    raw, psf = _bead_stack_and_psf()
    volume = raw.astype(np.float32)
    from llsmflow.decon.chunks import plan_chunks
    from llsmflow.decon.execute import _run_plan

    plan = plan_chunks(volume.shape, psf.shape)
    kernel = psf / psf.sum()
    fresh = _run_plan(volume, kernel, plan, 90.0, 3, xp=np)
    decon_engine.clear_engine_cache()
    first = _run_plan(volume, kernel, plan, 90.0, 3, xp=np, cache=True)
    second = _run_plan(volume * 2, kernel, plan, 180.0, 3, xp=np, cache=True)
    assert len(decon_engine._engines) == 1
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_allclose(second, 2 * fresh, rtol=1e-5, atol=1e-3)
    decon_engine.clear_engine_cache()


def _cupy_status() -> str:
    from llsmflow.decon import available_backends

    return available_backends()["cupy"]


@pytest.mark.skipif(_cupy_status() != "available", reason=f"needs CuPy and a CUDA GPU: {_cupy_status()}")
def test_cupy_path_equals_the_cpu():
    """On a GPU: the CuPy deskew, transfers (staged and pinned) and device-resident deskew → deconvolution."""
    import cupy

    from llsmflow.decon import pinned_empty, transfer

    raw, psf = _bead_stack_and_psf()
    for dz, dx, dy, angle, axis in GEOMETRIES:
        cpu = deskew(raw, dz, dx, angle, dy_um=dy, scan_axis=axis)
        gpu = deskew_xp(cupy.asarray(raw), dz, dx, angle, dy_um=dy, scan_axis=axis)[0]
        assert isinstance(gpu, cupy.ndarray)
        np.testing.assert_allclose(gpu.get(), cpu.data, rtol=0, atol=1e-3)
        rotated = deskew_rotate(raw, dz, dx, angle, dy_um=dy, scan_axis=axis)[0]
        on_gpu = deskew_rotate_xp(cupy.asarray(raw), dz, dx, angle, dy_um=dy, scan_axis=axis)[0]
        assert _rel_l2(on_gpu.get(), rotated) < 1e-6
    # transfers: pageable in small pieces (several staging rounds), and a pinned buffer in one copy
    big = np.random.default_rng(4).random((33, 65, 67), dtype=np.float32)
    piece = transfer._PIECE_BYTES
    transfer._PIECE_BYTES = 10_000
    try:
        device = transfer.to_device(big, cupy)
        np.testing.assert_array_equal(device.get(), big)
        np.testing.assert_array_equal(transfer.to_host(device * 2), big * 2)
    finally:
        transfer._PIECE_BYTES = piece
    pinned = pinned_empty(big.shape, np.float32)
    assert transfer._is_pinned(pinned)
    pinned[...] = big
    np.testing.assert_array_equal(transfer.to_host(transfer.to_device(pinned, cupy), out=pinned), big)
    options = dict(**GEOMETRY, iterations=5, background=90.0)
    reference = deskew_deconvolve(raw, psf, PSF_VOXEL, **options)
    for _ in range(2):  # the second call takes the engine from the cache
        gpu = deskew_deconvolve(raw, psf, PSF_VOXEL, **options, backend="cupy")
        assert gpu.deconvolution.backend == "cupy" and isinstance(gpu.data, np.ndarray)
        assert _rel_l2(gpu.data, reference.data) < 1e-5
    decon_engine.clear_engine_cache()


def test_affine_coordinates_in_float64_as_scipy():
    """CuPy >= 13 computes affine_transform's coordinates of a float32 input in float32 unless told
    otherwise (float64_coords): deskew_rotate_xp asks for float64 where the argument exists, never of SciPy."""
    from scipy import ndimage

    from llsmflow.deskew.device import _affine_options

    assert _affine_options(ndimage.affine_transform) == {}

    def affine_transform(input, matrix, offset=0.0, *, texture_memory=False, float64_coords=False):
        """The signature of cupyx.scipy.ndimage.affine_transform (CuPy 14.2), less the middle."""

    assert _affine_options(affine_transform) == {"float64_coords": True}


@pytest.mark.skipif(_cupy_status() != "available", reason=f"needs CuPy and a CUDA GPU: {_cupy_status()}")
def test_cupy_engine_matches_numpy_on_synthetic_beads():
    """On a GPU, without the real data the lent machine lacks: RL, accelerated RL and WB with CuPy against
    NumPy, ``deconvolve(backend='cupy')`` whole (pageable and pinned ``out``) and in chunks."""
    import cupy

    from llsmflow.decon import estimate_memory, pinned_empty, prepare_psf, richardson_lucy, wiener_butterworth

    raw, psf = _bead_stack_and_psf()
    voxel = (0.2, 0.104, 0.104)
    kernel = prepare_psf(psf, voxel, voxel, background=10.0)
    tolerance = 1e-4  # of the maximum: float32 FFTs (cuFFT against pocketfft/FFTW) round differently
    for acceleration in (False, True):
        cpu = richardson_lucy(raw, kernel, iterations=10, background=90.0, acceleration=acceleration)
        gpu = richardson_lucy(raw, kernel, iterations=10, background=90.0, acceleration=acceleration, xp=cupy)
        assert isinstance(gpu, np.ndarray) and gpu.dtype == np.float32
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=tolerance * float(cpu.max()))
    cpu = wiener_butterworth(raw, kernel, background=90.0)
    np.testing.assert_allclose(
        wiener_butterworth(raw, kernel, background=90.0, xp=cupy), cpu, rtol=0, atol=tolerance * float(cpu.max())
    )
    args = (raw, psf, voxel, voxel)
    on_cpu = deconvolve(*args, iterations=5, background=90.0)
    pinned = pinned_empty(raw.shape, np.float32)
    for out in (None, pinned):  # the second call also takes the engine from the cache
        result = deconvolve(*args, iterations=5, background=90.0, backend="cupy", out=out)
        assert result.backend == "cupy" and result.chunks == 1 and (out is None or result.data is out)
        np.testing.assert_allclose(result.data, on_cpu.data, rtol=0, atol=tolerance * float(on_cpu.data.max()))
    budget = estimate_memory(raw.shape, kernel.shape) / 2.2e9
    chunked = deconvolve(*args, iterations=5, background=90.0, backend="cupy", max_memory_gb=budget)
    reference = deconvolve(*args, iterations=5, background=90.0, max_memory_gb=budget)
    assert chunked.chunks == reference.chunks > 1
    np.testing.assert_allclose(chunked.data, reference.data, rtol=0, atol=tolerance * float(reference.data.max()))
    # a volume already on the device, with a budget: read chunk by chunk from the device (volumes._read_block)
    on_device = deconvolve(cupy.asarray(raw), *args[1:], iterations=5, background=90.0, backend="cupy",
                           max_memory_gb=budget)  # fmt: skip
    np.testing.assert_allclose(on_device.data, chunked.data, rtol=0, atol=1e-6 * float(chunked.data.max()))
    decon_engine.clear_engine_cache()


def test_prepared_psf_is_kept_per_psf_and_arguments():
    from llsmflow.decon import prepare_psf
    from llsmflow.decon import psf as decon_psf

    _, psf = _bead_stack_and_psf()
    decon_psf._PREPARED.clear()
    first = decon_psf._prepare_psf_cached(psf, PSF_VOXEL, (0.15, 0.104, 0.104), 10.0)
    assert decon_psf._prepare_psf_cached(psf.copy(), PSF_VOXEL, (0.15, 0.104, 0.104), 10.0) is first
    assert not first.flags.writeable
    np.testing.assert_array_equal(first, prepare_psf(psf, PSF_VOXEL, (0.15, 0.104, 0.104), background=10.0))
    other = psf.copy()
    other[4, 7, 8] += 500  # same shape, other values: another kernel
    assert not np.array_equal(decon_psf._prepare_psf_cached(other, PSF_VOXEL, (0.15, 0.104, 0.104), 10.0), first)
    assert decon_psf._prepare_psf_cached(psf, PSF_VOXEL, (0.15, 0.104, 0.104), "auto") is not first
    assert len(decon_psf._PREPARED) == 3
