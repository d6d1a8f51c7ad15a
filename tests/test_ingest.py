"""Ingest: metadata + file discovery → sample table, overrides, and clear errors on bad acquisitions."""

import json
import shutil

import pytest

from llsmflow.errors import LlsmflowError
from llsmflow.ingest import read_acquisition


@pytest.fixture()
def acquisition_copy(tiny_acquisition, tmp_path):
    target = tmp_path / "raw"
    shutil.copytree(tiny_acquisition / "raw", target)
    return target


def test_sample_table_lists_every_stack(tiny_acquisition):
    acq = read_acquisition(tiny_acquisition / "raw")
    assert len(acq.samples) == 20
    assert set(acq.samples["tile"]) == {"000x_000y_000z", "000x_001y_000z"}
    assert acq.timepoints == [0, 1, 2, 3, 4]
    assert acq.samples["sample_id"].is_unique
    assert acq.samples.loc[acq.samples.timepoint == 3, "time_s"].unique().tolist() == [6.0]
    # nominal tile positions from the stage, in the objective frame
    truth = json.loads((tiny_acquisition / "truth" / "tiles.json").read_text())["tiles"]
    for row in acq.tiles.itertuples():
        assert [row.z_um, row.y_um, row.x_um] == pytest.approx(truth[row.tile]["nominal_origin_um"])


def test_overrides_replace_metadata(tiny_acquisition):
    acq = read_acquisition(tiny_acquisition / "raw", overrides={"angle_deg": 30.0, "time_interval_s": 1.5})
    assert acq.angle_deg == 30.0 and acq.time_interval_s == 1.5
    with pytest.raises(LlsmflowError, match="override 'colour'"):
        read_acquisition(tiny_acquisition / "raw", overrides={"colour": 1})


def test_missing_stack_is_named(acquisition_copy):
    victim = sorted(acquisition_copy.glob("*_ch1_*0003t.tif"))[0]
    victim.unlink()
    with pytest.raises(LlsmflowError, match="missing, first: tile 000x_000y_000z, channel 1, timepoint 3"):
        read_acquisition(acquisition_copy)


def test_metadata_errors(acquisition_copy):
    meta_path = acquisition_copy / "acquisition.json"
    meta = json.loads(meta_path.read_text())
    for key, value, pattern in [
        ("angle_deg", 95, "angle_deg = 95"),
        ("dz_um", 0, "voxel size"),
        ("dx_um", -0.1, "voxel size"),
    ]:
        broken = dict(meta, **{key: value})
        meta_path.write_text(json.dumps(broken))
        with pytest.raises(LlsmflowError, match=pattern) as info:
            read_acquisition(acquisition_copy)
        assert "acquisition.json" in str(info.value)
    broken = json.loads(json.dumps(meta))
    broken["channels"][0]["psf"] = "../elsewhere.tif"
    meta_path.write_text(json.dumps(broken))
    with pytest.raises(LlsmflowError, match="escapes the raw data directory"):
        read_acquisition(acquisition_copy)
    meta_path.write_text("{not json")
    with pytest.raises(LlsmflowError, match="not valid JSON"):
        read_acquisition(acquisition_copy)
    meta_path.unlink()
    with pytest.raises(LlsmflowError, match="metadata file not found"):
        read_acquisition(acquisition_copy)


def test_empty_directory(tmp_path, tiny_acquisition):
    shutil.copy(tiny_acquisition / "raw" / "acquisition.json", tmp_path)
    for psf in (tiny_acquisition / "raw").glob("PSF_*.tif"):
        shutil.copy(psf, tmp_path)
    with pytest.raises(LlsmflowError, match="no raw stacks match"):
        read_acquisition(tmp_path)
