"""The ingest-time PSF check compares the kernel the deconvolution will use with the volume it deconvolves, in
the frame the run uses (config ``deskew.rotate``).

With ``deskew.rotate: true`` the workflow's ``prepare_psf`` step prepares the PSF on the rotated volumes'
isotropic grid (voxel ``dx``) and rotates it to the coverslip frame (workflow/scripts/prepare_psf.py), and the
volume deconvolved is the one :func:`llsmflow.deskew.deskew_rotate` makes. The ground truth here is those very
calls run on real files: the real Zeiss LLS7 CZI and its PSF (scan axis y), the real Janelia 642 nm bead stack
(scan axis x) with a synthetic stack of the shape under test. In both cases the objective-frame check (the
check before this one) and the truth disagree: it passed a PSF longer than the rotated LLS7 volume is deep,
and refused the Janelia PSF for a stack of few planes whose rotated volume holds it easily.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from llsmflow.decon.psf import prepare_psf, resolve_psf_geometry, rotate_psf
from llsmflow.deskew import deskew_rotate, deskew_stack, rotated_shape
from llsmflow.errors import LlsmflowError
from llsmflow.ingest import read_acquisition
from llsmflow.io import read_volume
from llsmflow.run.config import check_config
from tests.conftest import REPO, workflow_config, write_workflow_config

JANELIA_PSF = "janelia/psf642_ch0_stack0000_642nm_0000000msec_0008096612msecAbs.tif"


def _truth(acq, rotate: bool):
    """(kernel shape, volume shape) of channel 0 as the workflow makes them: the calls of
    workflow/scripts/prepare_psf.py with the schema's defaults (psf_geometry and psf_background 'auto'), and
    the deskew of the first raw stack in the run's frame (:func:`llsmflow.deskew.deskew_stack`)."""
    channel = acq.channels[0]
    psf = read_volume(acq.psf_path(0)).data
    voxel_psf = channel["psf_voxel_size_um"]
    geometry, _ = resolve_psf_geometry("auto", voxel_psf, acq.angle_deg, acq.dz_um, psf, acq.scan_axis)
    voxel = (acq.dx_um,) * 3 if rotate else tuple(acq.deskewed_voxel_size_um)
    kernel = prepare_psf(
        psf, voxel_psf, voxel, background="auto", geometry=geometry, angle_deg=acq.angle_deg,
        stage_step_um=acq.dz_um, scan_axis=acq.scan_axis,
    )  # fmt: skip
    if rotate:
        kernel = rotate_psf(kernel, acq.dx_um, acq.angle_deg, acq.scan_axis)
    sample = acq.samples.iloc[0]
    raw = read_volume(acq.raw_dir / sample.path, channel=sample.file_channel, timepoint=sample.file_timepoint)
    volume = deskew_stack(
        raw.data, acq.dz_um, acq.dx_um, acq.angle_deg, dy_um=acq.dy_um, scan_axis=acq.scan_axis, rotate=rotate
    )
    return kernel.shape, volume.data.shape


def _fits(kernel_shape, volume_shape) -> bool:
    return all(k <= n for k, n in zip(kernel_shape, volume_shape, strict=True))


def test_rotated_lls7_volume_is_shallower_than_its_psf(real_data, tmp_path):
    """Real LLS7 CZI (81 × 11 × 13 raw, scan axis y) and its real 488 nm PSF: in the objective frame the kernel
    (23 planes) fits the 81 deskewed planes, but rotated to the coverslip frame the volume is 6 voxels deep:
    the check with rotate refuses it, naming the frame, the file and the shapes the workflow would make."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("LLS7_t1_ch1.czi", "488_PSF.czi"):
        shutil.copy(real_data / name, raw / name)
    acq = read_acquisition(raw)  # objective frame: the check passes, and the truth agrees
    assert _fits(*_truth(acq, rotate=False))
    kernel, volume = _truth(acq, rotate=True)
    assert not _fits(kernel, volume)  # what the deconvolution of the rotated volume would meet
    with pytest.raises(LlsmflowError) as error:
        read_acquisition(raw, rotate=True)
    line = str(error.value)
    assert "\n" not in line and "488_PSF.czi" in line
    assert f"PSF of channel 0 spans {kernel} voxels (ZYX) on the coverslip-frame grid" in line
    assert f"larger than the rotated volume {volume}" in line and "deskew.rotate: false" in line

    # the config's deskew.rotate reaches the check as `llsmflow run` makes it
    config = workflow_config("lls7", raw, metadata=str(raw / "LLS7_t1_ch1.czi"))
    config["deskew"]["rotate"] = True
    with pytest.raises(LlsmflowError, match="on the coverslip-frame grid"):
        check_config(write_workflow_config(tmp_path / "run", config), REPO)


def _janelia_psf_folder(real_data, raw, shape) -> None:
    """acquisition.json with the Janelia sample's geometry (stage step 0.4 µm, 31°, Orca 4.0 at 61.9×), one
    synthetic stack of ``shape``, the real Janelia 642 nm bead stack as its PSF."""
    raw.mkdir()
    shutil.copy(real_data / JANELIA_PSF, raw / "psf.tif")
    rng = np.random.default_rng(0)
    tifffile.imwrite(raw / "cell_ch0_t0000.tif", rng.integers(100, 200, shape, dtype=np.uint16))
    meta = {
        "scan_axis": "x", "angle_deg": 31.0, "dz_um": 0.4, "dx_um": 6.5 / 61.90476, "time_interval_s": 4.0,
        "timepoints": 1, "file_regex": r"^cell_ch(?P<channel>\d+)_t(?P<timepoint>\d+)\.tif$",
        "channels": [
            {"psf": "psf.tif", "psf_voxel_size_um": [0.1, 6.5 / 63.8, 6.5 / 63.8], "excitation_nm": 642,
             "emission_nm": 680}
        ],
    }  # fmt: skip
    (raw / "acquisition.json").write_text(json.dumps(meta), encoding="utf-8")


def test_rotated_volume_of_few_planes_holds_the_janelia_psf(real_data, tmp_path):
    """16 planes of 128 columns: the objective-frame kernel (25 planes at dz·sin θ) is longer than the 16
    deskewed planes, but the rotated volume (66 × 40 × 167) holds the rotated kernel (49 × 37 × 43): with
    rotate the PSF is accepted, as the deconvolution of the rotated volume would accept it."""
    raw = tmp_path / "raw"
    _janelia_psf_folder(real_data, raw, (16, 40, 128))
    acq = read_acquisition(raw, check_files=False)
    assert not _fits(*_truth(acq, rotate=False))
    with pytest.raises(LlsmflowError, match=r"on the deskewed grid, larger than the deskewed volume"):
        read_acquisition(raw)
    assert _fits(*_truth(acq, rotate=True))
    read_acquisition(raw, rotate=True)  # accepted


@pytest.mark.parametrize("scan_axis", ["x", "y"])
@pytest.mark.parametrize(
    ("shape", "dz", "dx", "dy", "angle", "out"),
    [
        ((16, 40, 128), 0.4, 0.105, 0.105, 31.0, None),
        ((81, 11, 13), 0.3, 0.145, 0.145, 30.0, None),
        ((9, 7, 12), 0.5, 0.104, 0.12, -31.5, 0.2),
    ],
)
def test_rotated_shape_is_the_shape_deskew_rotate_makes(scan_axis, shape, dz, dx, dy, angle, out):
    made = deskew_rotate(np.zeros(shape, np.float32), dz, dx, angle, dy, out, scan_axis=scan_axis)[0]
    assert rotated_shape(shape, dz, dx, angle, dy, out, scan_axis) == made.shape


def test_the_check_subtracts_the_configs_psf_background(tmp_path):
    """The check prepares the kernel with the config's ``deconvolution.psf_background``, as the prepare_psf
    step does: the background sets the bead's support, hence the kernel's size (here 25 planes with "auto",
    15 with 150 counts), so a volume of 20 planes fits one kernel and not the other."""
    from llsmflow.decon.psf import prepare_psf_for_run
    from llsmflow.ingest.files import check_psf
    from llsmflow.io import write_volume

    rng = np.random.default_rng(0)
    z, y, x = np.indices((41, 41, 41))
    bead = 100 + 1000 * np.exp(-((z - 20) ** 2 / 18.0 + (y - 20) ** 2 / 4.5 + (x - 20) ** 2 / 4.5))
    path = tmp_path / "psf.ome.tif"
    write_volume(path, rng.poisson(bead).astype(np.uint16), (0.2, 0.1, 0.1), compression=None)
    voxel, volume = (0.2, 0.1, 0.1), (20, 64, 64)
    psf = read_volume(path).data
    assert prepare_psf_for_run(psf, voxel, voxel, background="auto")[0].shape[0] > 20  # the truth: too long
    assert prepare_psf_for_run(psf, voxel, voxel, background=150)[0].shape[0] <= 20  # fits
    with pytest.raises(LlsmflowError, match=r"PSF of channel 0 spans \(25, "):
        check_psf(path, voxel, voxel, volume, 0, "objective", rotate=False, background="auto")
    check_psf(path, voxel, voxel, volume, 0, "objective", rotate=False, background=150)


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("scan_axis", ["x", "y"])
def test_deconvolved_grid_is_the_grid_deskew_stack_makes(scan_axis, rotate):
    """The shape and voxel the ingest check and the resource model use are those of the volume the job
    deskews, with the scan axis's own pixel size (here dy != dx)."""
    from llsmflow.deskew.frames import deconvolved_grid

    shape, dz, dx, dy, angle = (12, 20, 24), 0.4, 0.1, 0.13, 31.5
    made = deskew_stack(np.ones(shape, np.float32), dz, dx, angle, dy, scan_axis, rotate=rotate)
    grid_shape, grid_voxel = deconvolved_grid(shape, dz, dx, dy, angle, scan_axis, rotate)
    assert grid_shape == made.data.shape
    np.testing.assert_allclose(grid_voxel, made.voxel_size_um, rtol=1e-12)
