"""Deskew geometry against the formulas, an independent affine reference and the synthetic ground truth."""

import math

import numpy as np
import pytest
from scipy import ndimage

from llsmflow.deskew import (
    deskew,
    deskew_rotate,
    deskewed_plane_spacing_um,
    deskewed_shape,
    deskewed_valid_mask,
    objective_to_coverslip_matrix,
    shear_px_per_plane,
    stage_to_objective_um,
)
from llsmflow.deskew.rotate import _deskew_rotate_reference
from llsmflow.errors import LlsmflowError
from llsmflow.io import read_volume
from llsmflow.synth import render_emitters


def test_shear_matches_field_notes_example():
    # dz = 0.5 µm, θ = 31.5°, dx = 0.104 µm → s ≈ 4.10 px per plane
    assert shear_px_per_plane(0.5, 0.104, 31.5) == pytest.approx(4.10, abs=0.005)
    assert shear_px_per_plane(0.5, 0.104, -31.5) == pytest.approx(-4.10, abs=0.005)
    assert deskewed_plane_spacing_um(0.5, 31.5) == pytest.approx(0.5 * math.sin(math.radians(31.5)))


def test_deskewed_shape_formula():
    nz, ny, nx = 100, 64, 256
    extra = math.floor(nz * 0.5 * math.cos(math.radians(31.5)) / 0.104)
    assert deskewed_shape((nz, ny, nx), 0.5, 0.104, 31.5) == (nz, ny, nx + extra)
    assert deskewed_shape((nz, ny, nx), 0.5, 0.104, 31.5, scan_axis="y") == (nz, ny + extra, nx)


@pytest.mark.parametrize("angle", [0, 90, -90, 120, float("nan")])
def test_bad_angles_are_rejected(angle):
    with pytest.raises(LlsmflowError, match="angle"):
        deskew(np.zeros((4, 4, 4)), 0.3, 0.1, angle)


def test_bad_voxel_sizes_are_rejected():
    with pytest.raises(LlsmflowError, match="voxel size"):
        deskew(np.zeros((4, 4, 4)), 0.0, 0.1, 31.5)
    with pytest.raises(LlsmflowError, match="3-D"):
        deskew(np.zeros((4, 4)), 0.3, 0.1, 31.5)


def _affine_reference(raw, shear, out_nx, base=0.0):
    """scipy.ndimage.affine_transform doing the same shear: out[k, y, x] = raw[k, y, x - base - k·s]."""
    matrix = np.array([[1, 0, 0], [0, 1, 0], [-shear, 0, 1]], float)
    return ndimage.affine_transform(
        raw.astype(np.float32),
        matrix,
        offset=(0, 0, -base),
        output_shape=(raw.shape[0], raw.shape[1], out_nx),
        order=1,
        cval=0.0,
    )


@pytest.mark.parametrize("scan_axis", ["x", "y"])
@pytest.mark.parametrize("angle", [31.5, -31.5, 30.0, -50.0])
def test_deskew_equals_affine_reference(angle, scan_axis):
    rng = np.random.default_rng(1)
    raw = rng.random((12, 9, 20)).astype(np.float32)
    result = deskew(raw, 0.3, 0.1, angle, scan_axis=scan_axis, fill_value=-1.0)
    # the affine reference shears along the last axis: for scan axis y, transpose y and x around it
    data = result.data if scan_axis == "x" else result.data.transpose(0, 2, 1)
    along = raw if scan_axis == "x" else raw.transpose(0, 2, 1)
    shear = shear_px_per_plane(0.3, 0.1, angle)
    base = -shear * (raw.shape[0] - 1) if shear < 0 else 0.0
    assert data.shape == (
        raw.shape[0],
        along.shape[1],
        along.shape[2] + math.floor(raw.shape[0] * abs(shear)),
    )
    reference = _affine_reference(along, shear, data.shape[2], base)
    # compare where the reference interpolates between two valid source columns
    valid = _affine_reference(np.ones_like(along), shear, data.shape[2], base) > 0.999
    assert valid.sum() > 0.4 * raw.size
    np.testing.assert_allclose(data[valid], reference[valid], atol=1e-5)
    # the wedges hold the fill value, and the data sit where the validity mask says
    mask = deskewed_valid_mask(raw.shape, 0.3, 0.1, angle, scan_axis=scan_axis, margin_px=0)
    assert np.all(result.data[~mask] == -1.0)
    assert np.all(result.data[mask] >= 0.0)
    if shear < 0:  # negative angles: the last plane is not shifted, the first one is shifted most
        assert result.origin_offset_um[1 if scan_axis == "y" else 2] == pytest.approx(-base * 0.1)


def test_deskew_input_dtype_threads_and_out_buffer_do_not_change_the_result():
    rng = np.random.default_rng(4)
    raw = rng.integers(90, 4000, (23, 17, 31), dtype=np.uint16)
    reference = deskew(raw.astype(np.float64), 0.3, 0.104, 31.5, workers=1).data
    for workers in (2, 5):
        np.testing.assert_array_equal(deskew(raw, 0.3, 0.104, 31.5, workers=workers).data, reference)
    out = np.full(reference.shape, np.nan, np.float32)
    result = deskew(raw, 0.3, 0.104, 31.5, out=out)
    assert result.data is out
    np.testing.assert_array_equal(out, reference)
    with pytest.raises(LlsmflowError, match="out array"):
        deskew(raw, 0.3, 0.104, 31.5, out=np.empty(reference.shape, np.float64))
    with pytest.raises(LlsmflowError, match="workers"):
        deskew(raw, 0.3, 0.104, 31.5, workers=0)


def _emitters(rng, n, extent_um):
    return rng.uniform([0.8, 0.5, 0.5], np.asarray(extent_um) - [0.8, 0.5, 0.5], (n, 3))


def _centroids(volume, positions_px, half=3):
    found = []
    for p in positions_px:
        centre = np.round(p).astype(int)
        lo = np.maximum(centre - half, 0)
        block = volume[tuple(slice(a, a + 2 * half + 1) for a in lo)]
        found.append(np.array(ndimage.center_of_mass(np.clip(block, 0, None))) + lo)
    return np.array(found)


@pytest.mark.parametrize("angle", [31.5, -31.5])
def test_deskewed_positions_match_truth(angle):
    """Emitters rendered into a skewed stack land, after deskew, within 0.5 voxel of their true position."""
    dz, dx, nz, ny, nx = 0.3, 0.104, 40, 48, 64
    shear = shear_px_per_plane(dz, dx, angle)
    dzp = deskewed_plane_spacing_um(dz, angle)
    rng = np.random.default_rng(3)
    # positions in the objective frame relative to raw voxel (0,0,0); inside the imaged parallelogram
    zs = rng.uniform(1.0, (nz - 1) * dzp - 1.0, 8)
    ys = rng.uniform(0.6, (ny - 1) * dx - 0.6, 8)
    us = rng.uniform(0.6, (nx - 1) * dx - 0.6, 8)  # camera column in µm at the plane the emitter is seen in
    xs = us + zs / dzp * shear * dx
    truth = np.stack([zs, ys, xs], axis=1)
    raw = render_emitters((nz, ny, nx), truth, np.full(8, 1000.0), dzp, dx, shear, 0.35, 0.13)
    result = deskew(raw, dz, dx, angle)
    assert result.voxel_size_um == pytest.approx((dzp, dx, dx))
    expected_px = (truth - np.asarray(result.origin_offset_um)) / np.asarray(result.voxel_size_um)
    found = _centroids(result.data, expected_px)
    assert np.abs(found - expected_px).max() < 0.5


def test_scan_axis_y_is_transposed_x():
    rng = np.random.default_rng(2)
    raw = rng.random((10, 15, 7)).astype(np.float32)
    along_y = deskew(raw, 0.3, 0.1, 31.5, scan_axis="y")
    along_x = deskew(raw.transpose(0, 2, 1), 0.3, 0.1, 31.5)
    np.testing.assert_array_equal(along_y.data, along_x.data.transpose(0, 2, 1))


def test_stage_scan_step_is_the_deskew_step():
    """One stage step along the scan moves the sample by exactly the per-plane deskew step."""
    dz, dx, angle = 0.3, 0.104, 31.5
    z, y, x = stage_to_objective_um((dz, 0, 0), angle)
    assert z == pytest.approx(deskewed_plane_spacing_um(dz, angle))
    assert y == pytest.approx(0.0)
    assert x == pytest.approx(shear_px_per_plane(dz, dx, angle) * dx)
    rotation = objective_to_coverslip_matrix(angle)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("angle", [31.5, -31.5])
def test_deskew_rotate_places_emitters_in_coverslip_frame(angle):
    dz, dx, nz, ny, nx = 0.3, 0.104, 40, 32, 48
    shear = shear_px_per_plane(dz, dx, angle)
    dzp = deskewed_plane_spacing_um(dz, angle)
    rng = np.random.default_rng(5)
    zs = rng.uniform(1.2, (nz - 1) * dzp - 1.2, 5)
    ys = rng.uniform(0.8, (ny - 1) * dx - 0.8, 5)
    xs = rng.uniform(0.8, (nx - 1) * dx - 0.8, 5) + zs / dzp * shear * dx
    truth = np.stack([zs, ys, xs], axis=1)
    raw = render_emitters((nz, ny, nx), truth, np.full(5, 1000.0), dzp, dx, shear, 0.2, 0.13)
    volume, voxel, origin = deskew_rotate(raw, dz, dx, angle)
    assert voxel == (dx, dx, dx)
    assert volume.dtype == np.float32 and volume.flags.c_contiguous
    cover = truth @ objective_to_coverslip_matrix(angle).T
    expected_px = (cover - np.asarray(origin)) / dx
    found = _centroids(volume, expected_px, half=5)
    assert np.abs(found - expected_px).max() < 0.5


def _compare_with_affine_reference(raw, dz, dx, angle, **kwargs):
    """The fast deskew_rotate against scipy.ndimage.affine_transform (order 1) doing the same transform."""
    fast, voxel, origin = deskew_rotate(raw, dz, dx, angle, fill_value=-7.0, **kwargs)
    reference, ref_voxel, ref_origin = _deskew_rotate_reference(raw, dz, dx, angle, fill_value=-7.0, **kwargs)
    assert fast.shape == reference.shape and fast.dtype == np.float32
    assert voxel == ref_voxel and origin == pytest.approx(ref_origin)
    inside_fast, inside_ref = fast != -7.0, reference != -7.0
    # the same voxels are inside the imaged volume, up to rounding of raw positions that fall exactly on its edge
    assert np.count_nonzero(inside_fast != inside_ref) <= 1e-3 * fast.size
    both = inside_fast & inside_ref
    assert both.mean() > 0.3
    scale = float(np.abs(raw).max())
    np.testing.assert_allclose(fast[both], reference[both], rtol=0, atol=2e-6 * scale)
    return fast


@pytest.mark.parametrize(
    ("angle", "kwargs"),
    [
        (31.5, {}),
        (-31.5, {}),
        (45.0, {"output_voxel_um": 0.15}),  # coarser output: also resamples y
        (30.0, {"dy_um": 0.12, "output_voxel_um": 0.09}),  # anisotropic camera pixels, finer output
    ],
)
def test_fast_deskew_rotate_equals_affine_reference(angle, kwargs):
    rng = np.random.default_rng(6)
    raw = rng.random((14, 11, 23)).astype(np.float32)
    _compare_with_affine_reference(raw, 0.3, 0.104, angle, **kwargs)


def test_fast_deskew_rotate_on_camera_counts_threads_and_degenerate_stacks():
    rng = np.random.default_rng(7)
    raw = rng.integers(90, 4000, (20, 13, 27), dtype=np.uint16)
    fast = _compare_with_affine_reference(raw, 0.3, 0.104, 31.5)
    for workers in (1, 3):
        np.testing.assert_array_equal(
            deskew_rotate(raw, 0.3, 0.104, 31.5, fill_value=-7.0, workers=workers)[0], fast
        )
    # one plane or one column: nothing to interpolate between, handled by the general resampler
    for shape in ((1, 5, 9), (6, 5, 1)):
        flat = rng.random(shape).astype(np.float32)
        np.testing.assert_array_equal(
            deskew_rotate(flat, 0.3, 0.104, 31.5)[0], _deskew_rotate_reference(flat, 0.3, 0.104, 31.5)[0]
        )


def test_real_lls7_crop_deskews_to_formula_shape(real_data):
    """Zeiss LLS7 crop: dz = 0.3 µm, dx = 0.1449922 µm, 30°: shape and spacing as the formulas give."""
    raw = read_volume(real_data / "lls7_multich_multi_time.tif", channel=0, timepoint=0)
    assert raw.data.shape == (501, 11, 13)
    assert raw.voxel_size_um == pytest.approx((0.3, 0.1449922, 0.1449922), rel=1e-5)
    result = deskew(raw.data, 0.3, 0.1449922, 30.0)
    expected_nx = 13 + math.floor(501 * 0.3 * math.cos(math.radians(30)) / 0.1449922)
    assert result.data.shape == (501, 11, expected_nx)
    assert result.voxel_size_um == pytest.approx((0.15, 0.1449922, 0.1449922))
    # intensity is conserved plane by plane, up to the columns lost at the plane edges
    kept = result.data.sum(axis=(1, 2)) / raw.data.astype(np.float64).sum(axis=(1, 2))
    assert np.all(kept > 0.85) and np.all(kept <= 1.0 + 1e-6)


@pytest.mark.parametrize(
    ("raw_shape", "dz", "angle", "scan_axis"),
    [
        ((12, 5, 9), 0.3, 31.5, "x"),
        ((12, 5, 9), 0.3, -31.5, "x"),
        ((9, 11, 4), 0.25, 40.0, "y"),
        ((7, 3, 6), 0.104 / math.cos(math.radians(31.5)), 31.5, "x"),
    ],
)
def test_deskewed_valid_mask_is_where_deskew_puts_data(raw_shape, dz, angle, scan_axis):
    dx = 0.104
    ones = deskew(np.ones(raw_shape, np.float32), dz, dx, angle, scan_axis=scan_axis).data
    mask = deskewed_valid_mask(raw_shape, dz, dx, angle, scan_axis=scan_axis, margin_px=0)
    assert mask.dtype == bool and mask.shape == ones.shape == deskewed_shape(
        raw_shape, dz, dx, angle, scan_axis
    )
    np.testing.assert_array_equal(mask, ones > 0.999)
    assert 0 < mask.mean() < 1  # the wedges are there
    # the margin erodes each plane's run of valid voxels along the scan axis only, by that many pixels per end
    eroded = deskewed_valid_mask(raw_shape, dz, dx, angle, scan_axis=scan_axis, margin_px=2)
    axis = 2 if scan_axis == "x" else 1
    structure = np.ones([5 if a == axis else 1 for a in range(3)], bool)
    np.testing.assert_array_equal(eroded, ndimage.binary_erosion(mask, structure, border_value=0))
    np.testing.assert_array_equal(eroded.sum(axis=axis), np.maximum(mask.sum(axis=axis) - 4, 0))
    with pytest.raises(LlsmflowError, match="margin_px"):
        deskewed_valid_mask(raw_shape, dz, dx, angle, margin_px=-1)


def test_old_module_name_reexports_the_package():
    """``llsmflow.geometry`` (docs, bench, workflow snapshots) gives the same objects as ``llsmflow.deskew``."""
    import llsmflow.deskew
    import llsmflow.geometry

    assert llsmflow.geometry.__all__ == llsmflow.deskew.__all__
    for name in llsmflow.deskew.__all__:
        assert getattr(llsmflow.geometry, name) is getattr(llsmflow.deskew, name)
    with pytest.raises(AttributeError):
        llsmflow.geometry.no_such_name  # noqa: B018


@pytest.mark.parametrize("angle", [31.5, -31.5, 45.0])
@pytest.mark.parametrize("dy", [None, 0.12])
def test_deskew_rotate_scan_axis_y_matches_affine_reference(angle, dy):
    """Scan axis y (Zeiss LLS7, OPM): the fast path equals the general affine reference written for y, and is
    the scan-axis-x result of the stack with y and x swapped."""
    raw = np.random.default_rng(3).random((20, 17, 23)).astype(np.float32) * 100
    fast = _compare_with_affine_reference(raw, 0.3, 0.104, angle, dy_um=dy, scan_axis="y")
    swapped, _, origin = deskew_rotate(
        raw.transpose(0, 2, 1), 0.3, dy or 0.104, angle, dy_um=0.104, output_voxel_um=0.104, fill_value=-7.0
    )
    np.testing.assert_array_equal(fast, swapped.transpose(0, 2, 1))
    ref_x = _deskew_rotate_reference(raw.transpose(0, 2, 1), 0.3, dy or 0.104, angle, 0.104, 0.104)[0]
    ref_y = _deskew_rotate_reference(raw, 0.3, 0.104, angle, dy, 0.104, scan_axis="y")[0]
    np.testing.assert_array_equal(ref_y, ref_x.transpose(0, 2, 1))


def test_deskew_rotate_refuses_unknown_scan_axis():
    with pytest.raises(LlsmflowError, match="expected 'x' or 'y'"):
        deskew_rotate(np.zeros((3, 4, 5), np.float32), 0.3, 0.1, 30.0, scan_axis="z")


@pytest.mark.parametrize("scan_axis", ["x", "y"])
def test_deskew_stack_is_deskew_or_deskew_rotate_by_the_rotate_setting(scan_axis):
    """The one frame choice (config deskew.rotate) gives exactly the objective-frame deskew or the coverslip-frame
    deskew + rotation, with the deskew's own shear (pixels per plane along the scan axis) in both frames."""
    from llsmflow.deskew import deskew_stack

    rng = np.random.default_rng(5)
    raw = rng.integers(90, 400, (12, 20, 24), dtype=np.uint16)
    geometry = dict(dz_um=0.4, dx_um=0.104, angle_deg=-31.8, dy_um=0.11, scan_axis=scan_axis)
    objective = deskew(raw, **geometry, workers=1)
    chosen = deskew_stack(raw, **geometry, workers=1)
    np.testing.assert_array_equal(chosen.data, objective.data)
    assert (chosen.voxel_size_um, chosen.origin_offset_um) == (objective.voxel_size_um, objective.origin_offset_um)
    data, voxel, origin = deskew_rotate(raw, **geometry, output_voxel_um=0.2, workers=1)
    rotated = deskew_stack(raw, **geometry, rotate=True, output_voxel_um=0.2, workers=1)
    np.testing.assert_array_equal(rotated.data, data)
    assert (rotated.voxel_size_um, rotated.origin_offset_um) == (tuple(voxel), tuple(origin))
    assert rotated.shear_px_per_plane == objective.shear_px_per_plane
