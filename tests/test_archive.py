"""Tests for llsmflow.archive: OME-Zarr archives checked with real readers/validators, and checksums.

The archives are opened with ome-zarr-py's own Reader and validated with ome-zarr-models (the pydantic models
of the NGFF 0.4 and 0.5 specifications); the manifest is checked with GNU ``sha256sum -c`` where available.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v04.image import Image as ImageV04
from ome_zarr_models.v05.image import Image as ImageV05

from llsmflow.archive import (
    pyramid_factors,
    read_ome_zarr,
    sha256_file,
    verify_manifest,
    write_checksum_manifest,
    write_ome_zarr,
)
from llsmflow.archive.ome_zarr import _compute_and_wait
from llsmflow.errors import LlsmflowError

SHAPE = (2, 2, 16, 64, 64)
VOXEL = (0.2, 0.1, 0.1)
DT = 2.5
NAMES = ["ch488", "ch642"]
WAVES = [510.0, 680.0]
ORIGIN = (1.0, -2.0, 3.5)
ATTRS = {
    "acquisition": {"angle_deg": 31.5, "dz_stage_um": 0.4, "instrument": "LLSM"},
    "history": [{"step": "deskew", "version": "0.1.0"}, {"step": "deconvolve", "iterations": 10}],
    "count": np.int64(3),
}
# Level factors for SHAPE/VOXEL with n_levels=3: y, x halve each level; z halves at level 2 only, when
# dz/dy = 0.2/0.2 = 1 < sqrt(2) (level 1 has dz/dy = 2, which would make voxels less isotropic).
FACTORS = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]


def make_image(dtype) -> np.ndarray:
    rng = np.random.default_rng(42)
    t, c, z, y, x = np.indices(SHAPE, dtype=np.float32)
    blob = 3000 * np.exp(-((z - 8) ** 2 / 8 + (y - 20 - 10 * t) ** 2 / 30 + (x - 30 - 5 * c) ** 2 / 30))
    data = 100 + blob + rng.normal(0, 10, SHAPE)
    return data.astype(dtype)


def block_mean(a: np.ndarray, fz: int, fy: int, fx: int) -> np.ndarray:
    """Reference block mean over (z, y, x) by reshaping, dropping trailing remainders, cast to a's dtype."""
    t, c, z, y, x = a.shape
    a = a[:, :, : z // fz * fz, : y // fy * fy, : x // fx * fx]
    blocks = a.reshape(t, c, z // fz, fz, y // fy, fy, x // fx, fx).astype(np.float64)
    return blocks.mean(axis=(3, 5, 7)).astype(a.dtype)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module", params=["0.5", "0.4"])
def ngff_version(request):
    return request.param


@pytest.fixture(scope="module", params=[np.uint16, np.float32], ids=["uint16", "float32"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, ngff_version, dtype):
    """One archive per (version, dtype), shared by the read-only tests below."""
    data = make_image(dtype)
    out = write_ome_zarr(
        tmp_path_factory.mktemp(f"archive-{ngff_version}-{dtype}") / "sample.ome.zarr",
        da.from_array(data, chunks=(1, 1, 16, 32, 32)),
        voxel_size_um=VOXEL,
        time_interval_s=DT,
        channel_names=NAMES,
        wavelengths_nm=WAVES,
        ngff_version=ngff_version,
        chunks_zyx=(8, 32, 32),
        n_levels=3,
        attributes=ATTRS,
        origin_um=ORIGIN,
    )
    return out, data, ngff_version


def test_zarr_format_matches_ngff_version(archive):
    path, _, version = archive
    if version == "0.5":
        meta = json.loads((path / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
        assert not (path / ".zgroup").exists()
    else:
        assert json.loads((path / ".zgroup").read_text())["zarr_format"] == 2
        assert not (path / "zarr.json").exists()
    assert not list(path.parent.glob(".*partial")), "temporary output left behind"


def test_ome_zarr_py_reader_sees_physical_multiscale(archive):
    path, data, _ = archive
    location = parse_url(str(path), mode="r")
    assert location is not None
    nodes = list(Reader(location)())
    image_nodes = [n for n in nodes if n.load(Multiscales) is not None]
    assert len(image_nodes) == 1
    node = image_nodes[0]

    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["t", "c", "z", "y", "x"]
    assert [a["type"] for a in axes] == ["time", "channel", "space", "space", "space"]
    assert [a.get("unit") for a in axes] == ["second", None, "micrometer", "micrometer", "micrometer"]

    assert len(node.data) == 3
    transforms = node.metadata["coordinateTransformations"]
    dz, dy, dx = VOXEL
    for level, ((fz, fy, fx), level_data, level_tr) in enumerate(
        zip(FACTORS, node.data, transforms, strict=True)
    ):
        assert level_data.shape == (2, 2, 16 // fz, 64 // fy, 64 // fx), level
        by_type = {tr["type"]: tr for tr in level_tr}
        assert level_tr[0]["type"] == "scale"
        np.testing.assert_allclose(
            by_type["scale"]["scale"], [DT, 1.0, fz * dz, fy * dy, fx * dx], rtol=1e-12
        )
        expected_translation = [0, 0] + [
            o + (f - 1) * d / 2 for o, f, d in zip(ORIGIN, (fz, fy, fx), VOXEL, strict=True)
        ]
        np.testing.assert_allclose(by_type["translation"]["translation"], expected_translation, atol=1e-12)

    assert node.metadata["channel_names"] == NAMES
    # Level 0 read through ome-zarr-py is the data we wrote.
    np.testing.assert_array_equal(node.data[0].compute(), data)


def test_validates_against_ome_zarr_models(archive):
    path, _, version = archive
    group = zarr.open_group(str(path), mode="r")
    model_cls = ImageV05 if version == "0.5" else ImageV04
    model = model_cls.from_zarr(group)  # raises pydantic.ValidationError if the metadata break the spec
    attrs = model.ome_attributes if version == "0.5" else model.attributes
    multiscale = attrs.multiscales[0]
    assert [d.path for d in multiscale.datasets] == ["s0", "s1", "s2"]
    assert [a.unit for a in multiscale.axes] == ["second", None, "micrometer", "micrometer", "micrometer"]
    # The generic entry point recognises it as an image of the right version.
    opened = open_ome_zarr(group)
    assert isinstance(opened, model_cls)
    # And the other version's model rejects it: the check is not vacuous.
    other = ImageV04 if version == "0.5" else ImageV05
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError or ValueError, depending on version
        other.from_zarr(group)


def test_data_and_metadata_round_trip(archive):
    path, data, version = archive
    image, meta = read_ome_zarr(path)
    assert isinstance(image, da.Array)
    assert image.shape == SHAPE and image.dtype == data.dtype
    np.testing.assert_array_equal(image.compute(), data)
    np.testing.assert_allclose(meta["voxel_size_um"], VOXEL, rtol=1e-12)
    assert meta["time_interval_s"] == pytest.approx(DT)
    np.testing.assert_allclose(meta["origin_um"], ORIGIN, atol=1e-12)
    assert meta["channel_names"] == NAMES
    assert meta["wavelengths_nm"] == WAVES
    assert meta["ngff_version"] == version
    assert meta["n_levels"] == 3
    expected_llsmflow = {**ATTRS, "count": 3}
    assert meta["llsmflow"] == expected_llsmflow
    # The attributes sit under "llsmflow" in the root group's attributes, beside (not inside) "ome".
    assert zarr.open_group(str(path), mode="r").attrs["llsmflow"] == expected_llsmflow


def test_pyramid_levels_are_block_means(archive):
    path, data, _ = archive
    group = zarr.open_group(str(path), mode="r")
    reference = data
    previous = (1, 1, 1)
    for level, factors in enumerate(FACTORS):
        relative = tuple(f // p for f, p in zip(factors, previous, strict=True))
        reference = block_mean(reference, *relative)
        previous = factors
        stored = np.asarray(group[f"s{level}"])
        assert stored.dtype == data.dtype
        if data.dtype.kind == "f":
            np.testing.assert_allclose(stored, reference, rtol=1e-6)
        else:
            np.testing.assert_array_equal(stored, reference)


def test_chunks_compression_and_omero(archive):
    path, data, version = archive
    group = zarr.open_group(str(path), mode="r")
    assert group["s0"].chunks == (1, 1, 8, 32, 32)
    assert group["s2"].chunks == (1, 1, 8, 16, 16)  # clipped to the level's (8, 16, 16)
    for level in ("s0", "s1", "s2"):
        codecs = repr(group[level].compressors).lower()
        assert "blosc" in codecs and "zstd" in codecs, codecs
    # Chunks are really compressed: the store is smaller than the raw level 0.
    stored_bytes = sum(p.stat().st_size for p in (path / "s0").rglob("*") if p.is_file())
    assert stored_bytes < data.nbytes

    attrs = group.attrs.asdict()
    omero = attrs["ome"]["omero"] if version == "0.5" else attrs["omero"]
    channels = omero["channels"]
    assert [ch["label"] for ch in channels] == NAMES
    assert [ch["color"] for ch in channels] == ["00FF00", "FF00FF"]  # green for 510 nm, magenta for 680 nm
    assert [ch["emission_wavelength_nm"] for ch in channels] == WAVES
    for c, ch in enumerate(channels):
        lo, hi = np.percentile(data[:, c].astype(np.float64), [0.1, 99.9])
        window = ch["window"]
        assert window["start"] == pytest.approx(lo, rel=1e-6)
        assert window["end"] == pytest.approx(hi, rel=1e-6)
        assert window["min"] <= window["start"] < window["end"] <= window["max"]
        if data.dtype == np.uint16:
            assert (window["min"], window["max"]) == (0, 65535)


def test_default_levels_stop_below_64_px_and_z_follows_isotropy(tmp_path):
    data = np.arange(1 * 1 * 4 * 200 * 130, dtype=np.uint16).reshape(1, 1, 4, 200, 130)
    out = write_ome_zarr(tmp_path / "a.ome.zarr", data, (0.5, 0.1, 0.1), 1.0, ["c0"], ngff_version=0.4)
    _, meta = read_ome_zarr(out)
    assert meta["ngff_version"] == "0.4"  # a YAML number 0.4 is accepted as the version "0.4"
    # 200 -> 100 -> 50 (< 64: stop); z (0.5 µm) stays coarser than the lateral 0.4 µm, so it is never halved.
    assert meta["level_shapes"] == [(1, 1, 4, 200, 130), (1, 1, 4, 100, 65), (1, 1, 4, 50, 32)]
    assert pyramid_factors((16, 64, 64), (0.1, 0.1, 0.1), n_levels=3) == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    assert pyramid_factors((16, 63, 63), (0.1, 0.1, 0.1)) == [(1, 1, 1)]
    with pytest.raises(LlsmflowError, match="n_levels=9"):
        pyramid_factors((16, 64, 64), VOXEL, n_levels=9)


def test_odd_sizes_use_exact_scale_and_drop_remainder(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, (1, 1, 5, 67, 65)).astype(np.uint16)
    out = write_ome_zarr(tmp_path / "odd.ome.zarr", data, (0.3, 0.1, 0.1), 1.0, ["c0"], n_levels=2)
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(np.asarray(group["s1"]), block_mean(data, 1, 2, 2))
    ms = group.attrs["ome"]["multiscales"][0]
    np.testing.assert_allclose(
        ms["datasets"][1]["coordinateTransformations"][0]["scale"], [1, 1, 0.3, 0.2, 0.2]
    )
    np.testing.assert_allclose(
        ms["datasets"][1]["coordinateTransformations"][1]["translation"], [0, 0, 0, 0.05, 0.05]
    )
    ImageV05.from_zarr(group)


def test_dask_input_is_computed_once_chunk_by_chunk(tmp_path):
    base = make_image(np.uint16)
    calls: Counter = Counter()
    lock = threading.Lock()

    def tracked(block, block_info=None):
        with lock:
            calls[tuple(block_info[0]["chunk-location"])] += 1
        return block

    chunks = (1, 1, 8, 32, 32)
    lazy = da.from_array(base, chunks=chunks).map_blocks(
        tracked, dtype=base.dtype, meta=np.empty((0,) * 5, base.dtype)
    )
    out = write_ome_zarr(
        tmp_path / "lazy.ome.zarr", lazy, VOXEL, DT, NAMES, chunks_zyx=(8, 32, 32), n_levels=3
    )
    n_blocks = int(np.prod([len(c) for c in lazy.chunks]))
    assert len(calls) == n_blocks and set(calls.values()) == {1}  # every block once, none twice
    np.testing.assert_array_equal(read_ome_zarr(out)[0].compute(), base)


def failing_image(dtype=np.uint16) -> da.Array:
    """A lazy image whose third computed chunk fails at once while every other chunk takes 50 ms.

    Chunks still being computed when the failure propagates would write into the temporary directory after
    it was removed, unless the writer waits for them: the tests below look for such late writes.
    """
    base = da.ones(SHAPE, dtype=dtype, chunks=(1, 1, 8, 32, 32))
    calls = []
    lock = threading.Lock()

    def fail_at_third_chunk(block, block_info=None):
        with lock:
            calls.append(block_info[0]["chunk-location"])
            n = len(calls)
        if n == 3:
            raise RuntimeError("simulated failure while computing a chunk")
        time.sleep(0.05)
        return block

    return base.map_blocks(fail_at_third_chunk, dtype=dtype, meta=np.empty((0,) * 5, dtype))


def test_interrupted_write_leaves_no_output(tmp_path, ngff_version):
    out = tmp_path / "broken.ome.zarr"
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_ome_zarr(
            out, failing_image(), VOXEL, DT, NAMES, ngff_version=ngff_version, chunks_zyx=(8, 32, 32)
        )
    time.sleep(0.2)  # let any chunk task that outlived the failure finish (it must not exist)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "temporary output left behind"


def test_failed_compute_waits_for_running_chunk_tasks():
    """After a failure, no chunk task may still be running (it would write into the removed temp dir)."""
    events = []
    lock = threading.Lock()
    started = threading.Event()

    def slow_chunk(i):
        with lock:
            events.append(("start", i))
        started.set()
        time.sleep(0.2)
        with lock:
            events.append(("end", i))

    def failing_chunk():
        started.wait(2.0)  # fail while a slow chunk task is running
        raise RuntimeError("simulated failure")

    tasks = [dask.delayed(failing_chunk)(), *[dask.delayed(slow_chunk)(i) for i in range(4)]]
    with dask.config.set(num_workers=2), pytest.raises(RuntimeError, match="simulated failure"):
        _compute_and_wait(tasks)
    with lock:
        snapshot = list(events)
    started_ids = {i for kind, i in snapshot if kind == "start"}
    ended_ids = {i for kind, i in snapshot if kind == "end"}
    assert started_ids and started_ids == ended_ids


def test_interrupted_overwrite_keeps_previous_archive(tmp_path):
    out = tmp_path / "kept.ome.zarr"
    good = make_image(np.uint16)
    write_ome_zarr(out, good, VOXEL, DT, NAMES, attributes={"run": 1})
    before = {name: sha256_file(out / name) for name in files_under(out)}
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_ome_zarr(out, failing_image(), VOXEL, DT, NAMES, attributes={"run": 2}, chunks_zyx=(8, 32, 32))
    time.sleep(0.2)
    assert {name: sha256_file(out / name) for name in files_under(out)} == before
    image, meta = read_ome_zarr(out)
    assert meta["llsmflow"] == {"run": 1}
    np.testing.assert_array_equal(image.compute(), good)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.ome.zarr"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_tczyx": np.zeros((2, 16, 64, 64), np.uint16)}, "expected 5-D"),
        ({"image_tczyx": np.zeros((1, 1, 2, 8, 8), np.complex64)}, "complex64"),
        ({"channel_names": ["a"]}, "expected 2 non-empty strings"),
        ({"channel_names": ["a", "a"]}, "unique"),
        ({"wavelengths_nm": [510.0]}, "wavelengths"),
        ({"voxel_size_um": (0.2, -0.1, 0.1)}, "voxel size"),
        ({"voxel_size_um": (0.1, 0.1)}, "three values"),
        ({"time_interval_s": 0}, "time interval"),
        ({"ngff_version": "0.3"}, "NGFF version '0.3'"),
        ({"chunks_zyx": (0, 32, 32)}, "chunks"),
        ({"n_levels": 0}, "n_levels"),
        ({"origin_um": (0.0, float("nan"), 0.0)}, "origin"),
        ({"attributes": {"bad": object()}}, "JSON"),
    ],
)
def test_bad_input_raises_llsmflow_error(tmp_path, kwargs, match):
    args = {
        "out_path": tmp_path / "x.ome.zarr",
        "image_tczyx": np.zeros(SHAPE, np.uint16),
        "voxel_size_um": VOXEL,
        "time_interval_s": DT,
        "channel_names": NAMES,
        **kwargs,
    }
    with pytest.raises(LlsmflowError, match=match) as info:
        write_ome_zarr(**args)
    assert info.value.path == tmp_path / "x.ome.zarr"
    assert not (tmp_path / "x.ome.zarr").exists()


def test_read_errors_name_the_path(tmp_path):
    with pytest.raises(LlsmflowError, match="not found") as info:
        read_ome_zarr(tmp_path / "missing.ome.zarr")
    assert info.value.path == tmp_path / "missing.ome.zarr"
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("a", shape=(4,), dtype="u1")
    with pytest.raises(LlsmflowError, match="multiscales") as info:
        read_ome_zarr(plain)
    assert info.value.path == plain
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LlsmflowError) as info:
        read_ome_zarr(empty)
    assert info.value.path == empty


# ---------------------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_archive(tmp_path, ngff_version):
    root = write_ome_zarr(
        tmp_path / "arch.ome.zarr",
        make_image(np.uint16),
        VOXEL,
        DT,
        NAMES,
        ngff_version=ngff_version,
        chunks_zyx=(8, 32, 32),
        n_levels=2,
    )
    raw = tmp_path / "raw_input.tif"
    raw.write_bytes(b"raw acquisition bytes" * 100)
    return root, raw


def chunk_files(root: Path) -> list[str]:
    """Chunk files of level s0 (zarr v3: s0/c/..., zarr v2: s0/0/...), not metadata files."""
    meta_names = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
    return sorted(p for p in files_under(root) if p.startswith("s0/") and Path(p).name not in meta_names)


def test_sha256_file_matches_hashlib(tmp_path):
    f = tmp_path / "f.bin"
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several read blocks plus a remainder
    f.write_bytes(payload)
    assert sha256_file(f) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(LlsmflowError, match="not a file"):
        sha256_file(tmp_path)


def test_manifest_lists_every_file(small_archive, tmp_path):
    root, raw = small_archive
    manifest = write_checksum_manifest(root, tmp_path / "manifest.sha256", extra_files={"raw/input.tif": raw})
    lines = manifest.read_text().splitlines()
    entries = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        entries[name] = digest
    names = [line.split("  ", 1)[1] for line in lines]
    assert names == sorted(names)
    assert set(entries) == files_under(root) | {"raw/input.tif"}
    assert len(chunk_files(root)) >= 8  # 2 t x 2 c x 2 z-chunks x 2 x 2 lateral chunks
    for name, digest in entries.items():
        source = raw if name == "raw/input.tif" else root / name
        assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert verify_manifest(root, manifest, extra_files={"raw/input.tif": raw}) == {
        "missing": [],
        "extra": [],
        "changed": [],
    }
    # Without telling verify where the extra file lives, it cannot be found under root.
    assert verify_manifest(root, manifest)["missing"] == ["raw/input.tif"]


def test_manifest_is_sha256sum_compatible(small_archive, tmp_path):
    if shutil.which("sha256sum") is None:
        pytest.skip("GNU sha256sum not installed")
    root, _ = small_archive
    manifest = write_checksum_manifest(root, tmp_path / "manifest.sha256")
    ok = subprocess.run(["sha256sum", "--check", "--strict", "--quiet", str(manifest)], cwd=root)
    assert ok.returncode == 0
    chunk = root / chunk_files(root)[0]
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    bad = subprocess.run(["sha256sum", "--check", "--quiet", str(manifest)], cwd=root, capture_output=True)
    assert bad.returncode != 0


def test_verify_reports_flipped_deleted_and_stray(small_archive, tmp_path):
    root, raw = small_archive
    manifest = write_checksum_manifest(root, tmp_path / "manifest.sha256", extra_files={"raw/input.tif": raw})
    chunks = chunk_files(root)
    flipped, deleted = chunks[0], chunks[-1]

    data = bytearray((root / flipped).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / flipped).write_bytes(bytes(data))
    result = verify_manifest(root, manifest, extra_files={"raw/input.tif": raw})
    assert result == {"missing": [], "extra": [], "changed": [flipped]}

    (root / deleted).unlink()
    result = verify_manifest(root, manifest, extra_files={"raw/input.tif": raw})
    assert result == {"missing": [deleted], "extra": [], "changed": [flipped]}

    (root / "s0" / "stray.txt").write_text("not part of the archive")
    result = verify_manifest(root, manifest, extra_files={"raw/input.tif": raw})
    assert result == {"missing": [deleted], "extra": ["s0/stray.txt"], "changed": [flipped]}

    raw.write_bytes(b"tampered")
    result = verify_manifest(root, manifest, extra_files={"raw/input.tif": raw})
    assert result["changed"] == sorted([flipped, "raw/input.tif"])


def test_manifest_inside_root_is_not_listed(small_archive):
    root, _ = small_archive
    manifest = write_checksum_manifest(root, root / "MANIFEST.sha256")
    assert "MANIFEST.sha256" not in manifest.read_text()
    assert verify_manifest(root, manifest) == {"missing": [], "extra": [], "changed": []}
    # Rewriting replaces it (atomically) rather than listing the old manifest.
    first = manifest.read_text()
    again = write_checksum_manifest(root, root / "MANIFEST.sha256")
    assert again.read_text() == first


def test_manifest_escapes_awkward_names(tmp_path):
    root = tmp_path / "tree"
    (root / "sub dir").mkdir(parents=True)
    (root / "sub dir" / "a b.txt").write_text("spaces")
    (root / "back\\slash.txt").write_text("backslash")
    manifest = write_checksum_manifest(root, tmp_path / "m.sha256")
    assert verify_manifest(root, manifest) == {"missing": [], "extra": [], "changed": []}
    if shutil.which("sha256sum"):
        assert (
            subprocess.run(["sha256sum", "-c", "--strict", "--quiet", str(manifest)], cwd=root).returncode
            == 0
        )


def test_manifest_errors(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.txt").write_text("a")
    with pytest.raises(LlsmflowError, match="not a directory"):
        write_checksum_manifest(tmp_path / "nope", tmp_path / "m.sha256")
    with pytest.raises(LlsmflowError, match="collides"):
        write_checksum_manifest(root, tmp_path / "m.sha256", extra_files={"a.txt": root / "a.txt"})
    with pytest.raises(LlsmflowError, match="relative path"):
        write_checksum_manifest(root, tmp_path / "m.sha256", extra_files={"../x": root / "a.txt"})
    with pytest.raises(LlsmflowError, match="not a file"):
        write_checksum_manifest(root, tmp_path / "m.sha256", extra_files={"raw/x": tmp_path / "absent.tif"})
    assert not (tmp_path / "m.sha256").exists()
    bad = tmp_path / "bad.sha256"
    bad.write_text("not-a-hash  a.txt\n")
    with pytest.raises(LlsmflowError, match="line 1") as info:
        verify_manifest(root, bad)
    assert info.value.path == bad
    with pytest.raises(LlsmflowError, match="manifest not found"):
        verify_manifest(root, tmp_path / "absent.sha256")


# ------------------------------------------------------------------------------------------------------------
# package layout: old import paths, light manifest module, defaults stated once


def test_old_import_paths_and_light_manifest_module():
    import sys

    import llsmflow.archive as archive

    for name in [*archive.__all__, "write_dataset_archive", "verify_archive", "pyramid_factors",
                 "wavelength_color", "MANIFEST_NAME", "TABLES_DIR", "RAW_PREFIX", "WORKFLOW_MARKERS",
                 "AXES", "NGFF_VERSIONS", "MIN_LATERAL_PX", "DEFAULT_COLORS"]:  # fmt: skip
        assert getattr(archive, name) is not None
    from llsmflow.io import sha256_file as from_io

    assert archive.sha256_file is from_io
    code = (
        "import sys; from llsmflow.archive.manifest import write_checksum_manifest; "
        "heavy = [m for m in ('zarr', 'dask', 'ome_zarr', 'ome_zarr_models', 'pandas') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""



def test_unknown_emission_is_recorded_as_unknown(tmp_path):
    """A channel whose emission the instrument does not know (Zeiss CZIs hold NaN) gets the default colour and
    no wavelength; the others keep theirs."""
    from llsmflow.archive.ome_zarr import DEFAULT_COLORS, wavelength_color
    from llsmflow.archive.read import read_ome_zarr

    data = make_image("uint16")
    out = write_ome_zarr(
        tmp_path / "unknown.ome.zarr",
        da.from_array(data),
        voxel_size_um=VOXEL,
        time_interval_s=DT,
        channel_names=NAMES,
        wavelengths_nm=[None, WAVES[1]],
    )
    channels = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["omero"]["channels"]
    assert "emission_wavelength_nm" not in channels[0] and channels[0]["color"] == DEFAULT_COLORS[0]
    assert channels[1]["emission_wavelength_nm"] == WAVES[1] and channels[1]["color"] == wavelength_color(WAVES[1])
    assert read_ome_zarr(out)[1]["wavelengths_nm"] is None
    with pytest.raises(LlsmflowError, match="expected 2 positive values"):
        write_ome_zarr(
            tmp_path / "bad.ome.zarr", da.from_array(data), VOXEL, DT, NAMES, wavelengths_nm=[None, -5.0]
        )


def test_archive_command_keeps_colours_names_and_acquisition(tmp_path, capsys):
    """``llsmflow archive --acquisition``: what the workflow's archive keeps (it lost the colours, which fell
    back to the defaults, and the acquisition metadata, which was not stored)."""
    import zarr

    from llsmflow.cli import main

    rng = np.random.default_rng(3)
    stores = []
    for t in range(2):
        for c in range(2):
            store = tmp_path / f"fused-t{t}-c{c}.zarr"
            array = zarr.create_array(str(store), shape=(4, 16, 16), dtype="uint16", zarr_format=3)
            array[...] = rng.integers(0, 500, size=(4, 16, 16), dtype=np.uint16)
            array.attrs.update(origin_um=[0.5, 1.0, -2.0], voxel_size_um=[0.3, 0.1, 0.1])
            stores.append(str(store))
    acquisition = {
        "format": "llsmflow-acquisition/1",
        "time_interval_s": 2.0,
        "channels": [{"name": "GFP", "emission_nm": 510}, {"name": "mCherry", "emission_nm": 610}],
    }
    (tmp_path / "acquisition.json").write_text(json.dumps(acquisition))
    out = tmp_path / "cli.ome.zarr"
    argv = ["archive", *stores, "--output", str(out), "--channels", "2", "--timepoints", "2"]
    argv += ["--time-interval-s", "2", "--acquisition", str(tmp_path / "acquisition.json")]
    assert main(argv) == 0, capsys.readouterr().err
    _, meta = read_ome_zarr(out)
    assert meta["channel_names"] == ["GFP", "mCherry"] and meta["wavelengths_nm"] == [510, 610]
    assert meta["llsmflow"]["acquisition"] == acquisition
    assert meta["origin_um"] == pytest.approx((0.5, 1.0, -2.0))
    omero = zarr.open_group(str(out), mode="r").attrs.asdict()["ome"]["omero"]
    assert [c["color"] for c in omero["channels"]] == ["00FF00", "FF0000"]
