"""Instrument readers on real files (../shared/data/real, see the field notes): Zeiss LLS7 CZI, Janelia/3i
Settings.txt + stacks, ImageJ hyperstacks; ``llsmflow init`` on each writes a config the schema accepts.

The real files are read where they lie or copied into ``tmp_path`` (a raw folder must hold its files: links
out of it are refused); nothing is copied into the repository.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from llsmflow.errors import LlsmflowError
from llsmflow.ingest import detect_format, parse_settings, read_acquisition, read_czi_info
from llsmflow.io import read_header, read_volume

REPO = Path(__file__).resolve().parents[1]
REAL = (REPO.parent / "shared" / "data" / "real").resolve()
if not REAL.is_dir():  # a worktree beside /work/main
    REAL = Path("/work/shared/data/real")
JANELIA = REAL / "janelia"
JANELIA_PSF = "psf642_ch0_stack0000_642nm_0000000msec_0008096612msecAbs.tif"
DX = 0.14499219272808386

pytestmark = pytest.mark.skipif(
    not REAL.is_dir(), reason="real sample data (../shared/data/real) not present"
)


def _copy(names, dest: Path, source: Path = REAL) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source / name, dest / name)
    return dest


def _init(raw: Path, out: Path, *flags) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llsmflow.cli", "init", str(raw), "-o", str(out), "--no-input", *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def _validate_against_schema(path: Path) -> dict:
    import jsonschema

    config = yaml.safe_load(path.read_text())
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    return config


# ---- Zeiss CZI ------------------------------------------------------------------------------------------


def test_czi_one_channel_metadata():
    info = read_czi_info(REAL / "LLS7_t1_ch1.czi")
    assert info.shape_tczyx == (1, 1, 81, 11, 13)
    assert info.dtype == "uint16"
    assert info.voxel_size_um == pytest.approx((0.3, DX, DX))
    assert info.z_axis_shear == "Skew60"
    assert info.angle_deg == 30.0
    assert info.scan_axis == "y"
    assert [c["name"] for c in info.channels] == ["LLS1"]
    assert info.channels[0]["excitation_nm"] == 488.0
    assert info.channels[0]["emission_nm"] is None  # NaN in the file: unknown
    assert info.time_s == [0.0]


def test_czi_three_channels_two_timepoints_metadata():
    info = read_czi_info(REAL / "LLS7_t2_ch3.czi")
    assert info.shape_tczyx == (2, 3, 81, 11, 13)
    assert info.voxel_size_um == pytest.approx((0.3, DX, DX))
    assert info.angle_deg == 30.0 and info.scan_axis == "y"
    assert [c["name"] for c in info.channels] == ["LLS1", "LLS2", "LLS1_2"]
    assert [c["excitation_nm"] for c in info.channels] == [488.0, 488.0, 561.0]
    assert [c["emission_nm"] for c in info.channels] == [None, 525.0, 596.5]
    assert info.time_s == [0.0, 3.54]
    assert info.start_time == "2023-03-22T02:15:11.316393Z"


@pytest.mark.parametrize("wave", [488, 561, 640])
def test_czi_psf_metadata(wave):
    info = read_czi_info(REAL / f"{wave}_PSF.czi")
    assert info.shape_tczyx == (1, 1, 40, 12, 14)
    assert info.voxel_size_um == pytest.approx((0.1, DX, DX))
    volume = read_volume(REAL / f"{wave}_PSF.czi")
    assert volume.data.shape == (40, 12, 14)
    assert volume.voxel_size_um == pytest.approx((0.1, DX, DX))


def test_czi_volumes_by_channel_and_timepoint_equal_the_whole_file():
    import czifile

    path = REAL / "LLS7_t2_ch3.czi"
    with czifile.CziFile(path) as czi:
        whole = czi.asarray()[..., 0]  # TCZYX
    for t in range(2):
        for c in range(3):
            volume = read_volume(path, channel=c, timepoint=t)
            np.testing.assert_array_equal(volume.data, whole[t, c])
            assert volume.voxel_size_um == pytest.approx((0.3, DX, DX))
    assert read_header(path, channel=2, timepoint=1) == ((81, 11, 13), np.dtype("uint16"))
    with pytest.raises(LlsmflowError, match="has 3 entries along C; expected one"):
        read_volume(path)
    with pytest.raises(LlsmflowError, match=r"T index 2 out of range; expected 0\.\.1"):
        read_volume(path, channel=0, timepoint=2)


def test_czi_folder_reads_as_an_acquisition(tmp_path):
    raw = _copy(["LLS7_t2_ch3.czi", "488_PSF.czi", "561_PSF.czi", "640_PSF.czi"], tmp_path / "raw")
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert detect_format(raw) == ("czi", raw / "LLS7_t2_ch3.czi")
    acq = read_acquisition(raw)
    assert (acq.format, acq.instrument) == ("czi", "Zeiss Lattice Lightsheet 7")
    assert (acq.angle_deg, acq.dz_um, acq.scan_axis) == (30.0, pytest.approx(0.3), "y")
    assert acq.dx_um == acq.dy_um == pytest.approx(DX)
    assert acq.channel_names == ["LLS1", "LLS2", "LLS1_2"]
    assert [c["psf"] for c in acq.channels] == ["488_PSF.czi", "488_PSF.czi", "561_PSF.czi"]
    # no geometry claimed for Zeiss PSFs: the workflow measures it from the bead (docs/instruments.md)
    assert not any("psf_geometry" in c for c in acq.channels)
    assert acq.channels[0]["psf_voxel_size_um"] == pytest.approx([0.1, DX, DX])
    assert acq.timepoints == [0, 1]
    assert list(acq.samples["time_s"]) == [0.0, 0.0, 0.0, 3.54, 3.54, 3.54]
    assert acq.time_interval_s == pytest.approx(3.54)
    selector = acq.sample_selector("000x_000y_000z-ch2-t0001")
    assert selector == {"path": raw / "LLS7_t2_ch3.czi", "channel": 2, "timepoint": 1}
    assert acq.display_wavelengths_nm == [488.0, 525.0, 596.5]  # LLS1's emission is unknown: excitation
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before  # raw data untouched


def test_czi_folder_with_two_acquisitions_names_them(tmp_path):
    raw = _copy(["LLS7_t1_ch1.czi", "LLS7_t2_ch3.czi", "488_PSF.czi"], tmp_path / "raw")
    with pytest.raises(LlsmflowError, match=r"holds 2 CZI acquisitions \(LLS7_t1_ch1.czi, LLS7_t2_ch3.czi\)"):
        read_acquisition(raw)
    acq = read_acquisition(raw, metadata_path="LLS7_t1_ch1.czi")  # the config's metadata chooses one
    assert acq.channel_names == ["LLS1"] and acq.timepoints == [0]


def test_czi_channel_without_psf_is_one_line(tmp_path):
    raw = _copy(["LLS7_t2_ch3.czi", "488_PSF.czi"], tmp_path / "raw")
    with pytest.raises(LlsmflowError) as error:
        read_acquisition(raw)
    message = str(error.value)
    assert "channel 2 (LLS1_2, excitation 561.0 nm) has no PSF" in message and str(raw) in message
    assert "\n" not in message


def test_acquisition_json_overrides_czi_fields(tmp_path):
    raw = _copy(["LLS7_t2_ch3.czi", "488_PSF.czi", "561_PSF.czi"], tmp_path / "raw")
    override = tmp_path / "acquisition.json"
    override.write_text('{"angle_deg": 31.5, "channels": [{"emission_nm": 510}]}')
    acq = read_acquisition(raw, metadata_path=override, overrides={"dz_um": 0.25})
    assert acq.angle_deg == 31.5 and acq.dz_um == 0.25
    assert acq.channels[0]["emission_nm"] == 510 and acq.channels[0]["name"] == "LLS1"
    assert acq.metadata_path == raw / "LLS7_t2_ch3.czi"


def test_init_on_czi_folder_writes_a_valid_config(tmp_path):
    raw = _copy(["LLS7_t2_ch3.czi", "488_PSF.czi", "561_PSF.czi", "640_PSF.czi"], tmp_path / "raw")
    out = tmp_path / "config.yaml"
    result = _init(raw, out)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for expected in (
        "Zeiss Lattice Lightsheet 7",
        "LLS1  excitation 488 nm, emission unknown  PSF 488_PSF.czi",
        "LLS1_2  excitation 561 nm, emission 596.5 nm",
        "timepoints: 2 (times s: 0, 3.54",
        "light-sheet angle: 30°   scan axis: y",
        "voxel size raw (dz stage step, dy, dx): 0.3, 0.144992, 0.144992 µm",
        "gaps: none",
        "640_PSF.czi",  # found, matched to no channel: said
    ):
        assert expected in text
    config = _validate_against_schema(out)
    assert config["raw_dir"] == str(raw) and config["metadata"] == str(raw / "LLS7_t2_ch3.czi")
    acq = read_acquisition(config["raw_dir"], config["metadata"], config["overrides"])
    assert acq.channel_names == ["LLS1", "LLS2", "LLS1_2"]
    again = _init(raw, out)
    assert again.returncode == 2 and "expected a new config file name (or --force" in again.stderr


# ---- ImageJ hyperstack --------------------------------------------------------------------------------


def test_imagej_hyperstack_from_a_czi(tmp_path):
    raw = _copy(["lls7_multich_multi_time.tif", "488_PSF.czi", "561_PSF.czi"], tmp_path / "raw")
    assert detect_format(raw)[0] == "ome-tiff"
    acq = read_acquisition(raw)
    assert acq.channel_names == ["LLS1", "LLS2", "LLS1_2"]
    assert [c["emission_nm"] for c in acq.channels] == [None, 525.0, 596.5]
    assert (acq.angle_deg, acq.scan_axis) == (30.0, "y")
    assert (acq.dz_um, acq.dy_um, acq.dx_um) == pytest.approx((0.3, DX, DX), rel=1e-5)
    assert list(acq.samples["time_s"]) == [0.0, 0.0, 0.0, 3.54, 3.54, 3.54]
    selector = acq.sample_selector("000x_000y_000z-ch1-t0001")
    volume = read_volume(selector["path"], channel=selector["channel"], timepoint=selector["timepoint"])
    whole = tifffile.imread(raw / "lls7_multich_multi_time.tif")  # TZCYX
    np.testing.assert_array_equal(volume.data, whole[1, :, 1])
    out = tmp_path / "config.yaml"
    result = _init(raw, out)
    assert result.returncode == 0, result.stderr
    _validate_against_schema(out)


# ---- Janelia / 3i ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "skewed", "dz", "lasers", "stacks", "angle"),
    [
        ("example_Settings.txt", True, 0.3, {0: 488.0, 1: 560.0}, {0: 3, 1: 3}, 31.5),
        ("sample_Settings.txt", True, 0.4, {0: 488.0, 1: 642.0}, {0: 10, 1: 10}, 31.0),
        ("psf642_Settings.txt", False, 0.1, {0: 642.0}, {0: 2}, 31.5),
    ],
)
def test_janelia_settings(name, skewed, dz, lasers, stacks, angle):
    settings = parse_settings(JANELIA / name)
    assert settings.skewed is skewed
    assert settings.dz_um == pytest.approx(dz)
    assert settings.lasers_nm == lasers and settings.stacks == stacks
    assert settings.angle_deg == angle
    assert settings.camera == "Orca4.0" and settings.camera_pixel_um == 6.5
    assert settings.dx_um == pytest.approx(6.5 / settings.magnification)


def _janelia_folder(raw: Path, timepoints=10, skip=()) -> Path:
    """A Janelia folder: the real sample_Settings.txt (488 + 642 nm, stage scan 0.4 µm, 10 stacks), small
    synthetic stacks named as the acquisition software names them, the real 642 nm PSF with its
    Settings.txt, and the same bead stack renamed as a 488 nm PSF."""
    raw.mkdir(parents=True)
    shutil.copy(JANELIA / "sample_Settings.txt", raw / "cell1_Settings.txt")
    shutil.copy(JANELIA / "psf642_Settings.txt", raw / "psf642_Settings.txt")
    shutil.copy(JANELIA / JANELIA_PSF, raw / JANELIA_PSF)
    shutil.copy(JANELIA / "psf642_Settings.txt", raw / "psf488_Settings.txt")
    shutil.copy(JANELIA / JANELIA_PSF, raw / JANELIA_PSF.replace("642", "488"))
    rng = np.random.default_rng(0)
    for t in range(timepoints):
        for c, wave in ((0, 488), (1, 642)):
            if t in skip:
                continue
            rel = t * 4017 + c * 9
            name = f"cell1_ch{c}_stack{t:04d}_{wave}nm_{rel:07d}msec_{8100000 + rel:010d}msecAbs.tif"
            tifffile.imwrite(raw / name, rng.integers(100, 200, (48, 64, 64), dtype=np.uint16))
    return raw


def test_janelia_folder_reads_as_an_acquisition(tmp_path):
    raw = _janelia_folder(tmp_path / "raw")
    assert detect_format(raw) == ("janelia", raw / "cell1_Settings.txt")
    acq = read_acquisition(raw)
    assert acq.format == "janelia"
    assert acq.dz_um == pytest.approx(0.4)  # S PZT interval
    assert acq.dx_um == pytest.approx(6.5 / 61.90476)  # Orca4.0 / Magnification
    assert (acq.angle_deg, acq.scan_axis) == (31.0, "x")
    assert acq.channel_names == ["ch0_488nm", "ch1_642nm"]
    assert [c["excitation_nm"] for c in acq.channels] == [488.0, 642.0]
    assert [c["emission_nm"] for c in acq.channels] == [None, None]
    assert [c["psf_geometry"] for c in acq.channels] == ["objective", "objective"]  # Z galvo & piezo
    assert acq.channels[1]["psf"] == JANELIA_PSF
    assert acq.channels[1]["psf_voxel_size_um"] == pytest.approx([0.1, 6.5 / 63.8, 6.5 / 63.8])
    assert acq.timepoints == list(range(10))
    ch1 = acq.samples[acq.samples["channel"] == 1]
    assert list(ch1["time_s"]) == pytest.approx([t * 4.017 + 0.009 for t in range(10)])  # the msec fields
    assert acq.time_interval_s == pytest.approx(4.017)
    assert acq.sample_selector("000x_000y_000z-ch0-t0003")["channel"] is None


def test_janelia_missing_timepoint_is_named(tmp_path):
    raw = _janelia_folder(tmp_path / "raw", skip=(5,))
    with pytest.raises(LlsmflowError, match=r"no stack at all for timepoint\(s\) 5 of the 10 declared"):
        read_acquisition(raw)


def test_janelia_objective_scan_data_is_refused(tmp_path):
    raw = _janelia_folder(tmp_path / "raw", timepoints=1)
    shutil.copy(JANELIA / "psf642_Settings.txt", raw / "cell1_Settings.txt")
    with pytest.raises(LlsmflowError, match="Z motion is 'Z galvo & piezo': an objective scan"):
        read_acquisition(raw)


def test_init_on_janelia_folder_writes_a_valid_config(tmp_path):
    raw = _janelia_folder(tmp_path / "raw")
    out = tmp_path / "config.yaml"
    result = _init(raw, out, "--dataset", "cell1")
    assert result.returncode == 0, result.stderr
    assert "Janelia/3i lattice light-sheet" in result.stdout
    assert "ch1_642nm  excitation 642 nm, emission unknown" in result.stdout
    assert "voxel size raw (dz stage step, dy, dx): 0.4, 0.105, 0.105 µm" in result.stdout
    config = _validate_against_schema(out)
    assert config["dataset"] == "cell1" and config["overrides"] == {}
    # a camera pixel size given by flag overrides the derived one and is written into the config
    result = _init(raw, out, "--force", "--dx", "0.104")
    assert result.returncode == 0, result.stderr
    config = _validate_against_schema(out)
    assert config["overrides"] == {"dx_um": 0.104, "dy_um": 0.104}


def test_init_asks_by_flag_for_what_no_file_says(tmp_path):
    raw = _janelia_folder(tmp_path / "raw")
    settings = raw / "cell1_Settings.txt"
    text = settings.read_text(encoding="utf-8", errors="replace")
    settings.write_text(text.replace('Camera type = "Orca4.0"', 'Camera type = "Prime95B"'))
    out = tmp_path / "config.yaml"
    result = _init(raw, out)
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1
        and "dx_um not in the instrument's files; expected --dx" in result.stderr
    )
    assert str(settings) in result.stderr and not out.exists()
    result = _init(raw, out, "--dx", "0.11")
    assert result.returncode == 0, result.stderr
    assert _validate_against_schema(out)["overrides"]["dx_um"] == 0.11
    assert math.isclose(read_acquisition(raw, None, {"dx_um": 0.11}).dy_um, 0.11)


# ---- the workflow on a CZI folder ----------------------------------------------------------------------


def _dataset(tmp_path: Path) -> str:
    """The dataset `llsmflow init` named in tmp_path/config.yaml (after the folder holding raw/)."""
    return yaml.safe_load((tmp_path / "config.yaml").read_text())["dataset"]


def _run_until_deskew(
    raw: Path, tmp_path: Path, until: str | None = "deskew_deconvolve"
) -> subprocess.CompletedProcess:
    config_path = tmp_path / "config.yaml"
    result = _init(raw, config_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(config_path.read_text())
    config.update(
        results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "work"), keep_intermediates=True
    )
    config_path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "llsmflow.cli", "run", "--configfile", str(config_path), "--cores", "2"]
        + ["--workflow-dir", str(REPO)]
        + (["--", "--until", until] if until else []),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )


def test_run_on_a_janelia_folder(tmp_path):
    """The whole workflow on a Janelia folder (real Settings.txt and PSF, stacks named as the acquisition
    software names them): deskewed volumes equal a deskew of each stack with the Settings.txt geometry, and
    the archive carries the channels, wavelengths and the real time step of the file names."""
    from llsmflow.archive.read import read_ome_zarr

    raw = _janelia_folder(tmp_path / "raw", timepoints=10)
    result = _run_until_deskew(raw, tmp_path, until=None)
    assert result.returncode == 0, result.stderr[-3000:]
    from llsmflow.deskew.shear import deskew

    deskewed = sorted((tmp_path / "work" / _dataset(tmp_path) / "deskewed").glob("*.ome.tif"))
    assert len(deskewed) == 20
    name = "cell1_ch1_stack0003_642nm_0012060msec_0008112060msecAbs.tif"
    dx = 6.5 / 61.90476
    expected = deskew(read_volume(raw / name).data, 0.4, dx, 31.0, dy_um=dx, scan_axis="x")
    ours = read_volume(tmp_path / "work" / _dataset(tmp_path) / "deskewed" / "000x_000y_000z-ch1-t0003.ome.tif")
    np.testing.assert_allclose(ours.data, expected.data)
    image, meta = read_ome_zarr(tmp_path / "results" / _dataset(tmp_path) / f"{_dataset(tmp_path)}.ome.zarr")
    assert image.shape[:2] == (10, 2)
    assert meta["channel_names"] == read_acquisition(raw).channel_names
    assert meta["time_interval_s"] == pytest.approx(4.017, rel=1e-3)  # from the file names' msec fields
    assert meta["voxel_size_um"] == pytest.approx((0.4 * math.sin(math.radians(31.0)), dx, dx), rel=1e-6)


def test_run_until_deskew_reads_czi_sub_stacks(tmp_path):
    """`llsmflow init` + `llsmflow run -- --until deskew_deconvolve` on a Zeiss folder: every (channel,
    timepoint) of the CZI is deskewed from its own volume, with the CZI's voxel sizes and angle (the deskewed
    volumes are written because the test keeps intermediates)."""
    raw = _copy(["LLS7_t2_ch3.czi", "488_PSF.czi", "561_PSF.czi"], tmp_path / "raw")
    result = _run_until_deskew(raw, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no results yet (a partial run)" in result.stdout  # nothing listed that does not exist
    from llsmflow.deskew.shear import deskew
    from llsmflow.io import read_volume_description

    deskewed_dir = tmp_path / "work" / _dataset(tmp_path) / "deskewed"
    assert len(list(deskewed_dir.glob("*.ome.tif"))) == 6
    for c, t in ((0, 0), (2, 1)):
        path = deskewed_dir / f"000x_000y_000z-ch{c}-t{t:04d}.ome.tif"
        ours = read_volume(path)
        raw_volume = read_volume(raw / "LLS7_t2_ch3.czi", channel=c, timepoint=t)
        expected = deskew(raw_volume.data, 0.3, DX, 30.0, dy_um=DX, scan_axis="y")
        np.testing.assert_allclose(ours.data, expected.data)
        assert ours.voxel_size_um == pytest.approx((0.15, DX, DX))
        description = read_volume_description(path)
        assert (description["source_channel"], description["source_timepoint"]) == (c, t)


def test_init_on_generic_acquisition_json_folder(tmp_path, tiny_acquisition):
    raw = tiny_acquisition / "raw"
    out = tmp_path / "config.yaml"
    result = _init(raw, out)
    assert result.returncode == 0, result.stderr
    assert "instrument: generic (acquisition.json: acquisition.json)" in result.stdout
    config = _validate_against_schema(out)
    assert config["metadata"] is None and config["raw_dir"] == str(raw.resolve())
    # a folder called "raw" names the dataset after the acquisition folder above it
    assert config["dataset"] == tiny_acquisition.resolve().name


def test_init_and_run_on_a_zeiss_folder_give_an_archive_with_the_czi_metadata(tmp_path):
    """The acceptance run of issue 16: `llsmflow init` + `llsmflow run` on a folder holding a real LLS7 CZI
    and Zeiss PSFs. The archive's axes, voxel sizes (deskewed), time step, channel names and wavelengths are
    what the CZI says; a channel whose emission the CZI records as NaN is stored without a wavelength."""
    from llsmflow.archive.read import read_ome_zarr

    raw = _copy(["LLS7_t2_ch3.czi", "488_PSF.czi", "561_PSF.czi"], tmp_path / "raw")
    config_path = tmp_path / "config.yaml"
    assert _init(raw, config_path).returncode == 0
    config = yaml.safe_load(config_path.read_text())
    config.update(results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "work"))
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "llsmflow.cli", "run", "--configfile", str(config_path), "--cores", "2"]
        + ["--workflow-dir", str(REPO)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_czi_info(REAL / "LLS7_t2_ch3.czi")
    image, meta = read_ome_zarr(tmp_path / "results" / config["dataset"] / f"{config['dataset']}.ome.zarr")
    assert image.ndim == 5 and image.shape[:2] == (2, 3)
    assert meta["voxel_size_um"] == pytest.approx((0.3 * math.sin(math.radians(30.0)), DX, DX))
    assert meta["channel_names"] == [c["name"] for c in info.channels] == ["LLS1", "LLS2", "LLS1_2"]
    times = info.time_s
    assert meta["time_interval_s"] == pytest.approx(times[1] - times[0], rel=1e-6)
    channels = json.loads(
        (tmp_path / "results" / config["dataset"] / f"{config['dataset']}.ome.zarr" / "zarr.json").read_text()
    )["attributes"]["ome"]["omero"]["channels"]
    for recorded, czi in zip(channels, info.channels, strict=True):
        emission = czi.get("emission_nm")
        if emission is None:
            assert "emission_wavelength_nm" not in recorded
        else:
            assert recorded["emission_wavelength_nm"] == pytest.approx(emission)
