"""Archives in the tools users have: strict NGFF validation (ngff-zarr), napari with tracks in register
(llsmflow's reader and napari-ome-zarr's, headless), trackpy's own functions on the tracks table, and
``llsmflow convert`` (0.5 → 0.4 → 0.5) read back by ome-zarr-py, the project's reader and ``llsmflow verify``.

One small archive is written once per module, from a synthetic volume whose particles sit at known positions,
with a non-zero origin (the translation napari-ome-zarr is measured against), and tracked with llsmflow's
tracking (trackpy) into the tracks table the workflow writes.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llsmflow.archive.dataset import write_dataset_archive
from llsmflow.archive.read import read_ome_zarr
from llsmflow.cli import main
from llsmflow.track.link import track_particles
from llsmflow.track.tables import PIXEL_COLUMNS, write_tracks

VOXEL_UM = (0.3, 0.104, 0.104)
ORIGIN_UM = (0.37, -1.21, 2.45)
DT_S = 2.0
SHAPE_ZYX = (16, 48, 56)
# particle centres (voxels, z y x) at t = 0; each moves by STEP_PX per frame
START_PX = np.array([[6.3, 12.4, 14.2], [9.6, 30.7, 38.1], [5.2, 35.1, 12.6]])
STEP_PX = np.array([0.4, 0.9, -0.7])
N_T = 4


def _volume(centres_px: np.ndarray) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE_ZYX), indexing="ij")
    volume = np.full(SHAPE_ZYX, 20.0)
    for cz, cy, cx in centres_px:
        volume += 2000 * np.exp(-(((z - cz) / 1.2) ** 2 + ((y - cy) / 1.6) ** 2 + ((x - cx) / 1.6) ** 2) / 2)
    return volume.astype(np.uint16)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewers")
    image = np.stack(
        [np.stack([_volume(START_PX + t * STEP_PX), _volume(START_PX[::-1] + 2.0)]) for t in range(N_T)]
    )
    tracks = track_particles(
        (image[t, 0] for t in range(N_T)),
        VOXEL_UM,
        DT_S,
        diameter_um=(1.2, 0.7, 0.7),
        search_range_um=1.0,
        min_track_length=3,
        origin_um=ORIGIN_UM,
    )
    table, _ = write_tracks(tracks, root / "tracks.parquet", root / "tracks.csv")
    raw = root / "raw.tif"
    raw.write_bytes(b"raw stand-in")
    return write_dataset_archive(
        root / "synthetic.ome.zarr",
        image,
        VOXEL_UM,
        DT_S,
        ["GFP", "mCherry"],
        tables={"tracks_ch0": table},
        raw_files=[raw],
        attributes={"acquisition": {"instrument": "synthetic", "time_interval_s": DT_S}},
        wavelengths_nm=[510.0, 610.0],
        ngff_version="0.5",
        chunks_zyx=(8, 32, 32),
        n_levels=2,
        origin_um=ORIGIN_UM,
    )


def _root_attributes(path: Path) -> dict:
    if (path / "zarr.json").is_file():
        return json.loads((path / "zarr.json").read_text())["attributes"]
    return json.loads((path / ".zattrs").read_text())


def test_ngff_metadata_passes_strict_validation(archive, tmp_path):
    ngff_zarr = pytest.importorskip("ngff_zarr")
    copy = tmp_path / "v04.ome.zarr"
    assert main(["convert", str(archive), "--ngff-version", "0.4", "-o", str(copy)]) == 0
    for path, version in ((archive, "0.5"), (copy, "0.4")):
        ngff_zarr.validate(_root_attributes(path), version=version, model="image", strict=True)
        multiscales = ngff_zarr.from_ngff_zarr(str(path), validate=True)
        assert multiscales.images[0].translation == dict(zip("tczyx", (0.0, 0.0, *ORIGIN_UM), strict=True))


def test_trackpy_accepts_the_tracks_table_as_is(archive):
    trackpy = pytest.importorskip("trackpy")
    table = pd.read_parquet(archive / "tables" / "tracks_ch0.parquet")
    assert set(PIXEL_COLUMNS) <= set(table.columns)
    assert (table["x"] == table["x_px"]).all() and table["particle"].nunique() == len(START_PX)
    # trackpy's defaults (pos_columns x, y; pixels), with mpp in µm: the same as its MSD of the µm columns
    ensemble = trackpy.motion.emsd(table, mpp=VOXEL_UM[2], fps=1 / DT_S, max_lagtime=N_T)
    reference = trackpy.motion.emsd(table, mpp=1.0, fps=1 / DT_S, max_lagtime=N_T, pos_columns=["x_um", "y_um"])
    np.testing.assert_allclose(ensemble.to_numpy(), reference.to_numpy(), rtol=1e-9)
    # and the ground truth: a straight run of STEP_PX per frame gives MSD(1 frame) = |step|² (lateral, µm²)
    lateral = (STEP_PX[1] * VOXEL_UM[1]) ** 2 + (STEP_PX[2] * VOXEL_UM[2]) ** 2
    assert ensemble.iloc[0] == pytest.approx(lateral, rel=0.05)
    msd = trackpy.motion.msd(table[table["particle"] == table["particle"].iloc[0]], mpp=VOXEL_UM[2], fps=1 / DT_S)
    assert msd["msd"].iloc[0] == pytest.approx(lateral, rel=0.1)


@pytest.fixture(scope="module")
def napari_viewer_model():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("napari")
    npe2 = pytest.importorskip("npe2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import napari.plugins
        from napari.components import ViewerModel

        napari.plugins._initialize_plugins()
    manager = npe2.PluginManager.instance()
    if "llsmflow" not in manager._manifests:  # llsmflow installed from another checkout: this one's manifest
        from importlib.resources import files

        manager.register(npe2.PluginManifest.from_file(files("llsmflow.viewers") / "napari.yaml"))
    return ViewerModel


def _offsets_um(image_layer, tracks_layer, volume_t0: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """|world(track point) − world(particle)| per axis (z, y, x) for each particle at t = 0.

    The particle is the intensity centroid around its known centre in the image layer's level 0, mapped to
    world coordinates by the image layer's own transform; its track point is the t = 0 row of the tracks
    table detected there (paired through the voxel columns, which no viewer transform touches), mapped by
    the tracks layer's transform."""
    from scipy import ndimage

    first = table[table["frame"] == 0]
    offsets = []
    for centre in START_PX:
        lo = np.maximum(np.round(centre).astype(int) - (3, 5, 5), 0)
        box = volume_t0[tuple(slice(a, a + n) for a, n in zip(lo, (7, 11, 11), strict=True))].astype(float)
        centroid = np.array(ndimage.center_of_mass(box - box.min())) + lo
        world_particle = np.asarray(image_layer.data_to_world([0.0, *centroid]))
        row = first.iloc[np.argmin(np.linalg.norm(first[["z_px", "y_px", "x_px"]].to_numpy() - centre, axis=1))]
        point = [row["frame"], row["z_um"], row["y_um"], row["x_um"]]
        world_track = np.asarray(tracks_layer.data_to_world(point))
        offsets.append(np.abs(world_track - world_particle)[1:])
    return np.array(offsets)


def test_napari_llsmflow_reader_puts_tracks_on_their_particles(archive, napari_viewer_model):
    viewer = napari_viewer_model()
    viewer.open(str(archive), plugin="llsmflow")
    images = [layer for layer in viewer.layers if type(layer).__name__ == "Image"]
    tracks = [layer for layer in viewer.layers if type(layer).__name__ == "Tracks"]
    assert [layer.name for layer in images] == ["GFP", "mCherry"] and [t.name for t in tracks] == ["tracks GFP"]
    np.testing.assert_allclose(images[0].scale, (DT_S, *VOXEL_UM))
    np.testing.assert_allclose(images[0].translate, (0.0, *ORIGIN_UM))
    assert images[0].multiscale and len(images[0].data) == 2
    # colours from the omero metadata (510 nm green, 610 nm red), windows as contrast limits
    np.testing.assert_allclose(images[0].colormap.colors[-1][:3], (0, 1, 0))
    np.testing.assert_allclose(images[1].colormap.colors[-1][:3], (1, 0, 0))
    omero = _root_attributes(archive)["ome"]["omero"]["channels"]
    assert list(images[1].contrast_limits) == pytest.approx([omero[1]["window"]["start"], omero[1]["window"]["end"]])
    image0 = np.asarray(images[0].data[0][0, :, :, :] if images[0].multiscale else images[0].data[0])
    table = pd.read_parquet(archive / "tables" / "tracks_ch0.parquet")
    offsets = _offsets_um(images[0], tracks[0], image0, table)
    assert len(offsets) == len(START_PX)
    assert (offsets < np.array(VOXEL_UM) / 2).all(), offsets


def test_napari_ome_zarr_reader_offset_is_measured(archive, napari_viewer_model):
    """napari-ome-zarr's image layers, with the tracks added in µm as a user would (``scale=(dt, 1, 1, 1)``):
    its reader honours the scale; the offset measured is the translation it drops, if it drops it."""
    from npe2 import PluginManager

    if "napari-ome-zarr" not in PluginManager.instance()._manifests:
        pytest.skip("napari-ome-zarr is not installed")
    viewer = napari_viewer_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.open(str(archive), plugin="napari-ome-zarr")
    images = [layer for layer in viewer.layers if type(layer).__name__ == "Image"]
    assert len(images) == 2
    np.testing.assert_allclose(images[0].scale, (DT_S, *VOXEL_UM))
    table = pd.read_parquet(archive / "tables" / "tracks_ch0.parquet")
    layer = viewer.add_tracks(table[["particle", "frame", "z_um", "y_um", "x_um"]].to_numpy(), scale=(DT_S, 1, 1, 1))
    offsets = _offsets_um(images[0], layer, np.asarray(images[0].data[0][0]), table)
    if np.allclose(images[0].translate, 0.0):  # napari-ome-zarr 0.10: the translation is dropped
        np.testing.assert_allclose(offsets.mean(axis=0), np.abs(ORIGIN_UM), atol=max(VOXEL_UM) / 2)
    else:
        np.testing.assert_allclose(images[0].translate, (0.0, *ORIGIN_UM))
        assert (offsets < np.array(VOXEL_UM) / 2).all(), offsets


def test_convert_round_trip_keeps_everything(archive, tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    v04, v05 = tmp_path / "copy04.ome.zarr", tmp_path / "copy05.ome.zarr"
    for source, target, version in ((archive, v04, "0.4"), (v04, v05, "0.5")):
        assert main(["convert", str(source), "--ngff-version", version, "-o", str(target)]) == 0
        assert main(["verify", str(target)]) == 0 and "intact" in capsys.readouterr().out
    original_data, original = read_ome_zarr(archive)
    original_attrs = _root_attributes(archive)
    for copy, version in ((v04, "0.4"), (v05, "0.5")):
        data, meta = read_ome_zarr(copy)
        assert meta["ngff_version"] == version
        for key in ("voxel_size_um", "origin_um", "time_interval_s", "channel_names", "wavelengths_nm", "n_levels"):
            assert meta[key] == pytest.approx(original[key]) if key != "channel_names" else meta[key] == original[key]
        np.testing.assert_array_equal(np.asarray(data), np.asarray(original_data))
        attrs = _root_attributes(copy)
        ome = attrs.get("ome", attrs)
        assert ome["omero"]["channels"] == original_attrs["ome"]["omero"]["channels"]
        for key in ("acquisition", "tables", "raw_inputs"):
            assert meta["llsmflow"][key] == original["llsmflow"][key]
        assert (copy / "tables" / "tracks_ch0.parquet").read_bytes() == (
            archive / "tables" / "tracks_ch0.parquet"
        ).read_bytes()
        # ome-zarr-py reads every level with the same scale and translation
        node = next(n for n in Reader(parse_url(str(copy)))() if n.load(Multiscales))
        assert node.metadata["coordinateTransformations"][1][1]["translation"][2:] == pytest.approx(
            [o + d / 2 for o, d in zip(ORIGIN_UM, (0.0, *VOXEL_UM[1:]), strict=True)]
        )
    # the raw lines are the source's; the image lines are the copy's own
    lines = dict(reversed(line.split("  ", 1)) for line in (v04 / "checksums.sha256").read_text().splitlines())
    source_lines = dict(
        reversed(line.split("  ", 1)) for line in (archive / "checksums.sha256").read_text().splitlines()
    )
    assert lines["raw/raw.tif"] == source_lines["raw/raw.tif"] and ".zattrs" in lines and "zarr.json" not in lines


def test_convert_refuses_to_overwrite(archive, capsys):
    assert main(["convert", str(archive), "--ngff-version", "0.4", "-o", str(archive)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llsmflow convert: error:") and "already exists" in err
