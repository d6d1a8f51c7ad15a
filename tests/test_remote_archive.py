"""Archives read where they live: a real HTTP server (python's http.server, in a thread, on localhost) serves an
archive written by the library; ``read_ome_zarr``, ``verify_archive`` and ``llsmflow track``/``verify`` read
it by URL. The data must equal the local read, and the bytes the server sent (counted in its handler) show
that one timepoint and channel of level 0 costs a fraction of the archive."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from llsmflow.archive import read_ome_zarr, verify_archive, write_dataset_archive  # noqa: E402
from llsmflow.cli import main  # noqa: E402

SHAPE = (3, 2, 16, 64, 64)  # T, C, Z, Y, X
VOXEL = (0.2, 0.1, 0.1)


class _Counter:
    def __init__(self):
        self.bytes, self.lock = 0, threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def reset(self) -> int:
        with self.lock:
            n, self.bytes = self.bytes, 0
        return n


def _image() -> np.ndarray:
    rng = np.random.default_rng(7)
    t, c, z, y, x = np.indices(SHAPE, dtype=np.float32)
    blobs = sum(
        3000 * np.exp(-((z - 8) ** 2 / 4 + (y - y0 - 4 * t) ** 2 / 6 + (x - x0 - 3 * c) ** 2 / 6))
        for y0, x0 in ((16, 16), (40, 20), (20, 44), (44, 46))
    )
    return (1000 + blobs + rng.normal(0, 150, SHAPE)).clip(0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(base URL, served directory, local archive, raw file, image, counter)``."""
    tmp = tmp_path_factory.mktemp("remote")
    root = tmp / "www"
    root.mkdir()
    raw = tmp / "raw" / "cell_t0.tif"
    raw.parent.mkdir()
    raw.write_bytes(b"raw acquisition bytes" * 50)
    table = tmp / "tracks.parquet"
    pd.DataFrame({"particle": [0, 0, 1], "z_um": [1.0, 1.1, 2.0]}).to_parquet(table)
    image = _image()
    archive = write_dataset_archive(
        root / "cell.ome.zarr",
        image,
        VOXEL,
        2.0,
        ["ch488", "ch560"],
        tables={"tracks": table},
        raw_files=[raw],
        chunks_zyx=(8, 32, 32),
        n_levels=2,
        attributes={"acquisition": {"instrument": "LLSM"}},
    )
    shutil.copytree(archive, root / "tampered.ome.zarr")
    write_dataset_archive(root / "v04.ome.zarr", image[:1, :1], VOXEL, 2.0, ["ch488"], ngff_version="0.4")
    counter = _Counter()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def copyfile(self, source, outputfile):
            data = source.read()
            counter.add(len(data))
            outputfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", root, archive, raw, image, counter
    server.shutdown()
    server.server_close()


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_read_over_http_equals_local_and_fetches_only_the_chunks_needed(served):
    base, _, archive, _, image, counter = served
    url = f"{base}/cell.ome.zarr"
    local, local_meta = read_ome_zarr(archive)
    counter.reset()
    remote, remote_meta = read_ome_zarr(url)
    opened = counter.reset()
    assert remote_meta == local_meta
    assert remote.shape == local.shape == SHAPE
    one = remote[1, 0].compute()
    one_bytes = counter.reset()
    np.testing.assert_array_equal(one, image[1, 0])
    np.testing.assert_array_equal(one, local[1, 0].compute())
    total = _size(archive)
    # one of 6 (t, c) volumes of level 0, of a 2-level archive: well under a quarter of the archive
    print(f"opened {opened} B, one (t, c) of level 0 {one_bytes} B, archive {total} B")
    assert 0 < one_bytes < 0.25 * total, (one_bytes, total)
    assert opened < 0.05 * total, (opened, total)  # opening reads metadata only
    np.testing.assert_array_equal(remote.compute(), image)


def test_verify_over_http_checks_every_listed_file_and_says_what_it_could_not(served):
    base, root, archive, raw, _, counter = served
    counter.reset()
    report = verify_archive(f"{base}/cell.ome.zarr")
    fetched = counter.reset()
    assert report["missing"] == report["changed"] == report["extra"] == report["tables"] == []
    assert any(line.startswith("extra files") for line in report["unchecked"])
    # the raw input is still where it was archived (this machine), so it is checked
    assert not any("raw/" in line for line in report["unchecked"])
    # every listed file of the archive was fetched: the bytes sent are the archive's (manifest included)
    assert fetched >= _size(archive) - (archive / "zarr.json").stat().st_size
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    assert verify_archive(f"{base}/cell.ome.zarr", raw_dir=elsewhere)["missing"] == ["raw/cell_t0.tif"]

    tampered = root / "tampered.ome.zarr"
    chunks = sorted(p for p in (tampered / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[0].write_bytes(chunks[0].read_bytes()[::-1])
    chunks[1].unlink()
    (tampered / "tables" / "tracks.parquet").write_bytes(b"not the table")
    report = verify_archive(f"{base}/tampered.ome.zarr", raw_dir=raw.parent)
    rel = lambda p: p.relative_to(tampered).as_posix()  # noqa: E731
    assert report["changed"] == sorted([rel(chunks[0]), "tables/tracks.parquet"])
    assert report["missing"] == [rel(chunks[1])]
    assert report["tables"] == ["tables/tracks.parquet (attributes record sha256 " + report["tables"][0][48:]]


def test_cli_track_and_verify_by_url(served, tmp_path, capsys):
    base, _, archive, _, _, _ = served
    assert main(["verify", f"{base}/cell.ome.zarr"]) == 0
    out = capsys.readouterr().out
    assert "not checked: extra files" in out and "intact as far as checked" in out
    assert main(["verify", f"{base}/tampered.ome.zarr"]) == 1
    capsys.readouterr()
    args = ["--diameter-um", "0.7", "0.5", "0.5", "--search-range-um", "1.0"]
    assert main(["track", str(archive), "--output", str(tmp_path / "local.csv"), *args]) == 0
    assert main(["track", f"{base}/cell.ome.zarr/", "--output", str(tmp_path / "remote.csv"), *args]) == 0
    local, remote = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "remote.csv")
    assert len(local) >= SHAPE[0] * 3
    pd.testing.assert_frame_equal(local, remote)


@pytest.mark.parametrize("command", ["verify", "track"])
def test_unreachable_url_is_one_line_without_credentials(command, tmp_path, capsys):
    url = f"http://alice:s3cret@127.0.0.1:{_free_port()}/cell.ome.zarr?X-Amz-Signature=deadbeef"
    extra = ["--output", str(tmp_path / "t.csv")] if command == "track" else []
    assert main([command, url, *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert f"llsmflow {command}: error: http://127.0.0.1:" in lines[0]
    assert "cannot be read" in lines[0] and "expected a reachable URL" in lines[0]
    assert "s3cret" not in captured.err + captured.out and "deadbeef" not in captured.err + captured.out


def test_missing_archive_and_missing_protocol_package(served, capsys):
    base = served[0]
    assert main(["verify", f"{base}/absent.ome.zarr"]) == 2
    assert "has no checksums.sha256" in capsys.readouterr().err
    assert main(["track", f"{base}/absent.ome.zarr", "--output", "x.csv"]) == 2
    assert "no zarr group metadata" in capsys.readouterr().err
    try:  # s3fs comes with ome-zarr (fsspec[s3]); gcsfs usually does not
        import gcsfs  # noqa: F401
    except ImportError:
        assert main(["verify", "gs://bucket/cell.ome.zarr"]) == 2
        err = capsys.readouterr().err
        assert "gcsfs" in err and "pip install" in err and len(err.strip().splitlines()) == 1


def test_ngff_04_archive_reads_over_http(served):
    base, root, _, _, image, _ = served
    data, meta = read_ome_zarr(f"{base}/v04.ome.zarr")
    assert meta == read_ome_zarr(root / "v04.ome.zarr")[1] and meta["ngff_version"] == "0.4"
    np.testing.assert_array_equal(data.compute(), image[:1, :1])


def test_convert_by_url_equals_convert_of_the_local_archive(served, tmp_path):
    """`llsmflow convert URL` writes the same copy as from the local folder: image, attributes, tables and the
    raw inputs' manifest lines (the raw files are not at hand on the reader's side)."""
    base, _, archive, _, image, _ = served
    from llsmflow.archive.manifest import _parse_manifest

    assert main(["convert", f"{base}/cell.ome.zarr", "--ngff-version", "0.4", "-o", str(tmp_path / "url")]) == 0
    assert main(["convert", str(archive), "--ngff-version", "0.4", "-o", str(tmp_path / "local")]) == 0
    by_url, meta_url = read_ome_zarr(tmp_path / "url")
    local, meta_local = read_ome_zarr(tmp_path / "local")
    np.testing.assert_array_equal(by_url.compute(), image)
    np.testing.assert_array_equal(local.compute(), image)
    assert meta_url["ngff_version"] == "0.4"
    assert meta_url["llsmflow"]["converted_from"]["path"] == f"{base}/cell.ome.zarr"
    assert meta_url["llsmflow"]["converted_from"]["manifest_sha256"] == (
        meta_local["llsmflow"]["converted_from"]["manifest_sha256"]
    )
    for meta in (meta_url, meta_local):
        meta["llsmflow"].pop("converted_from")
    assert meta_url == meta_local
    # every file but the root attributes (which name the source) is byte-identical
    by_url_files, local_files = (_parse_manifest(tmp_path / n / "checksums.sha256") for n in ("url", "local"))
    assert by_url_files.pop(".zattrs") != local_files.pop(".zattrs")
    assert by_url_files == local_files
    report = verify_archive(tmp_path / "url", raw_dir=served[3].parent)
    assert report["missing"] == report["changed"] == report["extra"] == report["tables"] == []


def test_convert_by_url_refuses_a_tampered_table(served, tmp_path, capsys):
    base, root, _, _, _, _ = served
    table = next((root / "tampered.ome.zarr" / "tables").glob("tracks*"))
    original = table.read_bytes()
    try:
        table.write_bytes(original[:-8] + b"tampered")
        assert main(["convert", f"{base}/tampered.ome.zarr", "-o", str(tmp_path / "copy.ome.zarr")]) == 2
    finally:
        table.write_bytes(original)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "differs from its recorded sha256" in err
    assert not (tmp_path / "copy.ome.zarr").exists()


def test_napari_reader_opens_an_archive_by_url_as_it_opens_the_local_one(served):
    """The npe2 reader by URL: the same image layer (data, scale, translation, names, colours) and tracks layer
    as from the local folder; a URL that is not an llsmflow archive is declined."""
    from llsmflow.viewers.napari_reader import get_reader

    base, root, _, _, image, _ = served
    tracks = pd.DataFrame(
        {
            "particle": [0, 0, 1],
            "frame": [0, 1, 0],
            "z_um": [1.0, 1.1, 2.0],
            "y_um": [2.0, 2.2, 3.0],
            "x_um": [1.5, 1.4, 4.0],
        }
    )
    table = root.parent / "tracks_ch0.parquet"
    tracks.to_parquet(table)
    write_dataset_archive(
        root / "tracked.ome.zarr", image[:2], VOXEL, 2.0, ["ch488", "ch560"], tables={"tracks_ch0": table}
    )
    assert get_reader(f"{base}/missing.ome.zarr") is None
    reader = get_reader(f"{base}/tracked.ome.zarr")
    assert reader is not None
    remote_layers = reader(f"{base}/tracked.ome.zarr")
    local_layers = get_reader(str(root / "tracked.ome.zarr"))(str(root / "tracked.ome.zarr"))
    assert [kind for _, _, kind in remote_layers] == [kind for _, _, kind in local_layers] == ["image", "tracks"]
    (r_data, r_kw, _), (l_data, l_kw, _) = remote_layers[0], local_layers[0]
    assert len(r_data) == len(l_data) > 1  # the pyramid's levels
    for r_level, l_level in zip(r_data, l_data, strict=True):
        np.testing.assert_array_equal(np.asarray(r_level), np.asarray(l_level))
    np.testing.assert_array_equal(np.asarray(r_data[0]), image[:2])
    r_kw["metadata"].pop("llsmflow_archive"), l_kw["metadata"].pop("llsmflow_archive")
    assert r_kw == l_kw
    np.testing.assert_array_equal(remote_layers[1][0], local_layers[1][0])
    np.testing.assert_array_equal(
        remote_layers[1][0], tracks[["particle", "frame", "z_um", "y_um", "x_um"]].to_numpy(dtype=float)
    )
