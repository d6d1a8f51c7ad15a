"""The raw ingest of a single OME-TIFF by URL: ``io.read_volume``/``io.read_header`` over a real HTTP server on
localhost that answers Range requests (as web servers and object stores do), counting the bytes it sends.
Reading one channel of one timepoint fetches about that volume's pages, not the file."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading

import numpy as np
import pytest
import tifffile

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from llsmflow.errors import LlsmflowError  # noqa: E402
from llsmflow.io import read_header, read_volume  # noqa: E402

SHAPE = (4, 2, 8, 256, 256)  # T, C, Z, Y, X


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """python's file server plus single byte ranges (``Range: bytes=a-b``, answered 206)."""

    sent = [0]

    def do_GET(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        start = int(match[1])
        end = min(int(match[2]) if match[2] else size - 1, size - 1)
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        self.sent[0] += len(body)

    def copyfile(self, source, outputfile):
        data = source.read()
        self.sent[0] += len(data)
        outputfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiffs")
    data = np.random.default_rng(3).integers(0, 4000, SHAPE, dtype=np.uint16)
    path = root / "cell.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "TCZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.3},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", path, data
    server.shutdown()
    server.server_close()


def test_read_one_volume_of_an_ome_tiff_by_url(served):
    base, path, data = served
    url = f"{base}/cell.ome.tif"
    RangeHandler.sent[0] = 0
    assert read_header(url, channel=1, timepoint=2) == read_header(path, channel=1, timepoint=2)
    header_bytes, RangeHandler.sent[0] = RangeHandler.sent[0], 0
    remote = read_volume(url, channel=1, timepoint=2)
    volume_bytes = RangeHandler.sent[0]
    local = read_volume(path, channel=1, timepoint=2)
    np.testing.assert_array_equal(remote.data, data[2, 1])
    np.testing.assert_array_equal(remote.data, local.data)
    assert remote.voxel_size_um == local.voxel_size_um == (0.3, 0.1, 0.1)
    size = path.stat().st_size
    print(f"header {header_bytes} B, one volume {volume_bytes} B of {data[2, 1].nbytes} B, file {size} B")
    # the volume is 1/8 of the file; reading every page's IFD (4 KiB blocks) and the OME-XML add a little
    assert data[2, 1].nbytes <= volume_bytes < 0.25 * size, (volume_bytes, size)
    assert header_bytes < 0.1 * size


def test_tiff_url_errors_are_one_line_without_credentials(served):
    base = served[0]
    with pytest.raises(LlsmflowError, match=r"C index 5 out of range") as info:
        read_volume(f"{base.replace('http://', 'http://bob:pw@')}/cell.ome.tif?sig=zzz", channel=5, timepoint=0)
    assert "pw@" not in str(info.value) and "zzz" not in str(info.value)
    with pytest.raises(LlsmflowError, match="cannot read as TIFF") as info:
        read_volume(f"{base.replace('http://', 'http://bob:pw@')}/absent.ome.tif")
    assert "pw@" not in str(info.value) and len(str(info.value).splitlines()) == 1


def test_a_server_without_range_requests_is_one_line_not_a_download(served, tmp_path):
    _, path, _ = served

    class Plain(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Plain, directory=str(path.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LlsmflowError, match="support range requests") as info:
            read_volume(f"http://127.0.0.1:{server.server_port}/cell.ome.tif", channel=0, timepoint=0)
        assert len(str(info.value).splitlines()) == 1
    finally:
        server.shutdown()
        server.server_close()
