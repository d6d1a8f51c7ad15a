"""Issue 16, last items: coverslip-frame output in the workflow (``deskew.rotate``), timepoints missing from
the acquisition (``ingest.allow_missing_timepoints``) and a single timepoint (tracking skipped).

Two real workflow runs on tiny synthetic acquisitions (module-scoped, each run once):

- ``rotated_gap_run``: 2 tiles (across the scan) × 1 channel × timepoints 0, 1, 3 of 4 (timepoint 2 deleted),
  ``deskew.rotate: true`` and ``ingest.allow_missing_timepoints: true``;
- ``single_timepoint_run``: 1 tile × 1 channel × 1 timepoint.

The ground truth (``truth/``) is in the objective frame; the coverslip frame is its rotation
(:func:`llsmflow.deskew.frame_rotation_matrix`), the origin staying tile (0, 0)'s raw origin.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import zarr

from llsmflow.deskew import deskew_rotate, frame_rotation_matrix, rotated_valid_mask
from llsmflow.errors import LlsmflowError
from llsmflow.synth import generate
from tests.conftest import run_workflow, tiny_params, workflow_command, workflow_config, write_workflow_config

ANGLE = 31.5  # the synthetic acquisition's sheet angle (SynthParams default), degrees
TIMES_S = [0.0, 2.0, 6.0]  # timepoints 0, 1, 3 at the synthetic 2 s interval: timepoint 2 is missing


def _archive_image(archive):
    """(TCZYX array of the full-resolution level, scale, translation) of an OME-Zarr archive."""
    group = zarr.open_group(str(archive), mode="r")
    attrs = dict(group.attrs)
    multiscales = attrs.get("ome", attrs)["multiscales"][0]
    dataset = multiscales["datasets"][0]
    transforms = {t["type"]: t for t in dataset["coordinateTransformations"]}
    return (
        group[dataset["path"]],
        multiscales,
        np.asarray(transforms["scale"]["scale"]),
        np.asarray(transforms.get("translation", {"translation": [0.0] * 5})["translation"]),
        attrs["llsmflow"],
    )


@pytest.fixture(scope="module")
def gap_acquisition(tmp_path_factory):
    base = tmp_path_factory.mktemp("i16_gap")
    generate(base / "acquisition", tiny_params(channels=1, timepoints=4, tiles_y=2))
    for stack in (base / "acquisition" / "raw").glob("*_0002t.tif"):
        stack.unlink()
    return base


@pytest.fixture(scope="module")
def rotated_gap_run(gap_acquisition):
    run_dir = gap_acquisition / "run"
    config = workflow_config("gap", gap_acquisition / "acquisition" / "raw")
    config["deskew"]["rotate"] = True
    config["ingest"] = {"allow_missing_timepoints": True}
    config["deconvolution"]["iterations"] = 2
    run_workflow(run_dir, write_workflow_config(run_dir, config))
    return run_dir


def test_missing_timepoint_without_the_option_is_one_line_exit_2(gap_acquisition, tmp_path):
    config = workflow_config("gap", gap_acquisition / "acquisition" / "raw")
    result = subprocess.run(
        workflow_command(write_workflow_config(tmp_path, config)), cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llsmflow run: error: ")
    assert "no stack at all for timepoint(s) 2 of the 4 declared" in lines[0]
    assert "ingest.allow_missing_timepoints: true" in lines[0]
    assert not (tmp_path / "results").exists()


def test_rotated_archive_has_the_coverslip_frame_voxel_sizes_and_real_times(rotated_gap_run, gap_acquisition):
    meta = json.loads((gap_acquisition / "acquisition" / "raw" / "acquisition.json").read_text())
    image, multiscales, scale, _, attrs = _archive_image(rotated_gap_run / "results/gap/gap.ome.zarr")
    assert [a["name"] for a in multiscales["axes"]] == ["t", "c", "z", "y", "x"]
    dx = meta["dx_um"]
    # coverslip frame: isotropic voxels of the camera pixel size (objective frame would be dz·sin θ, dx, dx)
    assert scale == pytest.approx([meta["time_interval_s"], 1.0, dx, dx, dx])
    assert image.shape[:2] == (3, 1)
    # the real time of every frame, the gap recorded
    assert attrs["time"] == {
        "timepoints": [0, 1, 3],
        "times_s": TIMES_S,
        "missing_timepoints": [2],
        "nominal_interval_s": meta["time_interval_s"],
    }
    assert attrs["acquisition"]["missing_timepoints"] == [2]
    assert attrs["processing"]["deskew"]["rotate"] is True
    # recorded by the ingest step: its record and its log
    work = rotated_gap_run / "work/gap"
    notes = json.loads((work / "steps/ingest.json").read_text())["notes"]
    assert notes["missing_timepoints"] == [2] and notes["frame_times_s"] == TIMES_S
    assert "timepoint(s) [2] have no stack" in (work / "logs/ingest.log").read_text()
    # the PSF was rotated like the data: same frame, same isotropic voxels
    psf_notes = json.loads((work / "steps/prepare_psf/ch0.json").read_text())["notes"]
    assert psf_notes["frame"] == "coverslip"


def test_tracks_carry_real_times_and_lie_on_the_truth_in_the_coverslip_frame(rotated_gap_run, gap_acquisition):
    tracks = pd.read_parquet(rotated_gap_run / "results/gap/tracks/ch0.parquet")
    # frame = the timepoint number (the gap is two frames long, not one), t_s its real time
    assert set(tracks["frame"]) == {0, 1, 3}
    assert dict(zip(tracks["frame"], tracks["t_s"], strict=True)) == {0: 0.0, 1: 2.0, 3: 6.0}
    # with track.memory 1 a particle may skip the missing frame: tracks run across the gap
    spans = tracks.groupby("particle")["frame"].agg(["min", "max"])
    assert ((spans["min"] == 0) & (spans["max"] == 3)).sum() >= 6
    truth = pd.read_csv(gap_acquisition / "acquisition/truth/trajectories.csv")
    truth = truth[truth.channel == 0]
    rotation = frame_rotation_matrix(ANGLE, "x")
    errors, n_true = [], 0
    for frame, points in tracks.groupby("frame"):
        true = truth[truth.frame == frame][["z_um", "y_um", "x_um"]].to_numpy() @ rotation.T
        n_true += len(true)
        found = points[["z_um", "y_um", "x_um"]].to_numpy()
        distance = np.linalg.norm(found[:, None, :] - true[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(found)), nearest] < 0.5
        errors.append(found[close] - true[nearest[close]])
    errors = np.concatenate(errors)
    # tolerance: 90 % of the true particles found within 0.5 µm, RMS error per axis below half a voxel
    assert len(errors) >= 0.9 * n_true, (len(errors), n_true)
    dx = 0.104
    assert np.all(np.sqrt((errors**2).mean(axis=0)) < 0.5 * dx), np.sqrt((errors**2).mean(axis=0))


def test_rotated_tiles_register_to_the_true_positions_and_fuse_without_dark_seams(
    rotated_gap_run, gap_acquisition
):
    work = rotated_gap_run / "work/gap"
    transforms = json.loads((work / "stitch/transforms.json").read_text())
    voxel = np.asarray(transforms["voxel_size_um"])
    assert voxel == pytest.approx([0.104] * 3)
    truth = json.loads((gap_acquisition / "acquisition/truth/tiles.json").read_text())["tiles"]
    rotation = frame_rotation_matrix(ANGLE, "x")
    reference = transforms["reference"]
    tiles = transforms["tiles"]
    assert transforms["pairs"] and all(p["used"] for p in transforms["pairs"])
    for name in tiles:
        found = np.asarray(tiles[name]["origin_um"]) - np.asarray(tiles[reference]["origin_um"])
        expected = rotation @ (np.asarray(truth[name]["origin_um"]) - np.asarray(truth[reference]["origin_um"]))
        assert np.all(np.abs(found - expected) < 0.5 * voxel), (name, found, expected)

    image, _, scale, translation, _ = _archive_image(rotated_gap_run / "results/gap/gap.ome.zarr")
    volume = np.asarray(image[0, 0])
    meta = json.loads((gap_acquisition / "acquisition/raw/acquisition.json").read_text())
    raw_shape = tuple(meta["raw_shape_zyx"])
    index = np.indices(volume.shape).reshape(3, -1).T
    position = translation[2:] + index * scale[2:]

    def placed(margin):
        """Each tile's data region (rotated_valid_mask) at its registered position on the mosaic grid."""
        masks = []
        for entry in tiles.values():
            mask = rotated_valid_mask(raw_shape, meta["dz_um"], meta["dx_um"], ANGLE, margin_px=margin)
            at = np.rint((position - np.asarray(entry["origin_um"])) / voxel).astype(int)
            inside = np.all((at >= 0) & (at < np.asarray(mask.shape)), axis=1)
            out = np.zeros(len(index), dtype=bool)
            out[inside] = mask[at[inside, 0], at[inside, 1], at[inside, 2]]
            masks.append(out.reshape(volume.shape))
        return masks

    core, full = placed(2), placed(0)
    overlap = core[0] & core[1]
    single = core[0] ^ core[1]
    assert overlap.sum() > 10_000 and single.sum() > 100_000
    # no seam: where both tiles have data the mosaic is as bright as where one has (a tile's border or wedge
    # blended in would darken the overlap); every frame
    for t in range(image.shape[0]):
        volume = np.asarray(image[t, 0])
        assert volume[overlap].mean() == pytest.approx(volume[single].mean(), rel=0.15), t
        # where no tile has data the mosaic stays empty
        assert np.all(volume[~(full[0] | full[1])] == 0)


def _scene(cov_zyx):
    """A smooth positive scene (camera offset 100 plus structure) at coverslip positions (µm)."""
    z, y, x = cov_zyx
    return 100.0 + 60.0 * (1.0 + np.sin(x / 1.3) * np.cos(y / 1.1) * np.cos(z / 0.9))


def _rotated_tile(path, name, stage_zyx_um, raw_shape, scan_axis):
    """A raw stage scan of :func:`_scene` at a stage position, deskewed and rotated as the workflow's deskew
    job does (same metadata), read back by tile_from_deskewed at the nominal origin ingest would give."""
    from llsmflow.deskew import deskewed_plane_spacing_um, shear_px_per_plane, stage_to_objective_um
    from llsmflow.io import write_volume
    from llsmflow.stitch.tiles import tile_from_deskewed

    dz, dx = 0.3, 0.104
    shear, dzp = shear_px_per_plane(dz, dx, ANGLE), deskewed_plane_spacing_um(dz, ANGLE)
    k, j, i = np.indices(raw_shape).astype(float)
    if scan_axis == "x":
        objective = np.stack([k * dzp, j * dx, (i + k * shear) * dx])
    else:
        objective = np.stack([k * dzp, (j + k * shear) * dx, i * dx])
    coverslip = np.tensordot(frame_rotation_matrix(ANGLE, scan_axis), objective, axes=1)
    raw = _scene(coverslip + np.asarray(stage_zyx_um, float)[:, None, None, None]).astype(np.float32)
    data, voxel, origin = deskew_rotate(raw, dz, dx, ANGLE, scan_axis=scan_axis)
    deskew = {"dz_um": dz, "dx_um": dx, "dy_um": dx, "angle_deg": ANGLE, "scan_axis": scan_axis, "rotate": True}
    write_volume(path, data, voxel, {"origin_offset_um": origin, "raw_shape_zyx": raw.shape, "deskew": deskew})
    sz, sy, sx = stage_zyx_um
    return tile_from_deskewed(path, name, stage_to_objective_um((sx, sy, sz), ANGLE))


@pytest.mark.parametrize("scan_axis", ["x", "y"])
def test_rotated_tiles_along_the_scan_fuse_with_their_wedges_left_out(tmp_path, scan_axis):
    """Two tiles half a scan length apart along the scan axis: in the coverslip frame one tile's empty wedge
    lies on the other's data. Placed by their stage positions and fused with their validity masks, the mosaic
    is the scene (no darkening there); without the masks it would be darkened."""
    from llsmflow.stitch.fused import read_fused
    from llsmflow.stitch.fusion import fuse_to_zarr

    raw_shape = (24, 20, 40) if scan_axis == "x" else (24, 40, 20)
    scan = 2 if scan_axis == "x" else 1
    shift = [0.0, 0.0, 0.0]
    shift[scan] = 0.5 * raw_shape[0] * 0.3
    tiles = [
        _rotated_tile(tmp_path / "a.ome.tif", "a", (0.0, 0.0, 0.0), raw_shape, scan_axis),
        _rotated_tile(tmp_path / "b.ome.tif", "b", tuple(shift), raw_shape, scan_axis),
    ]
    assert np.subtract(tiles[1].origin_um, tiles[0].origin_um) == pytest.approx(shift, abs=1e-9)
    results = {}
    for masked in (True, False):
        if not masked:
            for tile in tiles:
                tile.valid = None
        out = tmp_path / f"fused-{masked}.zarr"
        fuse_to_zarr(tiles, {t.key: t.origin_um for t in tiles}, tiles[0].voxel_size_um, out, blend_width_um=0.5)
        data, origin, voxel = read_fused(out)
        results[masked] = np.asarray(data)
    grid = np.indices(results[True].shape) * np.asarray(voxel)[:, None, None, None]
    truth = _scene(grid + np.asarray(origin)[:, None, None, None])
    # where the mosaic has data it is the scene (linear interpolation error only; measured: below 0.6 %),
    # across the seam and where one tile's wedge lies on the other's data
    has = results[True] > 0
    assert has.mean() > 0.5
    assert np.all(np.abs(results[True][has] - truth[has]) < 0.02 * truth[has])
    # the same tiles without their masks: their wedges (0) are blended in, halving the scene there
    assert (results[False][has] < 0.8 * truth[has]).sum() > 5_000


@pytest.mark.parametrize("scan_axis", ["x", "y"])
def test_rotated_valid_mask_is_where_deskew_rotate_wrote_data(scan_axis):
    raw = np.random.default_rng(1).uniform(1.0, 2.0, (12, 10, 14)).astype(np.float32)
    volume, _, _ = deskew_rotate(raw, 0.3, 0.104, ANGLE, dy_um=0.11, scan_axis=scan_axis, fill_value=-1.0)
    exact = rotated_valid_mask(raw.shape, 0.3, 0.104, ANGLE, dy_um=0.11, scan_axis=scan_axis, margin_px=0)
    assert exact.shape == volume.shape
    assert np.array_equal(exact, volume >= 0) and 0.2 < exact.mean() < 0.9
    eroded = rotated_valid_mask(raw.shape, 0.3, 0.104, ANGLE, dy_um=0.11, scan_axis=scan_axis)
    assert eroded.sum() < exact.sum() and np.all(exact[eroded])


@pytest.mark.parametrize("scan_axis", ["x", "y"])
def test_rotate_psf_turns_the_long_axis_like_the_data(scan_axis):
    from llsmflow.decon.psf import rotate_psf

    z, y, x = np.mgrid[-15:16, -15:16, -15:16].astype(float)
    kernel = np.exp(-0.5 * ((z / 6) ** 2 + (y / 2) ** 2 + (x / 2) ** 2))  # long along the objective axis
    rotated = rotate_psf(kernel / kernel.sum(), 0.1, ANGLE, scan_axis)
    centre = np.array(rotated.shape) // 2
    assert np.unravel_index(rotated.argmax(), rotated.shape) == tuple(centre)
    assert rotated.sum() == pytest.approx(1.0, rel=1e-5)
    offsets = np.indices(rotated.shape).reshape(3, -1).T - centre
    covariance = (offsets * rotated.ravel()[:, None]).T @ offsets
    long_axis = np.linalg.eigh(covariance)[1][:, -1]
    expected = frame_rotation_matrix(ANGLE, scan_axis) @ [1.0, 0.0, 0.0]
    assert abs(long_axis @ expected) > 0.999


def test_linking_counts_a_gap_as_the_frames_it_lasted():
    from llsmflow.track import track_particles

    voxel = (0.2, 0.1, 0.1)
    shape = (16, 40, 40)
    starts = np.array([[1.6, 1.0, 1.0], [1.6, 2.5, 2.8], [1.4, 3.0, 1.2]])
    frames = []
    zz, yy, xx = np.indices(shape) * np.asarray(voxel)[:, None, None, None]
    for step in range(4):
        volume = np.full(shape, 10.0)
        for p in starts + step * 0.05:
            distance2 = ((zz - p[0]) / 0.3) ** 2 + ((yy - p[1]) / 0.12) ** 2 + ((xx - p[2]) / 0.12) ** 2
            volume += 200 * np.exp(-0.5 * distance2)
        frames.append(volume.astype(np.float32))
    common = dict(diameter_um=0.5, search_range_um=0.5, min_track_length=1, min_mass=50.0)
    # timepoints 0, 1, 3, 4 (2 missing): t_s are the real times; without memory the gap breaks every track
    gapped = track_particles(
        frames, voxel, 2.0, memory=0, frame_numbers=[0, 1, 3, 4], times_s=[0.0, 2.0, 6.1, 8.0], **common
    )
    assert dict(zip(gapped["frame"], gapped["t_s"], strict=True)) == {0: 0.0, 1: 2.0, 3: 6.1, 4: 8.0}
    assert gapped["particle"].nunique() == 6
    # memory 1: a particle may be missing for the one lost frame and keeps its identity across the gap
    assert track_particles(frames, voxel, 2.0, memory=1, frame_numbers=[0, 1, 3, 4], **common)[
        "particle"
    ].nunique() == 3
    # the old reading of the same volumes as consecutive frames links straight through
    consecutive = track_particles(frames, voxel, 2.0, memory=0, **common)
    assert consecutive["particle"].nunique() == 3 and sorted(set(consecutive["t_s"])) == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(LlsmflowError, match="strictly increasing"):
        track_particles(frames, voxel, 2.0, frame_numbers=[0, 1, 1, 2], **common)
    with pytest.raises(LlsmflowError, match="times_s has 3 entries for 4 frames"):
        track_particles(iter(frames), voxel, 2.0, times_s=[0.0, 2.0, 6.0], **common)


@pytest.fixture(scope="module")
def single_timepoint_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("i16_single")
    generate(base / "acquisition", tiny_params(channels=1, timepoints=1, tiles_y=1))
    run_dir = base / "run"
    config = workflow_config("single", base / "acquisition" / "raw")
    config["deconvolution"]["iterations"] = 1
    result = run_workflow(run_dir, write_workflow_config(run_dir, config))
    return run_dir, result


def test_single_timepoint_skips_tracking_and_says_so(single_timepoint_run):
    run_dir, result = single_timepoint_run
    message = "one timepoint (0): nothing to link, tracking skipped"
    results = run_dir / "results/single"
    # the archive is written, with no track table passed off as a result
    image, _, _, _, attrs = _archive_image(results / "single.ome.zarr")
    assert image.shape[:2] == (1, 1)
    assert attrs["tracking"] == {"skipped": message}
    assert attrs["tables"] == {}
    assert not (results / "tracks").exists()
    # the run's log, the ingest step's log and record, the QC report
    assert message in result.stderr
    work = run_dir / "work/single"
    assert message in (work / "logs/ingest.log").read_text()
    assert json.loads((work / "steps/ingest.json").read_text())["notes"]["tracking_skipped"] == message
    report = (results / "qc/report.html").read_text()
    assert "Tracking skipped:</strong> " + message in report
