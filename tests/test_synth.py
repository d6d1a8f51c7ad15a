"""The synthetic acquisition: deterministic, instrument-like files, and truth consistent with the images."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from llsmflow.errors import LlsmflowError
from llsmflow.geometry import deskew
from llsmflow.io import read_volume
from llsmflow.synth import SynthParams, generate

from .conftest import tiny_params


def _digest(directory):
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_gives_identical_files(tmp_path):
    params = tiny_params(timepoints=2, channels=1)
    generate(tmp_path / "a", params)
    generate(tmp_path / "b", tiny_params(timepoints=2, channels=1))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate(tmp_path / "c", tiny_params(timepoints=2, channels=1, seed=1))
    assert _digest(tmp_path / "a" / "raw") != _digest(tmp_path / "c" / "raw")


def test_files_and_metadata_look_like_an_instrument(tiny_acquisition):
    raw = tiny_acquisition / "raw"
    meta = json.loads((raw / "acquisition.json").read_text())
    assert meta["angle_deg"] == 31.5 and meta["dz_um"] == 0.3 and meta["dx_um"] == 0.104
    assert [c["excitation_nm"] for c in meta["channels"]] == [488, 560]
    assert len(meta["tiles"]) == 2
    stacks = sorted(raw.glob("Scan_Iter_*.tif"))
    assert len(stacks) == 2 * 2 * 5
    assert "_ch1_CAM1_stack0004_560nm_0008000msec_" in stacks[-1].name
    with tifffile.TiffFile(stacks[0]) as tif:
        data = tif.asarray()
    assert data.dtype == np.uint16 and data.shape == (32, 64, 96)
    # camera offset ~100 plus background photons; noise present
    assert 100 <= np.median(data) <= 110 and data.std() > 1
    for channel in meta["channels"]:
        psf = read_volume(raw / channel["psf"])
        assert psf.voxel_size_um == pytest.approx((0.1, 0.104, 0.104))
        peak = np.unravel_index(np.argmax(psf.data), psf.data.shape)
        assert peak == tuple(s // 2 for s in psf.data.shape)


def test_truth_matches_deskewed_images(tiny_acquisition):
    """Deskewed raw data (offset removed) correlate with the noise-free truth; particles sit at true positions."""
    raw = tiny_acquisition / "raw"
    truth = tiny_acquisition / "truth"
    meta = json.loads((raw / "acquisition.json").read_text())
    stack = read_volume(sorted(raw.glob("*_ch0_*000x_000y_000z_0000t.tif"))[0])
    result = deskew(
        stack.data.astype(np.float32) - meta["camera_offset"], meta["dz_um"], meta["dx_um"], meta["angle_deg"]
    )
    noisefree = read_volume(truth / "noisefree" / "000x_000y_000z_ch0_t0000.tif")
    assert noisefree.data.shape == result.data.shape
    assert noisefree.voxel_size_um == pytest.approx(result.voxel_size_um)
    covered = result.data != 0
    assert np.corrcoef(result.data[covered], noisefree.data[covered])[0, 1] > 0.8

    trajectories = pd.read_csv(truth / "trajectories.csv")
    first = trajectories[(trajectories.channel == 0) & (trajectories.frame == 0)]
    voxel = np.asarray(result.voxel_size_um)
    brightest = []
    for row in first.itertuples():
        index = np.round(np.array([row.z_um, row.y_um, row.x_um]) / voxel).astype(int)
        if np.all(index >= 2) and np.all(index < np.array(result.data.shape) - 2):
            block = noisefree.data[tuple(slice(i - 1, i + 2) for i in index)]
            brightest.append(block.max() > 0.5 * row.photons)
    assert len(brightest) >= 3 and all(brightest)


def test_trajectories_move_by_brownian_steps(tiny_acquisition):
    truth = pd.read_csv(tiny_acquisition / "truth" / "trajectories.csv")
    params = json.loads((tiny_acquisition / "truth" / "params.json").read_text())
    steps = (
        truth.sort_values(["channel", "particle", "frame"])
        .groupby(["channel", "particle"])[["z_um", "y_um", "x_um"]]
        .diff()
        .dropna()
    )
    assert len(steps) > 50
    rms = np.sqrt((steps**2).mean().mean())
    expected = np.sqrt(2 * np.mean(params["diffusion_um2_s"][:2]) * params["time_interval_s"])
    assert 0.5 * expected < rms < 2.0 * expected


def test_invalid_parameters_are_rejected(tmp_path):
    with pytest.raises(LlsmflowError, match="channels"):
        generate(tmp_path / "x", SynthParams(channels=9))
    with pytest.raises(LlsmflowError, match="angle"):
        generate(tmp_path / "y", SynthParams(angle_deg=95))
    generate(tmp_path / "z", tiny_params(timepoints=1, channels=1))
    with pytest.raises(LlsmflowError, match="already holds"):
        generate(tmp_path / "z", tiny_params(timepoints=1, channels=1))
