"""Tests for llsmflow.stitch against synthetic mosaics with known tile positions.

The scene is analytic (a smooth random texture of plane waves plus bright Gaussian blobs over a background, in
µm), so each tile is rendered exactly at its true, sub-voxel position and Poisson noise is added; the stitcher
only sees nominal positions perturbed by several voxels.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import zarr

from llsmflow.errors import LlsmflowError
from llsmflow.geometry import deskew, deskewed_plane_spacing_um, deskewed_valid_mask, shear_px_per_plane
from llsmflow.io import write_volume
from llsmflow.stitch import (
    PairLink,
    StitchWarning,
    Tile,
    fuse_to_zarr,
    fused_extent,
    mosaic_voxel_size,
    optimise_positions,
    positions_from_transforms,
    read_fused,
    read_tiles_csv,
    read_transforms,
    register_pair,
    register_tiles,
    tile_from_deskewed,
    write_transforms,
)
from llsmflow.stitch._budget import _block_bytes, _current_rss_bytes
from llsmflow.stitch.fusion import _Fuser
from llsmflow.stitch.grid import _sample, _tile_range
from llsmflow.synth import render_emitters

VOXEL = (0.5, 0.25, 0.25)  # (dz, dy, dx) µm
BACKGROUND = 100.0
ROW_SHAPE = (40, 112, 128)
# true origins (z, y, x) µm of three tiles along y: ~22 voxels (20 %) overlap, sub-voxel offsets on every axis
ROW_TRUE = [(0.0, 0.0, 0.0), (0.21, 22.58, -0.37), (-0.16, 45.07, 0.29)]
# stage errors between neighbours: 2.3-3.4 µm in y and x (9-14 voxels), 0.7-0.9 µm in z (1.4-1.8 voxels)
ROW_PERTURBATION = [(0.6, -1.0, 1.1), (-0.3, 1.7, -2.1), (0.4, -1.7, 0.2)]


class World:
    """Analytic scene: background + smooth texture (random plane waves) + Gaussian blobs, all in µm."""

    def __init__(self, seed, extent_um, n_blobs=150, blank_y_um=None):
        rng = np.random.default_rng(seed)
        n_waves = 24
        k = rng.normal(size=(n_waves, 3))
        self.k = k / np.linalg.norm(k, axis=1, keepdims=True) * rng.uniform(0.4, 1.5, size=(n_waves, 1))
        self.phase = rng.uniform(0, 2 * np.pi, n_waves)
        self.wave_amp = rng.uniform(5, 12, n_waves)
        lo = np.array([-4.0, -8.0, -8.0])
        self.centres = rng.uniform(lo, np.array(extent_um) + 8.0, size=(n_blobs, 3))
        self.sigma = rng.uniform(0.5, 0.9, n_blobs)
        self.blob_amp = rng.uniform(200, 500, n_blobs)
        self.blank_y_um = blank_y_um  # content fades to nothing over 1 µm into this y band

    def render(self, origin_um, shape):
        axes = [o + np.arange(n) * v for o, n, v in zip(origin_um, shape, VOXEL, strict=True)]
        z, y, x = axes
        content = np.zeros(shape)
        for kv, ph, a in zip(self.k, self.phase, self.wave_amp, strict=True):
            wave = np.exp(1j * (kv[0] * z + ph))[:, None, None] * np.exp(1j * kv[1] * y)[None, :, None]
            content += a * (1 + np.real(wave * np.exp(1j * kv[2] * x)[None, None, :]))
        for c, s, a in zip(self.centres, self.sigma, self.blob_amp, strict=True):
            g = [np.exp(-((ax - ci) ** 2) / (2 * s * s)) for ax, ci in zip(axes, c, strict=True)]
            idx = [np.nonzero(gi > 1e-4)[0] for gi in g]
            if any(len(i) == 0 for i in idx):
                continue
            box = tuple(slice(i[0], i[-1] + 1) for i in idx)
            gz, gy, gx = (gi[b] for gi, b in zip(g, box, strict=True))
            content[box] += a * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
        if self.blank_y_um is not None:
            y0, y1 = self.blank_y_um
            content *= np.clip(np.maximum(y0 - y, y - y1), 0.0, 1.0)[None, :, None]
        return BACKGROUND + content


def make_tiles(world, true_origins, perturbations, shape, seed, noise=True, names=None):
    rng = np.random.default_rng(seed)
    tiles = []
    for i, (true, pert) in enumerate(zip(true_origins, perturbations, strict=True)):
        clean = world.render(true, shape)
        data = (rng.poisson(clean) if noise else clean).astype(np.float32)
        nominal = tuple(float(t + p) for t, p in zip(true, pert, strict=True))
        tiles.append(Tile(names[i] if names else f"t{i}", nominal, shape, data=data))
    return tiles


def errors_vox(positions, true_origins, keys, reference):
    """Per-tile error (voxels, z y x) of positions relative to the reference tile."""
    ref = keys.index(reference)
    out = {}
    for key, true in zip(keys, true_origins, strict=True):
        got = np.subtract(positions[key], positions[reference])
        want = np.subtract(true, true_origins[ref])
        out[key] = (got - want) / np.array(VOXEL)
    return out


@pytest.fixture(scope="module")
def row_world():
    return World(seed=1, extent_um=(20.0, 73.0, 32.0))


@pytest.fixture(scope="module")
def row_tiles(row_world):
    return make_tiles(row_world, ROW_TRUE, ROW_PERTURBATION, ROW_SHAPE, seed=11)


# ------------------------------------------------------------------------------------------ registration


def test_register_tiles_recovers_true_positions(row_tiles, tmp_path):
    keys = [t.key for t in row_tiles]
    nominal = {t.key: t.origin_um for t in row_tiles}
    before = errors_vox(nominal, ROW_TRUE, keys, "t0")
    assert max(np.abs(e).max() for e in before.values()) > 8  # the stage error is several voxels

    # stage errors here reach 3.4 µm, beyond the workflow's 3 µm bound: search a quarter of the tile
    transforms = register_tiles(row_tiles, VOXEL, max_shift_um=None)

    assert transforms["reference"] == "t0"
    assert [(p["a"], p["b"]) for p in transforms["pairs"]] == [("t0", "t1"), ("t1", "t2")]  # t0/t2 disjoint
    assert all(p["used"] and p["quality"] > 0.6 for p in transforms["pairs"])
    positions = positions_from_transforms(transforms)
    assert positions["t0"] == nominal["t0"]  # the reference stays where it was
    after = errors_vox(positions, ROW_TRUE, keys, "t0")
    for key, err in after.items():
        assert np.all(np.abs(err) < 0.5), (key, err)
    for key in keys:
        assert transforms["tiles"][key]["nominal_origin_um"] == list(nominal[key])

    path = write_transforms(tmp_path / "transforms.json", transforms)
    assert json.loads(path.read_text()) == json.loads(json.dumps(transforms))
    assert read_transforms(path) == json.loads(json.dumps(transforms))


def test_register_pair_shift_convention_and_search_limit(row_tiles):
    a, b = row_tiles[0], row_tiles[1]
    link = register_pair(a, b, VOXEL)
    # shift_um = (true_b - true_a) - (nominal_b - nominal_a)
    expected = np.subtract(ROW_TRUE[1], ROW_TRUE[0]) - np.subtract(b.origin_um, a.origin_um)
    assert np.all(np.abs((np.array(link.shift_um) - expected) / VOXEL) < 0.5)
    assert link.used and 0.6 < link.quality <= 1.0

    limited = register_pair(a, b, VOXEL, max_shift_um=0.5)  # the true correction is 3.2 µm in x
    assert not limited.used or np.all(np.abs(limited.shift_um) <= 0.5 + np.array(VOXEL))
    with pytest.raises(LlsmflowError, match="max_shift_um"):
        register_pair(a, b, VOXEL, max_shift_um=-1)


def test_blank_overlap_link_dropped_and_tile_kept_nominal(row_world):
    # no content at all where t1 and t2 overlap (nor within the search margin): only background and noise
    t1_end = ROW_TRUE[1][1] + (ROW_SHAPE[1] - 1) * VOXEL[1]
    world = World(seed=1, extent_um=(20.0, 73.0, 32.0))
    world.blank_y_um = (ROW_TRUE[2][1] - 3.0, t1_end + 3.0)
    tiles = make_tiles(world, ROW_TRUE, ROW_PERTURBATION, ROW_SHAPE, seed=12)

    with pytest.warns(StitchWarning, match="'t2'"):
        transforms = register_tiles(tiles, VOXEL, min_quality=0.3)

    pairs = {(p["a"], p["b"]): p for p in transforms["pairs"]}
    assert pairs[("t1", "t2")]["quality"] < 0.3 and not pairs[("t1", "t2")]["used"]
    assert pairs[("t0", "t1")]["used"]
    positions = positions_from_transforms(transforms)
    assert positions["t2"] == tiles[2].origin_um  # unregistered: nominal position, exactly
    err = errors_vox(positions, ROW_TRUE, ["t0", "t1", "t2"], "t0")
    assert np.all(np.abs(err["t1"]) < 0.5)


def test_wrong_link_removed_by_residual_rejection():
    shape = (40, 96, 96)
    true = [(0.0, 0.0, 0.0), (0.13, 0.21, 19.07), (-0.22, 19.11, -0.18), (0.31, 18.93, 19.26)]
    # stage errors between grid neighbours: 2.5-3.2 µm in y and x (10-13 voxels), 0.3-0.8 µm in z
    perturbation = [(0.5, 1.1, -0.9), (-0.1, 4.2, 1.8), (1.0, 4.1, 1.7), (0.7, 1.0, -0.8)]
    keys = ["00", "01", "10", "11"]
    world = World(seed=3, extent_um=(20.0, 43.0, 43.0), n_blobs=110)
    tiles = make_tiles(world, true, perturbation, shape, seed=13, names=keys)
    pairs = [(0, 1), (0, 2), (1, 3), (2, 3), (0, 3), (1, 2)]  # the grid's edges and both diagonals
    links = [register_pair(tiles[i], tiles[j], VOXEL) for i, j in pairs]
    assert all(link.used and link.quality > 0.5 for link in links)

    clean = optimise_positions(tiles, links, VOXEL)
    for key, err in errors_vox(clean, true, keys, "00").items():
        assert np.all(np.abs(err) < 0.5), (key, err)
    assert all(link.used for link in links)

    wrong = links[0]  # 00-01: claim 3 µm (12 voxels) more in y than measured
    wrong.shift_um = (wrong.shift_um[0], wrong.shift_um[1] + 3.0, wrong.shift_um[2])

    blind = optimise_positions(tiles, links, VOXEL, max_residual_um=1e9)  # no rejection: the error spreads
    assert max(np.abs(e).max() for e in errors_vox(blind, true, keys, "00").values()) > 2

    fixed = optimise_positions(tiles, links, VOXEL)
    assert not wrong.used and wrong.residual_um is None
    assert all(link.used and link.residual_um < 2 * max(VOXEL) for link in links[1:])
    for key, err in errors_vox(fixed, true, keys, "00").items():
        assert np.all(np.abs(err) < 0.5), (key, err)


def test_optimise_positions_reference_quality_and_components():
    tiles = [Tile(k, (0.0, 10.0 * i, 0.0), (4, 8, 8), data=np.zeros((4, 8, 8))) for i, k in enumerate("abcd")]
    links = [
        PairLink("a", "b", (0.0, 1.0, 0.0), 0.9),
        PairLink("b", "c", (0.0, 0.0, 2.0), 0.1),  # too poor: c and d are cut off from a
        PairLink("c", "d", (0.0, -1.0, 0.0), 0.8),
    ]
    with pytest.warns(StitchWarning, match="'c', 'd'"):
        positions = optimise_positions(tiles, links, VOXEL, reference="b")
    assert positions["b"] == (0.0, 10.0, 0.0)
    assert positions["a"] == pytest.approx((0.0, -1.0, 0.0))
    assert positions["c"] == (0.0, 20.0, 0.0)  # the group keeps its first tile nominal ...
    assert positions["d"] == pytest.approx((0.0, 29.0, 0.0))  # ... and its internal alignment
    assert [link.used for link in links] == [True, False, True]
    with pytest.raises(LlsmflowError, match="reference tile 'z'"):
        optimise_positions(tiles, links, VOXEL, reference="z")


# ------------------------------------------------------------------------------------------------ fusion


def covered_mask(origin, shape, positions, tile_shape):
    grids = [o + np.arange(n) * v for o, n, v in zip(origin, shape, VOXEL, strict=True)]
    covered = np.zeros(shape, bool)
    for pos in positions:
        inside = [
            (g >= p - 1e-6) & (g <= p + (n - 1) * v + 1e-6)
            for g, p, n, v in zip(grids, pos, tile_shape, VOXEL, strict=True)
        ]
        covered |= inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return covered


def test_fuse_to_zarr_matches_ground_truth_across_the_seam(row_world, row_tiles, tmp_path):
    tiles = row_tiles[:2]
    positions = {t.key: p for t, p in zip(tiles, ROW_TRUE[:2], strict=True)}
    out = fuse_to_zarr(tiles, positions, VOXEL, tmp_path / "fused.ome.zarr", chunks=(16, 40, 48))

    array = zarr.open_array(out, mode="r")
    assert array.metadata.zarr_format == 3
    assert array.chunks == (16, 40, 48)
    assert array.attrs["voxel_size_um"] == list(VOXEL)
    data, origin, voxel = read_fused(out)
    expected_origin, expected_shape = fused_extent(positions, {t.key: t.shape for t in tiles}, VOXEL)
    assert origin == expected_origin == (0.0, 0.0, -0.37)
    assert data.shape == expected_shape == (40, 202, 129)
    assert voxel == VOXEL and data.dtype == np.float32

    truth = row_world.render(origin, data.shape)
    covered = covered_mask(origin, data.shape, positions.values(), ROW_SHAPE)
    assert np.all(data[~covered] == 0)
    assert data[covered].min() > 0.5 * BACKGROUND  # no zero or dark voxels anywhere, seams included

    # mean intensity profile along y (across the seam), over z and x covered by both tiles
    inner = (slice(1, -1), slice(None), slice(2, -2))
    profile = data[inner].mean(axis=(0, 2))
    truth_profile = truth[inner].mean(axis=(0, 2))
    noise_se = np.sqrt(truth_profile / (data.shape[0] - 2) / (data.shape[2] - 4))  # Poisson, per y plane
    residual = profile - truth_profile
    assert np.all(np.abs(residual) < 5 * noise_se + 0.005 * truth_profile)
    assert np.all(np.abs(np.diff(residual)) < 6 * noise_se[1:] + 0.005 * truth_profile[1:])  # no step


def test_fuse_to_zarr_is_exact_on_whole_voxel_offsets(row_world, tmp_path):
    shape = (12, 40, 36)
    true = [(0.0, 0.0, 0.0), (0.5, 8.0, -1.0), (-1.0, 3.0, 7.0)]  # multiples of the voxel size
    tiles = make_tiles(row_world, true, [(0.0, 0.0, 0.0)] * 3, shape, seed=0, noise=False)
    positions = {t.key: t.origin_um for t in tiles}
    for dtype in (np.float32, np.uint16):
        out = fuse_to_zarr(tiles, positions, VOXEL, tmp_path / "exact.zarr", chunks=(5, 16, 16), dtype=dtype)
        data, origin, _ = read_fused(out)
        assert origin == (-1.0, 0.0, -1.0) and data.dtype == dtype
        truth = row_world.render(origin, data.shape)
        covered = covered_mask(origin, data.shape, true, shape)
        if dtype == np.uint16:  # rounded; float32 arithmetic may land on the other side of .5
            np.testing.assert_allclose(data[covered], np.rint(truth[covered]), atol=1)
        else:
            np.testing.assert_allclose(data[covered], truth[covered], rtol=1e-5)
        assert np.all(data[~covered] == 0)


def test_fuse_to_zarr_interpolates_sub_voxel_offsets(row_world, tmp_path):
    tiles = make_tiles(row_world, ROW_TRUE[:2], [(0.0, 0.0, 0.0)] * 2, ROW_SHAPE, seed=0, noise=False)
    positions = {t.key: t.origin_um for t in tiles}

    def relative_rms_error(positions):
        out = fuse_to_zarr(tiles, positions, VOXEL, tmp_path / "sub.zarr", chunks=(16, 64, 64))
        data, origin, _ = read_fused(out)
        truth = row_world.render(origin, data.shape)
        covered = covered_mask(origin, data.shape, positions.values(), ROW_SHAPE)
        return np.sqrt(np.mean((data - truth)[covered] ** 2)) / truth[covered].std()

    # linear interpolation of blobs 2-4 voxels wide: a few % error, much less than a misplacement gives
    assert relative_rms_error(positions) < 0.03
    misplaced = dict(positions, t1=tuple(np.add(positions["t1"], (0.0, 0.5 * VOXEL[1], 0.0))))
    assert relative_rms_error(misplaced) > 0.05


def test_fused_extent_and_validation(tmp_path):
    origin, shape = fused_extent(
        {"a": (1.0, 2.0, 3.0), "b": (0.0, 7.1, 3.0)}, {"a": (4, 8, 8), "b": (2, 8, 8)}, VOXEL
    )
    assert origin == (0.0, 2.0, 3.0)
    # z up to 1 + 3*0.5 = 2.5 -> 6 planes; y up to 7.1 + 7*0.25 = 8.85 -> floor(27.4) + 1 = 28; x 8
    assert shape == (6, 28, 8)
    with pytest.raises(LlsmflowError, match="voxel size"):
        fused_extent({"a": (0, 0, 0)}, {"a": (1, 1, 1)}, (0.5, 0, 0.25))
    tile = Tile("a", (0, 0, 0), None, data=np.zeros((2, 3, 4)))
    assert tile.shape == (2, 3, 4)
    with pytest.raises(LlsmflowError, match="no position for tile"):
        fuse_to_zarr([tile], {}, VOXEL, tmp_path / "unused.zarr")
    with pytest.raises(LlsmflowError, match="expected 3-D"):
        Tile("bad", (0, 0, 0), None, data=np.zeros((3, 4)))


# ------------------------------------------------------------------------ deskewed tiles with empty wedges

# A stage-scanned LLSM tile deskewed into the objective frame holds data only inside a parallelogram in (z, x);
# the wedges beside it are 0 while the data sit on the camera offset, so the wedge border is the strongest
# edge in the volume and is the same in every tile. Scene: point emitters rendered analytically into raw
# stacks (llsmflow.synth.render_emitters), camera offset and Poisson noise added, then deskewed.
DESKEW_DZ, DESKEW_DX, DESKEW_ANGLE = 0.3, 0.104, 31.5
RAW_SHAPE = (24, 40, 48)
DESKEW_DZP = deskewed_plane_spacing_um(DESKEW_DZ, DESKEW_ANGLE)
DESKEW_SHEAR = shear_px_per_plane(DESKEW_DZ, DESKEW_DX, DESKEW_ANGLE)
DESKEW_VOXEL = (DESKEW_DZP, DESKEW_DX, DESKEW_DX)
CAMERA_OFFSET = 100.0
# two tiles along y, ~10 rows (25 %) of overlap; sub-voxel true offsets on every axis
DESKEW_TRUE = [(0.0, 0.0, 0.0), (0.07, 3.05, -0.31)]
# nominal = true + this: half a plane in z, 5-6 voxels in y and x
DESKEW_PERTURBATION = [(0.0, 0.0, 0.0), (0.08, 0.5, 0.6)]


class EmitterScene:
    """Point emitters (objective frame, µm) spread over both tiles, rendered as a stage scan would see them."""

    def __init__(self, seed=3, n=220):
        rng = np.random.default_rng(seed)
        nz, ny, nx = RAW_SHAPE
        lo = np.array([0.0, -0.5, -0.5])
        hi = np.array(
            [
                (nz - 1) * DESKEW_DZP,
                DESKEW_TRUE[1][1] + ny * DESKEW_DX + 0.5,
                (nx + nz * DESKEW_SHEAR) * DESKEW_DX,
            ]
        )
        self.points = rng.uniform(lo, hi, (n, 3))
        self.photons = rng.uniform(150, 400, n)

    def render(self, origin_um, shape, shear_px):
        """Expected photons (background 4 included) of a stack whose voxel 0 sits at ``origin_um``."""
        points = self.points - np.asarray(origin_um)
        return 4.0 + render_emitters(shape, points, self.photons, DESKEW_DZP, DESKEW_DX, shear_px, 0.3, 0.13)

    def deskewed_tile(self, origin_um, rng=None, offset=CAMERA_OFFSET):
        """The deskewed volume of a raw stack acquired at ``origin_um``: data + offset in the parallelogram,
        0 in the wedges."""
        raw = self.render(origin_um, RAW_SHAPE, DESKEW_SHEAR)
        if rng is not None:
            raw = rng.poisson(raw).astype(np.float64)
        return deskew(raw + offset, DESKEW_DZ, DESKEW_DX, DESKEW_ANGLE).data


@pytest.fixture(scope="module")
def emitter_scene():
    return EmitterScene()


def deskewed_valid():
    return deskewed_valid_mask(RAW_SHAPE, DESKEW_DZ, DESKEW_DX, DESKEW_ANGLE, margin_px=1)


def deskewed_error_vox(transforms):
    positions = positions_from_transforms(transforms)
    got = np.subtract(positions["t1"], positions["t0"])
    return (got - np.subtract(DESKEW_TRUE[1], DESKEW_TRUE[0])) / np.array(DESKEW_VOXEL)


@pytest.mark.parametrize("offsets", [(CAMERA_OFFSET, CAMERA_OFFSET), (0.0, 350.0)])
def test_register_deskewed_tiles_with_validity_masks(emitter_scene, offsets):
    rng = np.random.default_rng(7)
    datas = [emitter_scene.deskewed_tile(t, rng, o) for t, o in zip(DESKEW_TRUE, offsets, strict=True)]
    valid = deskewed_valid()
    wedges = ~deskewed_valid_mask(RAW_SHAPE, DESKEW_DZ, DESKEW_DX, DESKEW_ANGLE, margin_px=0)
    assert datas[0][wedges].max() == 0 and datas[0][valid].min() >= 0.5 * offsets[0]  # empty wedges

    def tiles(mask):
        return [
            Tile(f"t{i}", tuple(np.add(t, p)), None, data=d, valid=mask)
            for i, (t, p, d) in enumerate(zip(DESKEW_TRUE, DESKEW_PERTURBATION, datas, strict=True))
        ]

    nominal = deskewed_error_vox({"tiles": {t.key: {"origin_um": t.origin_um} for t in tiles(None)}})
    assert np.abs(nominal).max() > 4  # the stage error is several voxels

    transforms = register_tiles(tiles(valid), DESKEW_VOXEL, max_shift_um=2.0)
    err = deskewed_error_vox(transforms)
    assert np.all(np.abs(err) < 0.5), err
    assert transforms["pairs"][0]["used"] and transforms["pairs"][0]["quality"] > 0.6

    if offsets[0] == offsets[1] > 0:  # without masks the wedge border, equal in both tiles, wins
        blind = deskewed_error_vox(register_tiles(tiles(None), DESKEW_VOXEL, max_shift_um=2.0))
        assert np.abs(blind).max() > 1.0, blind

    # the mask may be given lazily, block by block
    calls = []

    def lazy(slices):
        calls.append(slices)
        return valid[slices]

    lazy_tiles = tiles(None)
    for tile in lazy_tiles:
        tile.valid = lazy
    assert np.allclose(deskewed_error_vox(register_tiles(lazy_tiles, DESKEW_VOXEL, max_shift_um=2.0)), err)
    assert calls and all(len(s) == 3 and all(isinstance(v.start, int) for v in s) for s in calls)


def test_fuse_deskewed_tiles_no_darkening_where_a_wedge_meets_data(emitter_scene, tmp_path):
    valid = deskewed_valid()
    positions = {f"t{i}": t for i, t in enumerate(DESKEW_TRUE)}
    datas = [emitter_scene.deskewed_tile(t) for t in DESKEW_TRUE]  # noise-free: compare with the scene

    def fuse(mask, name):
        tiles = [
            Tile(k, positions[k], None, data=d, valid=mask) for k, d in zip(positions, datas, strict=True)
        ]
        out = fuse_to_zarr(tiles, positions, DESKEW_VOXEL, tmp_path / name, chunks=(16, 32, 48))
        return read_fused(out)

    data, origin, _ = fuse(valid, "masked.zarr")
    truth = emitter_scene.render(origin, data.shape, 0.0) + CAMERA_OFFSET
    # where each tile covers the fused grid (extent) and has data there (validity), by its deskew geometry
    covered, has_data = [], []
    for key, d in zip(positions, datas, strict=True):
        offset = (np.asarray(positions[key]) - np.asarray(origin)) / np.asarray(DESKEW_VOXEL)
        ranges = [_tile_range(o, n, 0, m) for o, n, m in zip(offset, d.shape, data.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in ranges)
        c, v = np.zeros(data.shape, bool), np.zeros(data.shape, bool)
        c[box] = True
        v[box] = _sample(Tile(key, (0, 0, 0), None, data=valid.astype(np.float32)), offset, ranges) > 0.999
        covered.append(c)
        has_data.append(v)
    one_wedge_on_other_data = covered[0] & covered[1] & (has_data[0] ^ has_data[1])
    any_data = has_data[0] | has_data[1]
    assert one_wedge_on_other_data.sum() > 1000
    assert np.all(data[~any_data] == 0)  # covered by no tile's data: empty, as the wedges were

    def relative_error(region, fused):
        return np.sqrt(np.mean((fused[region] - truth[region]) ** 2)) / (truth[region] - CAMERA_OFFSET).std()

    # the scene's values (offset included) where one tile's wedge lies on the other's data, as elsewhere;
    # the residual is the linear interpolation of deskewing and of sub-voxel tile placement
    assert np.all(data[one_wedge_on_other_data] > 0.8 * truth[one_wedge_on_other_data])
    assert relative_error(one_wedge_on_other_data, data) < 0.12
    assert relative_error(any_data, data) < 0.12

    blind, _, _ = fuse(None, "unmasked.zarr")  # without masks the wedges' zeros are averaged in: darker
    assert np.mean(blind[one_wedge_on_other_data] < 0.8 * truth[one_wedge_on_other_data]) > 0.25


def test_tile_validity_shape_is_checked():
    with pytest.raises(LlsmflowError, match="validity mask of shape"):
        Tile("a", (0, 0, 0), None, data=np.zeros((2, 3, 4)), valid=np.ones((2, 3, 5), bool))
    tile = Tile("a", (0, 0, 0), None, data=np.zeros((2, 3, 4)), valid=lambda s: np.ones((1, 1, 1), bool))
    with pytest.raises(LlsmflowError, match="validity mask gave a block"):
        tile.read_valid((slice(0, 2), slice(0, 3), slice(0, 4)))


# ------------------------------------------------------------------------------------------ memory budget


def wedge_plane(shape, shear=1.5):
    """The (z, 1, x) validity plane of a deskewed-looking tile: a parallelogram in (z, x), constant in y."""
    nz, _, nx = shape
    z, x = np.arange(nz)[:, None], np.arange(nx)[None, :]
    return ((x >= shear * z) & (x < nx - int(shear * (nz - 1)) + shear * z))[:, None, :]


def mosaic_on_disk(directory, shape, fmt="tiff", seed=0):
    """2 x 2 tiles stored on disk (uncompressed OME-TIFF or Zarr), zeros in their wedges, sub-voxel positions,
    about 10 % overlap; returned lazily (``data=None``) with broadcast validity masks."""
    rng = np.random.default_rng(seed)
    plane = wedge_plane(shape)
    step = [0.9 * (n - 1) * v for n, v in zip(shape[1:], VOXEL[1:], strict=True)]
    tiles = []
    for i, (iy, ix) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        data = (rng.poisson(120.0, shape) * plane).astype(np.float32)
        if fmt == "tiff":
            path = write_volume(directory / f"m{i}.ome.tif", data, VOXEL, compression=None)
        else:
            path = directory / f"m{i}.zarr"
            zarr.create_array(store=str(path), shape=shape, chunks=(8, 32, 32), dtype=np.float32)[...] = data
        origin = (0.13 * i, iy * step[0] + 0.07 * i, ix * step[1] - 0.05 * i)
        tiles.append(Tile(f"m{i}", origin, shape, path=str(path), valid=np.broadcast_to(plane, shape)))
    return tiles


def in_memory(tiles, valid="same"):
    return [
        Tile(
            t.key,
            t.origin_um,
            None,
            data=t.read((slice(None),) * 3),
            valid=t.valid if valid == "same" else valid,
        )
        for t in tiles
    ]


@pytest.mark.parametrize("source", ["memory", "tiff", "zarr"])
def test_block_memory_model_bounds_the_traced_peak(tmp_path, source):
    shape = (20, 96, 96)
    lazy = mosaic_on_disk(tmp_path, shape, fmt="zarr" if source == "zarr" else "tiff")
    full_mask = np.ascontiguousarray(lazy[0].valid)
    full_mask[:, :7, :] = False  # not a broadcast view, not constant along any axis: a 3-D distance transform
    variants = {
        "broadcast masks": lazy,
        "3-D masks": [Tile(t.key, t.origin_um, t.shape, path=t.path, valid=full_mask) for t in lazy],
        "no masks": [Tile(t.key, t.origin_um, t.shape, path=t.path) for t in lazy],
    }
    voxel, chunks = np.array(VOXEL), (16, 48, 48)
    origin, grid = fused_extent({t.key: t.origin_um for t in lazy}, {t.key: shape for t in lazy}, VOXEL)
    offsets = {t.key: (np.array(t.origin_um) - origin) / voxel for t in lazy}
    # a corner (one tile, its wedge), an edge overlap (two tiles), the centre (four tiles)
    starts = [(0, 0, 0), (4, 0, grid[2] // 2 - 24), (4, grid[1] // 2 - 24, grid[2] // 2 - 24)]
    for name, tiles in variants.items():
        if source == "memory":
            tiles = in_memory(tiles)
        for tile in tiles:
            tile.read((slice(0, 1),) * 3)  # open files before tracing: handles are not working memory
        bound = _block_bytes(tiles, chunks, voxel, 2.0, np.float32)
        fuser = _Fuser(tiles, offsets, voxel, 2.0, np.float32)
        peak = 0
        for lo in starts:
            hi = tuple(min(a + c, n) for a, c, n in zip(lo, chunks, grid, strict=True))
            tracemalloc.start()
            try:
                fuser.block(lo, hi)
                peak = max(peak, tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        assert peak <= bound, (name, peak, bound)  # an upper estimate ...
        assert bound < 4 * peak, (name, peak, bound)  # ... but not a wild one


def test_fuse_to_zarr_memory_budget_same_result_fewer_chunks_in_flight(tmp_path, caplog):
    shape = (20, 96, 96)
    chunks = (16, 48, 48)
    lazy = mosaic_on_disk(tmp_path, shape)
    zarr_tiles = mosaic_on_disk(tmp_path, shape, fmt="zarr")
    positions = {t.key: t.origin_um for t in lazy}
    reference, _, _ = read_fused(
        fuse_to_zarr(in_memory(lazy), positions, VOXEL, tmp_path / "ref.zarr", chunks=chunks)
    )
    assert reference.max() > 0 and np.any(reference == 0)  # data, and empty wedges at the mosaic's edge

    per_chunk = _block_bytes(lazy, chunks, np.array(VOXEL), 2.0, np.float32)
    for tiles, name in ((lazy, "tiff.zarr"), (zarr_tiles, "zarr.zarr")):
        budget_gb = (_current_rss_bytes() + 1.5 * per_chunk / 0.8) / 2**30  # room for one chunk, not two
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="llsmflow.stitch"):
            out = fuse_to_zarr(
                tiles, positions, VOXEL, tmp_path / name, chunks=chunks, max_memory_gb=budget_gb
            )
        assert " 1 at once (budget " in caplog.text
        np.testing.assert_array_equal(read_fused(out)[0], reference)  # lazy reads: the same volume
        assert all(t.data is None for t in tiles)

    with pytest.raises(LlsmflowError, match=r"max_memory_gb=.* leaves .* one chunk needs about"):
        fuse_to_zarr(lazy, positions, VOXEL, tmp_path / "x.zarr", max_memory_gb=_current_rss_bytes() / 2**30)
    with pytest.raises(LlsmflowError, match="'processes' scheduler"):
        fuse_to_zarr(lazy, positions, VOXEL, tmp_path / "x.zarr", scheduler="processes", max_memory_gb=64)
    with pytest.raises(LlsmflowError, match="max_memory_gb=-1"):
        fuse_to_zarr(lazy, positions, VOXEL, tmp_path / "x.zarr", max_memory_gb=-1)
    assert not (tmp_path / "x.zarr").exists()


CHILD_FUSION = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from llsmflow.stitch import Tile, fuse_to_zarr
    from llsmflow.stitch._budget import _current_rss_bytes
    # what fusion imports for masked tiles' blend weights (about 18-22 MiB resident) is held before the budget
    # is set, as when fusion imported it at its own import: the room is for the chunks
    import scipy.ndimage

    spec = json.loads(sys.argv[1])
    plane = np.load(spec["plane"])
    shape = tuple(spec["shape"])
    tiles = [Tile(t["key"], t["origin"], shape, path=t["path"], valid=np.broadcast_to(plane, shape))
             for t in spec["tiles"]]
    budget = _current_rss_bytes() + spec["room_mib"] * 2**20  # what this process holds now, plus the room
    fuse_to_zarr(tiles, {t.key: t.origin_um for t in tiles}, spec["voxel"], spec["out"],
                 chunks=tuple(spec["chunks"]), max_memory_gb=budget / 2**30)
    with open("/proc/self/status") as fh:  # VmHWM: peak resident memory since this process started
        peak = int(next(line for line in fh if line.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps({"budget": budget, "peak": peak}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_fuse_peak_memory_of_a_child_process_stays_within_budget(tmp_path):
    shape, room_mib = (32, 352, 352), 40
    tiles = mosaic_on_disk(tmp_path, shape)
    np.save(tmp_path / "plane.npy", wedge_plane(shape))
    _, grid = fused_extent({t.key: t.origin_um for t in tiles}, {t.key: shape for t in tiles}, VOXEL)
    # holding either the fused volume or the tiles would break the budget
    assert 4 * math.prod(grid) > room_mib * 2**20 and 4 * 4 * math.prod(shape) > room_mib * 2**20
    spec = {
        "tiles": [{"key": t.key, "origin": t.origin_um, "path": t.path} for t in tiles],
        "plane": str(tmp_path / "plane.npy"),
        "shape": shape,
        "voxel": VOXEL,
        "out": str(tmp_path / "fused.zarr"),
        "chunks": (16, 96, 96),
        "room_mib": room_mib,
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD_FUSION, json.dumps(spec)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["peak"] <= result["budget"], (result["peak"] / 2**20, result["budget"] / 2**20)
    assert zarr.open_array(tmp_path / "fused.zarr", mode="r").shape == grid


@pytest.mark.parametrize("scan_axis", ["x", "y"])
def test_tile_from_deskewed_lazy_with_a_compact_mask(tmp_path, scan_axis):
    raw = np.random.default_rng(0).poisson(50, RAW_SHAPE).astype(np.float32)
    result = deskew(raw, DESKEW_DZ, DESKEW_DX, DESKEW_ANGLE, scan_axis=scan_axis)
    path = write_volume(
        tmp_path / "tile.ome.tif",
        result.data,
        result.voxel_size_um,
        {
            "origin_offset_um": result.origin_offset_um,
            "raw_shape_zyx": RAW_SHAPE,
            "deskew": {
                "dz_um": DESKEW_DZ,
                "dx_um": DESKEW_DX,
                "angle_deg": DESKEW_ANGLE,
                "scan_axis": scan_axis,
            },
        },
    )
    expected = deskewed_valid_mask(RAW_SHAPE, DESKEW_DZ, DESKEW_DX, DESKEW_ANGLE, scan_axis=scan_axis)
    loaded = tile_from_deskewed(path, "t", (1.0, 2.0, 3.0))
    lazy = tile_from_deskewed(path, "t", (1.0, 2.0, 3.0), lazy=True)
    assert loaded.data is not None and lazy.data is None
    assert lazy.shape == loaded.shape == result.data.shape
    assert lazy.origin_um == loaded.origin_um == tuple(np.add((1.0, 2.0, 3.0), result.origin_offset_um))
    assert lazy.voxel_size_um == pytest.approx(result.voxel_size_um)
    for tile in (loaded, lazy):
        np.testing.assert_array_equal(tile.valid, expected)
        assert 0 in tile.valid.strides  # one (z, scan axis) plane, broadcast: no memory per voxel
    np.testing.assert_array_equal(
        lazy.read((slice(2, 9), slice(None), slice(5, 40))), result.data[2:9, :, 5:40]
    )


# ------------------------------------------------------------------------------------ files and tables


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_tiles_csv_to_fused_volume_end_to_end(row_world, row_tiles, tmp_path):
    (tmp_path / "tiles").mkdir()
    rows = []
    for tile in row_tiles[:2]:
        write_volume(tmp_path / "tiles" / f"{tile.key}.ome.tif", tile.data.astype(np.uint16), VOXEL)
        z, y, x = tile.origin_um
        rows.append([x, y, z, "acquired", f"tiles/{tile.key}.ome.tif"])  # column order need not match
    table = write_csv(tmp_path / "tiles.csv", ["x_um", "y_um", "z_um", "note", "path"], rows)

    tiles = read_tiles_csv(table)
    assert [t.key for t in tiles] == ["tiles/t0.ome.tif", "tiles/t1.ome.tif"]
    assert tiles[1].origin_um == row_tiles[1].origin_um and tiles[1].shape == ROW_SHAPE
    assert tiles[0].data is None  # read lazily
    assert mosaic_voxel_size(tiles) == pytest.approx(VOXEL)
    np.testing.assert_array_equal(tiles[0].array()[3:5, 10:20, 7], row_tiles[0].data[3:5, 10:20, 7])

    transforms = register_tiles(tiles, mosaic_voxel_size(tiles))
    positions = positions_from_transforms(transforms)
    err = errors_vox(positions, ROW_TRUE[:2], [t.key for t in tiles], tiles[0].key)
    assert np.all(np.abs(err[tiles[1].key]) < 0.5)

    calls = []
    out = fuse_to_zarr(
        tiles,
        positions,
        VOXEL,
        tmp_path / "out" / "fused.zarr",
        chunks=(40, 64, 64),
        progress=lambda done, total: calls.append((done, total)),
    )
    data, origin, _ = read_fused(out)
    n_chunks = math.prod(math.ceil(n / c) for n, c in zip(data.shape, (40, 64, 64), strict=True))
    assert len(calls) == n_chunks and calls[-1] == (n_chunks, n_chunks)
    assert origin == pytest.approx(np.minimum(positions[tiles[0].key], positions[tiles[1].key]))
    assert not list((tmp_path / "out").glob(".*partial"))  # written atomically, nothing left over


def test_read_tiles_csv_errors_name_the_file(tmp_path):
    write_volume(tmp_path / "a.ome.tif", np.zeros((2, 4, 4), np.uint16), VOXEL)

    no_z = write_csv(tmp_path / "no_z.csv", ["path", "x_um", "y_um"], [["a.ome.tif", 0, 0]])
    with pytest.raises(LlsmflowError, match="z_um") as err:
        read_tiles_csv(no_z)
    assert str(no_z) in str(err.value)

    missing = write_csv(tmp_path / "missing.csv", ["path", "x_um", "y_um", "z_um"], [["b.ome.tif", 0, 0, 0]])
    with pytest.raises(LlsmflowError, match="not found") as err:
        read_tiles_csv(missing)
    assert err.value.path == tmp_path / "b.ome.tif" and "b.ome.tif" in str(err.value)

    dup = write_csv(
        tmp_path / "dup.csv",
        ["path", "x_um", "y_um", "z_um"],
        [["a.ome.tif", 0, 0, 0], ["a.ome.tif", 5, 0, 0]],
    )
    with pytest.raises(LlsmflowError, match="already listed on line 2") as err:
        read_tiles_csv(dup)
    assert str(dup) in str(err.value)

    bad = write_csv(tmp_path / "bad.csv", ["path", "x_um", "y_um", "z_um"], [["a.ome.tif", "left", 0, 0]])
    with pytest.raises(LlsmflowError, match="line 2: x_um='left'"):
        read_tiles_csv(bad)

    with pytest.raises(LlsmflowError, match="not found") as err:
        read_tiles_csv(tmp_path / "nowhere.csv")
    assert "nowhere.csv" in str(err.value)


def test_read_transforms_and_fused_errors(tmp_path):
    broken = tmp_path / "t.json"
    broken.write_text("{not json")
    with pytest.raises(LlsmflowError, match="JSON") as err:
        read_transforms(broken)
    assert str(broken) in str(err.value)
    no_origin = tmp_path / "u.json"
    no_origin.write_text(json.dumps({"voxel_size_um": list(VOXEL), "tiles": {"a": {"origin_um": [0, 0]}}}))
    with pytest.raises(LlsmflowError, match="tile 'a': origin_um"):
        read_transforms(no_origin)
    with pytest.raises(LlsmflowError, match="not found"):
        read_fused(tmp_path / "absent.zarr")


def test_unreadable_tile_header_is_one_clear_error(tmp_path):
    from llsmflow.hpc.resources import _tiff_shape
    from llsmflow.stitch._tilefile import _tiff_peek

    bad = tmp_path / "tile.ome.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 12)  # a TIFF signature, no image file directory
    with pytest.raises(LlsmflowError, match=r"cannot read as TIFF \(.*\); expected a tile volume") as err:
        _tiff_peek(bad)
    assert err.value.path == bad
    with pytest.raises(LlsmflowError, match=r"cannot read as TIFF \(.*\); expected a TIFF stack"):
        _tiff_shape(bad)
    with pytest.raises(LlsmflowError, match="file not found"):
        _tiff_peek(tmp_path / "missing.tif")


# ----------------------------------------------------------------------------- package layout and defaults


def _components_reference(keys, links):
    """The tile graph's components as the hand-written search found them before scipy's csgraph did."""
    neighbours = {k: set() for k in keys}
    for link in links:
        neighbours[link.a].add(link.b)
        neighbours[link.b].add(link.a)
    order = {k: i for i, k in enumerate(keys)}
    seen, components = set(), []
    for key in keys:
        if key in seen:
            continue
        stack, component = [key], []
        seen.add(key)
        while stack:
            k = stack.pop()
            component.append(k)
            for n in sorted(neighbours[k] - seen):
                seen.add(n)
                stack.append(n)
        components.append(sorted(component, key=order.__getitem__))
    return components


def test_components_equal_the_hand_written_search():
    from llsmflow.stitch.optimise import _components

    def links(*edges):
        return [PairLink(a, b, (0.0, 0.0, 0.0), 1.0) for a, b in edges]

    keys = ["r", "a", "b", "c", "d", "e", "f"]
    graphs = [
        [],  # no links: every tile alone
        links(("r", "a"), ("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f")),  # a chain
        links(("c", "d"), ("e", "f"), ("r", "b")),  # three pairs and a lone tile, out of key order
        links(("f", "r"), ("a", "e"), ("e", "c"), ("c", "a"), ("a", "e")),  # a cycle, a repeated link
        links(("d", "e"), ("b", "c"), ("c", "b")),  # the reference alone, links both ways
    ]
    rng = np.random.default_rng(0)
    for _ in range(20):  # random graphs, most of them disconnected
        n = int(rng.integers(0, 8))
        graphs.append(links(*(tuple(rng.choice(keys, 2, replace=False)) for _ in range(n))))
    for graph in graphs:
        for order in (keys, keys[::-1]):
            assert _components(order, graph) == _components_reference(order, graph), graph
    # one or two tiles: alone, joined either way, or not joined
    small = [(["r"], []), (["r", "a"], []), (["r", "a"], links(("r", "a"))), (["a", "r"], links(("r", "a")))]
    for order, graph in small:
        assert _components(order, graph) == _components_reference(order, graph), (order, graph)


def test_progress_true_logs_lines(tmp_path, caplog):
    tiles = [Tile("a", (0.0, 0.0, 0.0), None, data=np.ones((4, 8, 8), np.float32))]
    with caplog.at_level(logging.INFO, logger="llsmflow.stitch"):
        fuse_to_zarr(
            tiles, {"a": (0.0, 0.0, 0.0)}, VOXEL, tmp_path / "f.zarr", chunks=(4, 4, 8), progress=True
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fused chunk")]
    assert lines[0].startswith("fused chunk 1/2") and lines[-1].startswith("fused chunk 2/2 (100 %")


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("from llsmflow.stitch.transforms import read_transforms", ["dask", "zarr", "skimage", "scipy"]),
        ("from llsmflow.stitch import read_transforms", ["dask", "zarr", "skimage", "scipy"]),
        (
            "from llsmflow.stitch import register_tiles, tile_from_deskewed, write_transforms",
            ["dask", "zarr", "scipy.signal"],
        ),
        ("from llsmflow.stitch.grid import fused_extent", ["dask", "zarr", "skimage", "scipy"]),
        ("from llsmflow.stitch import read_fused", ["dask", "skimage", "scipy"]),
    ],
)
def test_each_seam_imports_only_its_libraries(statement, absent):
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(done.stdout)
    loaded = set(modules) | {m.split(".")[0] for m in modules}
    assert not loaded & set(absent), (statement, sorted(loaded & set(absent)))

