"""PSFs as facilities have them (skewed or objective-scanned), voxel sizes read from the input files, and the
coverslip frame / QC side views for scan axis y (issue 16, items 3, 4 and 6)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from llsmflow.decon.psf import deskew_psf, prepare_psf, resolve_psf_geometry
from llsmflow.deskew.frames import deskewed_plane_spacing_um, shear_px_per_plane
from llsmflow.errors import LlsmflowError
from llsmflow.io import read_volume, read_volume_description, write_volume
from llsmflow.qc.previews import tile_projection_rows
from llsmflow.synth import psf_sigmas_um, render_emitters
from tests.conftest import run_workflow, workflow_config, write_workflow_config

LLSMFLOW = str(Path(sys.executable).parent / "llsmflow")
JANELIA_PSF = "janelia/psf642_ch0_stack0000_642nm_0000000msec_0008096612msecAbs.tif"


def _cli(*args):
    return subprocess.run([LLSMFLOW, *map(str, args)], capture_output=True, text=True, timeout=300)


def _one_line(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def lls7_geometry(real_data):
    """dz (stage step), dx of the real Zeiss LLS7 hyperstack; angle 30°, scan axis y (field notes)."""
    raw = read_volume(real_data / "lls7_multich_multi_time.tif", channel=0, timepoint=0)
    dz, dy, dx = raw.voxel_size_um
    assert (dz, dx) == pytest.approx((0.3, 0.1449922), rel=1e-5)
    return dz, dx, 30.0


def _skewed_bead(dz, dx, angle, scan_axis, n_scan=101):
    """A stage-scanned bead rendered by the synth geometry, and the objective-frame bead it was made from."""
    shear = shear_px_per_plane(dz, dx, angle)
    dzp = deskewed_plane_spacing_um(dz, angle)
    sigma_z, sigma_xy = psf_sigmas_um(520, 1.0)
    nz, ny = 61, 41
    centre_scan = (n_scan // 2 + (nz // 2) * shear) * dx  # the bead in the middle of the parallelogram
    raw = render_emitters(
        (nz, ny, n_scan),
        np.array([[nz // 2 * dzp, 20 * dx, centre_scan]]),
        np.array([3000.0]),
        dzp,
        dx,
        shear,
        sigma_z,
        sigma_xy,
    )
    truth = render_emitters(
        (nz, ny, ny),
        np.array([[nz // 2 * dzp, 20 * dx, 20 * dx]]),
        np.array([3000.0]),
        dzp,
        dx,
        0.0,
        sigma_z,
        sigma_xy,
    )
    raw, truth = raw + 100.0, truth + 100.0
    if scan_axis == "y":
        raw, truth = raw.transpose(0, 2, 1), truth.transpose(0, 2, 1)
    return raw, truth


def _rms_widths(kernel):
    centre = np.array(kernel.shape) // 2
    widths = []
    for axis in range(3):
        profile = kernel.sum(axis=tuple(a for a in range(3) if a != axis))
        offsets = np.arange(profile.size) - centre[axis]
        widths.append(math.sqrt(float((profile * offsets**2).sum() / profile.sum())))
    return widths


# ---------------------------------------------------------------------------------------------- the rule


def test_auto_rule_and_forced_geometries():
    assert resolve_psf_geometry("auto", (0.3, 0.145, 0.145), 30.0, 0.3)[0] == "skewed"
    assert resolve_psf_geometry("auto", (0.1, 0.145, 0.145), 30.0, 0.3)[0] == "objective"
    assert (
        resolve_psf_geometry("auto", (0.3, 0.145, 0.145), None, None)[0] == "objective"
    )  # not stage-scanned
    assert resolve_psf_geometry("skewed", (0.1, 0.145, 0.145), 30.0, 0.3)[0] == "skewed"
    assert resolve_psf_geometry("objective", (0.3, 0.145, 0.145), 30.0, 0.3)[0] == "objective"
    _, reason = resolve_psf_geometry("auto", (0.3, 0.145, 0.145), 30.0, 0.3)
    assert "equals the data's stage step" in reason
    with pytest.raises(LlsmflowError, match="expected one of auto, skewed, objective"):
        resolve_psf_geometry("sheared", (0.3, 0.1, 0.1), 30.0, 0.3)
    with pytest.raises(LlsmflowError, match="needs the data's sheet angle"):
        resolve_psf_geometry("skewed", (0.3, 0.1, 0.1), None, None)


@pytest.mark.parametrize("scan_axis", ["x", "y"])
def test_auto_reads_the_geometry_from_how_the_bead_moves(scan_axis):
    """With the bead stack, auto follows the bead: a stage scan taken with another z step than the data's is
    still skewed, and an objective scan taken with the data's step is still objective (noise included)."""
    dx, angle, stage_step = 0.104, 31.5, 0.3
    rng = np.random.default_rng(2)
    skewed, _ = _skewed_bead(0.2, dx, angle, scan_axis)  # stage-scanned at 0.2 µm, data at 0.3 µm
    geometry, reason = resolve_psf_geometry(
        "auto", (0.2, dx, dx), angle, stage_step, rng.poisson(skewed).astype(float), scan_axis
    )
    expected = -shear_px_per_plane(0.2, dx, angle)
    assert geometry == "skewed", reason
    assert f"would move it {expected:+.2f}" in reason
    drift = float(reason.split("moves ")[1].split(" px")[0])
    assert drift == pytest.approx(expected, abs=0.1)
    _, objective = _skewed_bead(stage_step, dx, angle, scan_axis)  # the objective-frame bead, 0.3 µm planes
    geometry, reason = resolve_psf_geometry(
        "auto", (stage_step, dx, dx), angle, stage_step, rng.poisson(objective).astype(float), scan_axis
    )
    assert geometry == "objective", reason
    assert "moves +0.00 px" in reason or "moves -0.00 px" in reason


# ---------------------------------------------------------------------------------------------- skewed PSFs


@pytest.mark.parametrize("scan_axis", ["y", "x"])
def test_skewed_bead_deskews_to_its_objective_frame_psf(lls7_geometry, scan_axis):
    """LLS7 geometry (dz 0.3 µm, dx 0.145 µm, 30°; Zeiss scans along y): the deskewed, cropped PSF is one
    centred bead as wide as the objective-frame bead it was rendered from (ground truth)."""
    dz, dx, angle = lls7_geometry
    raw, truth = _skewed_bead(dz, dx, angle, scan_axis)
    dzp = deskewed_plane_spacing_um(dz, angle)
    data_voxel = (dzp, dx, dx)
    kernel = prepare_psf(
        raw, (dz, dx, dx), data_voxel, angle_deg=angle, stage_step_um=dz, scan_axis=scan_axis
    )
    reference = prepare_psf(truth, data_voxel, data_voxel, geometry="objective")
    centre = tuple(np.array(kernel.shape) // 2)
    assert np.unravel_index(int(np.argmax(kernel)), kernel.shape) == centre
    assert kernel.sum() == pytest.approx(1.0, rel=1e-5)
    # a single bead: the bright part (>= 20 % of the peak) is one connected region
    from scipy import ndimage

    assert ndimage.label(kernel >= 0.2 * kernel.max())[1] == 1
    got, want = _rms_widths(kernel), _rms_widths(reference)
    scan = 2 if scan_axis == "x" else 1
    other = 1 if scan_axis == "x" else 2
    assert got[0] == pytest.approx(want[0], rel=0.05)  # axial: the whole main lobe was kept
    assert got[other] == pytest.approx(want[other], rel=0.02)
    # along the scan axis the deskew's linear interpolation adds up to 1/6 px² of variance, as it does to the data
    assert want[scan] <= got[scan] <= math.sqrt(want[scan] ** 2 + 1 / 6) * 1.05
    # without deskewing the same stack is a sheared streak spanning far more planes
    unskewed = prepare_psf(raw, (dz, dx, dx), data_voxel, geometry="objective")
    assert unskewed.shape[scan] > 3 * kernel.shape[scan]


def test_deskew_psf_crops_to_data_only(lls7_geometry):
    dz, dx, angle = lls7_geometry
    raw, _ = _skewed_bead(dz, dx, angle, "y")
    cropped, voxel = deskew_psf(raw, (dz, dx, dx), angle, "y")
    assert voxel == pytest.approx((deskewed_plane_spacing_um(dz, angle), dx, dx))
    assert cropped.shape[2] == raw.shape[2]  # the axis across the scan is kept whole
    border = np.concatenate(
        [cropped[0].ravel(), cropped[-1].ravel(), cropped[:, 0].ravel(), cropped[:, -1].ravel()]
    )
    assert np.median(border) == pytest.approx(100.0, abs=1.0)  # background, not the zero-filled wedges


def test_bead_outside_the_scanned_volume_is_one_clear_error():
    raw = np.full((4, 6, 6), 100.0)
    raw[1, 3, 3] = 5000.0
    with pytest.raises(LlsmflowError, match="leaves no box"):
        deskew_psf(raw, (0.5, 0.104, 0.104), 31.5, "x")


def test_objective_scanned_janelia_psf_is_used_as_is(real_data):
    """Janelia 'Z galvo & piezo' PSF (z step 0.1 µm) with stage-scanned data (stage step 0.4 µm): auto leaves
    it as it is."""
    psf = read_volume(real_data / JANELIA_PSF).data
    psf_voxel, data_voxel = (0.1, 0.104, 0.104), (0.2, 0.104, 0.104)
    assert resolve_psf_geometry("auto", psf_voxel, 31.5, 0.4)[0] == "objective"
    assert resolve_psf_geometry("auto", psf_voxel, 31.5, 0.1, psf)[0] == "objective"  # even at the same step
    auto = prepare_psf(psf, psf_voxel, data_voxel, angle_deg=31.5, stage_step_um=0.4, scan_axis="x")
    np.testing.assert_array_equal(auto, prepare_psf(psf, psf_voxel, data_voxel))


@pytest.mark.skipif(
    importlib.util.find_spec("czifile") is None and importlib.util.find_spec("pylibCZIrw") is None,
    reason="no CZI reader (czifile / pylibCZIrw) installed: the Zeiss PSF CZIs cannot be read here; the LLS7 "
    "geometry is tested with a synthetic skewed bead above",
)
def test_zeiss_psf_czi_prepares(real_data):  # pragma: no cover - runs where a CZI reader is installed
    """The Zeiss LLS7 PSF CZIs (scaling X = Y = 0.14499 µm, Z = 0.1 µm): the bead sits at the same (y, x) in
    every plane, as an objective-frame PSF does (a stage scan at 0.1 µm would move it 0.6 px per plane along
    y), and auto, comparing 0.1 µm with the data's 0.3 µm stage step, uses it as is."""
    import czifile

    for name in ("488_PSF.czi", "561_PSF.czi", "640_PSF.czi"):
        psf = np.squeeze(czifile.imread(real_data / name)).astype(np.float32)
        assert psf.shape == (40, 12, 14)
        lit = [k for k in range(psf.shape[0]) if psf[k].max() >= 0.2 * psf.max()]
        # bead centroid along y (the LLS7 scan axis) in each plane with signal
        centroids = [(np.arange(12) * psf[k].sum(axis=1)).sum() / psf[k].sum() for k in lit]
        assert len(lit) >= 5 and abs(np.polyfit(lit, centroids, 1)[0]) < 0.1
        psf_voxel = (0.1, 0.14499, 0.14499)
        assert resolve_psf_geometry("auto", psf_voxel, 30.0, 0.3)[0] == "objective"
        assert resolve_psf_geometry("auto", psf_voxel, 30.0, 0.1, psf, "y")[0] == "objective"
        kernel = prepare_psf(psf, psf_voxel, (0.15, 0.14499, 0.14499), angle_deg=30.0, stage_step_um=0.3)
        assert np.unravel_index(int(np.argmax(kernel)), kernel.shape) == tuple(np.array(kernel.shape) // 2)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def skewed_case(tmp_path_factory, lls7_geometry):
    """A raw skewed stack (scan axis y, LLS7 geometry, voxel sizes in the file) and a skewed bead PSF file."""
    dz, dx, angle = lls7_geometry
    work = tmp_path_factory.mktemp("skewed")
    rng = np.random.default_rng(1)
    shear = shear_px_per_plane(dz, dx, angle)
    dzp = deskewed_plane_spacing_um(dz, angle)
    sigma_z, sigma_xy = psf_sigmas_um(520, 1.0)
    points = np.column_stack(
        [rng.uniform(2, 4, 12), rng.uniform(0.5, 4, 12), rng.uniform(1, 5, 12)]
    )  # objective (z, y along the scan after the transpose below, x) µm
    raw = render_emitters(
        (40, 40, 48), points[:, [0, 2, 1]], np.full(12, 800.0), dzp, dx, shear, sigma_z, sigma_xy
    )
    raw = (raw + 100 + rng.normal(0, 2, raw.shape)).astype(np.float32).transpose(0, 2, 1)  # scan axis y
    raw_path = work / "raw.ome.tif"
    write_volume(raw_path, np.ascontiguousarray(raw), (dz, dx, dx))
    bead, _ = _skewed_bead(dz, dx, angle, "y")
    psf_path = work / "psf.ome.tif"
    write_volume(psf_path, bead.astype(np.float32), (dz, dx, dx))
    return work, raw_path, psf_path


def test_deskew_and_deconvolve_read_voxel_sizes_and_deskew_a_skewed_psf(skewed_case):
    work, raw_path, psf_path = skewed_case
    deskewed = work / "deskewed.ome.tif"
    result = _cli("deskew", raw_path, deskewed, "--angle", 30, "--scan-axis", "y")  # no --dx/--dz
    assert result.returncode == 0, result.stderr
    vol = read_volume(deskewed)
    assert vol.voxel_size_um == pytest.approx((0.15, 0.1449922, 0.1449922), rel=1e-5)
    stated = read_volume_description(deskewed)
    assert (stated["angle_deg"], stated["stage_step_um"], stated["scan_axis"]) == (
        30.0,
        pytest.approx(0.3),
        "y",
    )

    out = work / "decon.ome.tif"
    result = _cli(
        "deconvolve", deskewed, out, "--psf", psf_path, "--iterations", 2
    )  # every size from the files
    assert result.returncode == 0, result.stderr
    assert "PSF geometry: skewed" in result.stdout
    record = read_volume_description(out)
    assert record["psf_geometry"]["used"] == "skewed"
    assert read_volume(out).voxel_size_um == pytest.approx(vol.voxel_size_um)

    # the same PSF forced to the objective frame spans more planes than the volume: the error says why
    result = _cli(
        "deconvolve", deskewed, work / "x.ome.tif", "--psf", psf_path, "--psf-geometry", "objective"
    )
    line = _one_line(
        result,
        psf_path.name,
        "larger than the volume",
        "must be in the objective frame",
        "--psf-geometry skewed",
    )
    assert "psf.ome.tif" in line
    assert not (work / "x.ome.tif").exists()


def test_rotate_scan_axis_y_through_the_cli(real_data, tmp_path):
    """The real LLS7 hyperstack (scan axis y) to the coverslip frame, voxel sizes from the file."""
    out = tmp_path / "rotated.ome.tif"
    result = _cli(
        "deskew",
        real_data / "lls7_multich_multi_time.tif",
        out,
        "--channel",
        0,
        "--timepoint",
        0,
        "--angle",
        30,
        "--scan-axis",
        "y",
        "--rotate",
    )
    assert result.returncode == 0, result.stderr
    vol = read_volume(out)
    assert vol.voxel_size_um == pytest.approx((0.1449922,) * 3, rel=1e-5)
    # the scan (y) extent grew by the stage travel 501·0.3 µm·cos 30°, x stayed the camera's 13 pixels
    assert vol.data.shape[2] == 13
    assert vol.data.shape[1] * 0.1449922 >= 500 * 0.3 * math.cos(math.radians(30))
    assert read_volume_description(out)["frame"] == "coverslip"


def test_missing_sizes_and_angle_are_one_clear_line(real_data, tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.ones((6, 8, 8), np.uint16), photometric="minisblack")
    _one_line(_cli("deskew", plain, tmp_path / "o.tif", "--angle", 30), "plain.tif", "z spacing", "--dz")
    _one_line(
        _cli("deskew", plain, tmp_path / "o.tif", "--angle", 30, "--dz", 0.3),
        "plain.tif",
        "pixel size",
        "--dx",
    )
    lls7 = real_data / "lls7_multich_multi_time.tif"
    _one_line(
        _cli("deskew", lls7, tmp_path / "o.tif", "--channel", 0, "--timepoint", 0),
        "lls7_multich_multi_time.tif",
        "sheet angle",
        "--angle",
    )
    _one_line(
        _cli("deconvolve", plain, tmp_path / "d.tif", "--psf", plain, "--dz", 0.2),
        "plain.tif",
        "pixel size",
        "--dx",
    )
    assert not list(tmp_path.glob("o.tif*")) and not (tmp_path / "d.tif").exists()


# ---------------------------------------------------------------------------------------------- QC side views


def test_qc_side_view_follows_the_scan_axis():
    rng = np.random.default_rng(0)
    raw, deskewed, decon = (rng.random((5, 7, 9)) for _ in range(3))
    voxel = (0.15, 0.12, 0.1)
    rows_x = tile_projection_rows(raw, deskewed, decon, voxel)
    assert "(ZX)" in rows_x[1][0][0]
    np.testing.assert_array_equal(rows_x[1][0][1], raw.max(axis=1))
    rows_y = tile_projection_rows(raw, deskewed, decon, voxel, scan_axis="y")
    assert "(ZY)" in rows_y[1][0][0]
    np.testing.assert_array_equal(rows_y[1][1][1], deskewed.max(axis=2))
    assert rows_y[1][0][2] == pytest.approx(0.15 / 0.12)
    assert [p[0] for p in rows_y[0]] == [p[0] for p in rows_x[0]]


# ---------------------------------------------------------------------------------------------- workflow


def test_workflow_records_the_psf_geometry(tiny_acquisition, tmp_path):
    """The prepare_psf step is given the config's psf_geometry and the acquisition's angle, stage step and scan
    axis; its record and the prepared PSF say which geometry was used (the synthetic PSFs are objective-scanned:
    0.1 µm z step against a 0.3 µm stage step)."""
    config = workflow_config("psfgeo", tiny_acquisition / "raw")
    write_workflow_config(tmp_path, config)
    run_workflow(tmp_path, "config.yaml", "--", "--until", "prepare_psf", timeout=600)
    work = tmp_path / "work" / "psfgeo"
    record = json.loads((work / "steps" / "prepare_psf" / "ch0.json").read_text())
    assert record["notes"]["psf_geometry"] == "objective"
    assert "an objective scan 0" in record["notes"]["psf_geometry_reason"]
    assert read_volume_description(work / "psf" / "ch0.ome.tif")["psf_geometry"] == "objective"
