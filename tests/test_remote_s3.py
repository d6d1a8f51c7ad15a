"""Data where they live, over ``s3://``: a real S3-compatible server on localhost (moto's ``ThreadedMotoServer``,
a werkzeug server speaking the S3 REST API) holds the session's ``tiny_run`` archive, a tampered copy and the
raw folder; s3fs is pointed at it the way a user points it at any S3-compatible store (the environment:
``AWS_ENDPOINT_URL`` and credentials, read by botocore, docs/remote.md).

Ground truth: the local files. ``llsmflow verify`` says intact and, because S3 lists, also checks extra files;
a changed, a missing and an extra object are each named; ``llsmflow track`` by URL equals ``track`` of the local
archive; ``read_ome_zarr`` values and metadata equal, reading one (t, c) fetches that volume's chunk only (the
server's request log); ``read_acquisition("s3://…/raw/")`` (UrlPath's s3 listing) and ``io.read_volume`` equal
the local reads.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("s3fs", reason="s3:// needs s3fs (pip install s3fs)")
pytest.importorskip("moto.server", reason="the S3 server of this test is moto's: pip install 'moto[server]'")

from llsmflow.archive import read_ome_zarr, verify_archive  # noqa: E402
from llsmflow.cli import main  # noqa: E402
from llsmflow.errors import LlsmflowError  # noqa: E402
from llsmflow.ingest import read_acquisition  # noqa: E402
from llsmflow.io import UrlPath, read_volume  # noqa: E402
from tests.conftest import LLSMFLOW  # noqa: E402

BUCKET = "llsmflow-test"
REQUEST = re.compile(r'"(GET|HEAD) (/[^ ?]*)')


class _Requests(logging.Handler):
    """The server's request log (werkzeug logs one line per request): ``(method, path)`` of each."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, str]] = []

    def emit(self, record):
        match = REQUEST.search(record.getMessage())
        if match:
            self.seen.append(match.groups())

    def reset(self) -> list[tuple[str, str]]:
        seen, self.seen = self.seen, []
        return seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_environment(endpoint: str) -> dict[str, str]:
    """What a user sets for an S3-compatible store other than AWS (credentials: any, for moto)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "llsmflow-test-key",
        "AWS_SECRET_ACCESS_KEY": "llsmflow-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,  # nothing of this machine's own AWS configuration
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",  # no credentials looked for on a cloud instance's metadata service
    }


@pytest.fixture(scope="module")
def s3(tiny_run):
    """``tiny_run``'s archive (twice: ``tiny.ome.zarr`` and ``tampered.ome.zarr``) and raw folder in a bucket of
    a moto S3 server on localhost; the environment points s3fs at it for the module."""
    import s3fs
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    requests, level, propagate = _Requests(), werkzeug.level, werkzeug.propagate
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # the request log is counted, not printed
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _user_environment(endpoint).items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # a filesystem made before reads the old environment
        fs = s3fs.S3FileSystem()
        archive = tiny_run.run_dir / "results" / "tiny" / "tiny.ome.zarr"
        raw = tiny_run.acquisition / "raw"
        fs.mkdir(BUCKET, acl="public-read")  # readable without credentials too, as public data are
        fs.put(str(archive), f"{BUCKET}/results/tiny.ome.zarr", recursive=True)
        fs.put(str(archive), f"{BUCKET}/results/tampered.ome.zarr", recursive=True)
        fs.put(str(raw), f"{BUCKET}/raw", recursive=True)
        fs.invalidate_cache()
        requests.reset()
        yield SimpleNamespace(
            fs=fs,
            endpoint=endpoint,
            url=f"s3://{BUCKET}/results/tiny.ome.zarr",
            raw_url=f"s3://{BUCKET}/raw",
            archive=archive,
            raw=raw,
            requests=requests,
        )
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
    werkzeug.removeHandler(requests)
    werkzeug.setLevel(level)
    werkzeug.propagate = propagate


def test_verify_over_s3_checks_every_file_extra_ones_too(s3):
    # as a user runs it, in a shell; the endpoint given the other way: fsspec's configuration from the
    # environment (the in-process calls here use AWS_ENDPOINT_URL, read by botocore)
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    verified = subprocess.run(
        [str(LLSMFLOW), "verify", s3.url],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(env, FSSPEC_S3_ENDPOINT_URL=s3.endpoint),
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout and "not checked: extra files" not in verified.stdout
    report = verify_archive(s3.url)
    assert report["missing"] == report["changed"] == report["extra"] == report["tables"] == []
    assert not any(line.startswith("extra files") for line in report["unchecked"])
    assert not any("raw/" in line for line in report["unchecked"])  # where archived: this machine
    # the raw inputs checked by URL: the folder in the bucket, then a prefix that has none of them
    for archive in (s3.url, s3.archive):  # the archive in the bucket, and the local one
        checked = verify_archive(archive, raw_dir=f"{s3.raw_url}/")
        assert checked["missing"] == checked["changed"] == checked["extra"] == [], checked
        assert not any("raw/" in line for line in checked.get("unchecked", []))
        assert main(["verify", str(archive), "--raw-dir", s3.raw_url]) == 0
    manifest = (s3.archive / "checksums.sha256").read_text(encoding="utf-8").split()
    raw_names = sorted(name for name in manifest if name.startswith("raw/"))
    assert raw_names and verify_archive(s3.url, raw_dir=f"s3://{BUCKET}/elsewhere")["missing"] == raw_names

    tampered = f"{BUCKET}/results/tampered.ome.zarr"
    s3.fs.pipe(f"{tampered}/s0/c/0/0/0/0/0", s3.fs.cat(f"{tampered}/s0/c/0/0/0/0/0")[::-1])
    s3.fs.rm(f"{tampered}/s1/c/1/1/0/0/0")
    s3.fs.pipe(f"{tampered}/s0/c/notes.txt", b"not part of the archive")
    report = verify_archive(f"s3://{tampered}")
    assert report["changed"] == ["s0/c/0/0/0/0/0"]
    assert report["missing"] == ["s1/c/1/1/0/0/0"]
    assert report["extra"] == ["s0/c/notes.txt"]
    assert main(["verify", f"s3://{tampered}"]) == 1


def test_track_and_read_ome_zarr_over_s3_equal_local(s3, tmp_path, capsys):
    local, local_meta = read_ome_zarr(s3.archive)
    s3.requests.reset()
    remote, remote_meta = read_ome_zarr(s3.url)
    assert remote_meta == local_meta and remote.shape == local.shape
    one = remote[1, 0].compute()
    chunks = {p for method, p in s3.requests.reset() if method == "GET" and "/c/" in p}
    # only chunk objects of that (t, c) of level 0 are fetched (one object in the tiny run's archive)
    assert chunks and all(p.startswith(f"/{BUCKET}/results/tiny.ome.zarr/s0/c/1/0/") for p in chunks), chunks
    np.testing.assert_array_equal(one, local[1, 0].compute())
    np.testing.assert_array_equal(remote.compute(), local.compute())

    assert main(["track", str(s3.archive), "--output", str(tmp_path / "local.csv")]) == 0
    assert main(["track", f"{s3.url}/", "--output", str(tmp_path / "remote.csv")]) == 0
    capsys.readouterr()
    local_tracks, remote_tracks = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "remote.csv")
    assert len(local_tracks) > 0
    pd.testing.assert_frame_equal(remote_tracks, local_tracks)


def test_raw_folder_and_stack_over_s3_equal_local(s3):
    folder = UrlPath(f"{s3.raw_url}/")
    assert folder.is_dir() and not (folder / "acquisition.json").is_dir()
    listed = sorted(p.name for p in folder.iterdir())
    assert listed == sorted(p.name for p in s3.raw.iterdir())
    assert (folder / "acquisition.json").stat().st_size == (s3.raw / "acquisition.json").stat().st_size

    local, remote = read_acquisition(s3.raw), read_acquisition(f"{s3.raw_url}/")
    assert str(remote.raw_dir) == s3.raw_url
    assert str(remote.metadata_path) == f"{s3.raw_url}/acquisition.json"
    for field in fields(local):
        a, b = getattr(local, field.name), getattr(remote, field.name)
        if field.name in ("raw_dir", "metadata_path"):
            continue
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(b, a)
        else:
            assert b == a, field.name

    stack = local.samples["path"].iloc[-1]
    expected, got = read_volume(s3.raw / stack), read_volume(f"{s3.raw_url}/{stack}")
    assert got.data.dtype == expected.data.dtype
    np.testing.assert_array_equal(got.data, expected.data)
    assert got.voxel_size_um == expected.voxel_size_um

    with pytest.raises(LlsmflowError, match="cannot be listed as a raw data folder"):
        read_acquisition(f"s3://{BUCKET}/no-such-folder/")


def test_unreachable_endpoint_and_credentials_are_one_line(s3, tmp_path, capsys):
    import s3fs

    # a public bucket read without credentials: fsspec's configuration from the environment (FSSPEC_S3_ANON)
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    public = subprocess.run(
        [str(LLSMFLOW), "verify", s3.url],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(env, FSSPEC_S3_ANON="true"),
    )
    assert public.returncode == 0 and "intact" in public.stdout, public.stdout + public.stderr
    # no credentials at all (and no anon): one line that says what is missing
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_ACCESS_KEY_ID")
        patch.delenv("AWS_SECRET_ACCESS_KEY")
        s3fs.S3FileSystem.clear_instance_cache()
        assert main(["verify", s3.url]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "NoCredentialsError" in lines[0], lines
        assert "expected credentials that may read it" in lines[0] and "FSSPEC_S3_ANON=true" in lines[0]
    s3fs.S3FileSystem.clear_instance_cache()
    # an endpoint that does not answer (one attempt: botocore retries 5 times with back-off by default)
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}", AWS_MAX_ATTEMPTS="1")
    done = subprocess.run(
        [str(LLSMFLOW), "verify", s3.url], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"llsmflow verify: error: {s3.url}/checksums.sha256: cannot be read")
    assert "EndpointConnectionError" in lines[0] and "expected a reachable URL" in lines[0]
    assert "llsmflow-test-secret" not in done.stderr + done.stdout
