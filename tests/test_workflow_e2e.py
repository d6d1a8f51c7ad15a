"""End to end: `llsmflow run` on the tiny synthetic acquisition, outputs checked against the ground truth."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LLSMFLOW, SECRET_TOKEN, run_workflow
from tests.conftest import sha256 as _sha256

pytestmark = pytest.mark.e2e

# Every test here reads the session fixture ``full_run`` (tests/conftest.py): the whole workflow once with the
# default config on a private copy of ``tiny_acquisition``'s raw data. The reproduce tests share it, so a test
# that changes anything of it works on a copy.


def test_run_prints_where_results_are(full_run):
    assert "Results in results/tiny/" in full_run.stdout
    assert (full_run.run_dir / "results" / "tiny" / "tiny.ome.zarr").is_dir()


def test_raw_data_untouched(full_run):
    """The raw directory the run read (its private copy) has the checksums taken before the run."""
    assert {p.name: _sha256(p) for p in full_run.raw_dir.iterdir()} == full_run.raw_before


def test_registration_recovers_true_tile_positions(full_run, tiny_acquisition):
    run_dir = full_run.run_dir
    transforms = json.loads((run_dir / "results/tiny/provenance/transforms.json").read_text())
    truth = json.loads((tiny_acquisition / "truth" / "tiles.json").read_text())["tiles"]
    voxel = np.asarray(transforms["voxel_size_um"])
    reference = transforms["reference"]
    for name, entry in transforms["tiles"].items():
        found = np.asarray(entry["origin_um"]) - np.asarray(transforms["tiles"][reference]["origin_um"])
        expected = np.asarray(truth[name]["origin_um"]) - np.asarray(truth[reference]["origin_um"])
        assert np.all(np.abs(found - expected) < 0.5 * voxel), (name, found, expected)
    # the stage error was real: nominal positions were off by more than the tolerance
    nominal = {n: np.asarray(t["nominal_origin_um"]) for n, t in truth.items()}
    errors = [np.abs(np.asarray(truth[n]["origin_um"]) - nominal[n]) for n in truth if n != reference]
    assert max(e.max() for e in errors) > 0.5 * voxel.max()


def test_archive_is_ome_zarr_with_physical_scales(full_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    run_dir = full_run.run_dir
    archive = run_dir / "results/tiny/tiny.ome.zarr"
    nodes = list(Reader(parse_url(str(archive)))())
    image = nodes[0]
    multiscales = image.metadata
    assert [a["name"] for a in multiscales["axes"]] == ["t", "c", "z", "y", "x"]
    assert [a.get("unit") for a in multiscales["axes"]] == [
        "second",
        None,
        "micrometer",
        "micrometer",
        "micrometer",
    ]
    meta = json.loads((full_run.raw_dir / "acquisition.json").read_text())
    scale = next(t for t in multiscales["coordinateTransformations"][0] if t["type"] == "scale")["scale"]
    dzp = meta["dz_um"] * np.sin(np.radians(meta["angle_deg"]))
    assert scale == pytest.approx([meta["time_interval_s"], 1.0, dzp, meta["dx_um"], meta["dx_um"]])
    assert image.data[0].shape[:2] == (5, 2)
    assert multiscales.get("channel_names") == [c["name"] for c in meta["channels"]]


def _match_tracks(tracks, truth, max_distance_um=0.6):
    """For each true trajectory, the fraction of its frames covered by its best-matching single track."""
    coverage = []
    for _, true_track in truth.groupby("particle"):
        true_track = true_track.set_index("frame")
        best = 0.0
        for _, track in tracks.groupby("particle"):
            common = track.set_index("frame")[["z_um", "y_um", "x_um"]].merge(
                true_track[["z_um", "y_um", "x_um"]],
                left_index=True,
                right_index=True,
                suffixes=("", "_true"),
            )
            if common.empty:
                continue
            distance = np.sqrt(sum((common[f"{a}_um"] - common[f"{a}_um_true"]) ** 2 for a in "zyx"))
            best = max(best, float((distance < max_distance_um).sum()) / len(true_track))
        coverage.append(best)
    return np.array(coverage)


@pytest.mark.parametrize("channel", [0, 1])
def test_tracks_follow_true_trajectories(full_run, tiny_acquisition, channel):
    run_dir = full_run.run_dir
    tracks = pd.read_parquet(run_dir / f"results/tiny/tracks/ch{channel}.parquet")
    assert {"particle", "frame", "t_s", "z_um", "y_um", "x_um"} <= set(tracks.columns)
    assert tracks[["particle", "frame"]].equals(
        tracks[["particle", "frame"]].sort_values(["particle", "frame"])
    )
    csv = pd.read_csv(run_dir / f"results/tiny/tracks/ch{channel}.csv")
    assert len(csv) == len(tracks)
    truth = pd.read_csv(tiny_acquisition / "truth" / "trajectories.csv")
    truth = truth[truth.channel == channel]
    coverage = _match_tracks(tracks, truth)
    # most true particles are followed as one track over at least 80 % of the frames
    assert np.mean(coverage >= 0.8) >= 0.8, coverage
    # localisation: RMS error per axis below half a voxel for detections matched to a true position
    meta = json.loads((full_run.raw_dir / "acquisition.json").read_text())
    voxel = np.array([meta["dz_um"] * np.sin(np.radians(meta["angle_deg"])), meta["dx_um"], meta["dx_um"]])
    errors = []
    for frame, points in tracks.groupby("frame"):
        true = truth[truth.frame == frame][["z_um", "y_um", "x_um"]].to_numpy()
        found = points[["z_um", "y_um", "x_um"]].to_numpy()
        distance = np.linalg.norm(found[:, None, :] - true[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(found)), nearest] < 0.5
        errors.append(found[close] - true[nearest[close]])
    errors = np.concatenate(errors)
    assert len(errors) >= 0.8 * len(truth)
    assert np.all(np.sqrt((errors**2).mean(axis=0)) < 0.5 * voxel), np.sqrt((errors**2).mean(axis=0)) / voxel
    summary = pd.read_csv(run_dir / f"results/tiny/tracks/ch{channel}_summary.csv")
    assert len(summary) == tracks["particle"].nunique()


def test_provenance_record(full_run):
    run_dir = full_run.run_dir
    provenance = run_dir / "results/tiny/provenance"
    record = json.loads((provenance / "run-record.json").read_text())
    assert record["config"]["dataset"] == "tiny"
    assert record["software"]["packages"]["numpy"]
    inputs = {Path(e["path"]).name: e["sha256"] for e in record["inputs"]}
    raw_files = sorted(full_run.raw_dir.glob("*.tif"))
    assert raw_files
    for raw_file in raw_files:
        assert inputs[raw_file.name] == _sha256(raw_file)
    outputs = {e["path"]: e for e in record["outputs"]}
    track_csv = "results/tiny/tracks/ch0.csv"
    assert outputs[track_csv]["sha256"] == _sha256(run_dir / track_csv)
    steps = {s["step"] for s in record["steps"]}
    assert {"deskew_deconvolve", "register", "fuse", "archive", "track"} <= steps
    backends = {s["notes"]["backend"] for s in record["steps"] if s["step"] == "deskew_deconvolve"}
    assert backends == {"cpu"}
    assert {s["notes"]["iterations"] for s in record["steps"] if s["step"] == "deskew_deconvolve"} == {10}
    assert SECRET_TOKEN not in (provenance / "run-record.json").read_text()
    manifest = (provenance / "checksums.sha256").read_text().splitlines()
    assert any(line.endswith("tiny.ome.zarr/zarr.json") for line in manifest)


def test_qc_previews_are_pngs(full_run):
    run_dir = full_run.run_dir
    pngs = sorted((run_dir / "results/tiny/qc").glob("*.png"))
    assert len(pngs) == 2 * 2 + 1
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_intermediates_are_temporary(full_run):
    run_dir = full_run.run_dir
    assert not list((run_dir / "work/tiny").glob("deskewed/*.tif"))
    assert not list((run_dir / "work/tiny").glob("fused/*.zarr"))


def test_rerun_has_nothing_to_do(full_run):
    """A dry run (it writes no outputs, no run record) of the same command finds everything up to date."""
    run_dir = full_run.run_dir
    result = run_workflow(run_dir, full_run.config_path, "--", "--dry-run", timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
    shutil.rmtree(run_dir / ".snakemake" / "locks", ignore_errors=True)


def test_archive_holds_tracks_and_verifies(full_run, tmp_path):
    """The archive carries its tables and a manifest; `llsmflow verify` catches every kind of damage."""
    import zarr

    run_dir = full_run.run_dir
    archive = run_dir / "results/tiny/tiny.ome.zarr"
    attrs = dict(zarr.open_group(str(archive), mode="r").attrs)["llsmflow"]
    table = attrs["tables"]["tracks_ch0"]
    assert _sha256(archive / table["path"]) == _sha256(run_dir / "results/tiny/tracks/ch0.parquet")
    assert table["sha256"] == _sha256(archive / table["path"])
    assert attrs["acquisition"]["angle_deg"] == 31.5
    assert attrs["processing"]["deconvolution"]["method"] == "rl"
    manifest = (archive / "checksums.sha256").read_text()
    assert "raw/acquisition.json" in manifest and "tables/tracks_ch0.parquet" in manifest

    ok = subprocess.run([str(LLSMFLOW), "verify", str(archive)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact" in ok.stdout

    def damaged(change):
        copy = tmp_path / f"copy-{change.__name__}.ome.zarr"
        shutil.copytree(archive, copy)
        changed = change(copy)
        result = subprocess.run([str(LLSMFLOW), "verify", str(copy)], capture_output=True, text=True)
        assert result.returncode == 1
        return changed, result.stdout

    def flip_byte(copy):
        chunk = next(p for p in sorted(copy.rglob("*")) if p.is_file() and "/c/" in p.as_posix())
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
        return chunk.relative_to(copy).as_posix()

    def delete_chunk(copy):
        chunk = next(p for p in sorted(copy.rglob("*")) if p.is_file() and "/c/" in p.as_posix())
        chunk.unlink()
        return chunk.relative_to(copy).as_posix()

    def stray_file(copy):
        level = next(p for p in sorted(copy.iterdir()) if p.is_dir() and p.name != "tables")
        (level / "notes.txt").write_text("added later\n")
        return f"{level.name}/notes.txt"

    for change, kind in ((flip_byte, "changed"), (delete_chunk, "missing"), (stray_file, "extra")):
        name, stdout = damaged(change)
        assert f"{kind}: {name}" in stdout

    raw_copy = tmp_path / "raw"
    shutil.copytree(full_run.raw_dir, raw_copy)
    victim = sorted(raw_copy.glob("Scan_*.tif"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    result = subprocess.run(
        [str(LLSMFLOW), "verify", str(archive), "--raw-dir", str(raw_copy)], capture_output=True, text=True
    )
    assert result.returncode == 1 and f"changed: raw/{victim.name}" in result.stdout
