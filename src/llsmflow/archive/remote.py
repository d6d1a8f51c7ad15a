"""Archives where they live: ``http(s)://`` (and ``s3://``, ``gs://`` … where their fsspec package is installed)
URLs for the OME-Zarr readers and for checksum verification.

Reading goes through zarr 3's fsspec store (``zarr.open_group(url)``, ome-zarr-py's ``parse_url``), so a reader
fetches only the metadata and the chunks it computes. Verification cannot list an HTTP "directory", so it
checks every file the archive's ``checksums.sha256`` lists and says what it could not check (extra files; raw
inputs that are not at hand). fsspec is the maintained way to reach these stores from zarr; the only code
written here is the streaming sha256 and the redaction of credentials from every message (``user:password@``
and query strings such as pre-signed S3 signatures never reach an error line or a log).

Optional dependencies: ``pip install 'llsmflow[remote]'`` (fsspec, aiohttp); ``s3fs`` for ``s3://``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from llsmflow.errors import LlsmflowError
from llsmflow.io import is_url, redact, url_filesystem

__all__ = [
    "filesystem",
    "is_url",
    "join",
    "read_member",
    "redact",
    "remote_digests",
    "sha256_url",
    "verify_remote",
]

_BLOCK = 1 << 20
# the URL basics live in the bottom layer, where the TIFF reader uses them too
filesystem = url_filesystem


def join(url: str, name: str) -> str:
    """``url`` + ``/name`` (the query string, if any, kept at the end)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/" + name
    return parts._replace(path=path).geturl()


def unreachable(url: str, exc: BaseException) -> LlsmflowError:
    """The one line for a URL that does not answer (connection refused, DNS, timeout, HTTP error) or refuses
    (no or wrong credentials: what an object store needs is named)."""
    expected = "a reachable URL"
    if "Credentials" in type(exc).__name__ or isinstance(exc, PermissionError):
        expected = "credentials that may read it" + (
            " (AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; FSSPEC_S3_ANON=true for a public "
            "bucket)"
            if url.lower().startswith("s3://")
            else ""
        )
    return LlsmflowError(f"cannot be read ({type(exc).__name__}: {redact(exc)}); expected {expected}", redact(url))


def read_text(url: str, what: str) -> str | None:
    """The file at ``url`` as UTF-8 text; None when the server says it is not there (404)."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise LlsmflowError(f"is not UTF-8 text ({exc}); expected {what}", redact(url)) from exc
    except Exception as exc:  # aiohttp/botocore raise many types for an unreachable server
        raise unreachable(url, exc) from exc


def read_member(archive, relative: str) -> bytes | None:
    """The bytes of the file ``relative`` inside ``archive`` (a local folder or a URL); None when it is absent.

    For the small files beside the arrays (the checksum manifest, the tables) that zarr does not read."""
    if is_url(archive):
        url = join(str(archive), relative)
        fs, path = filesystem(url)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # aiohttp/botocore raise many types for an unreachable server
            raise unreachable(url, exc) from exc
    from pathlib import Path

    member = Path(archive) / relative
    return member.read_bytes() if member.is_file() else None


def sha256_url(url: str) -> str | None:
    """sha256 of the file at ``url``, streamed in 1 MiB blocks; None when it is not there."""
    fs, path = filesystem(url)
    stream = {"block_size": 0} if fs.protocol and "http" in fs.protocol else {}  # no Range requests needed
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb", **stream) as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def listable(url: str) -> list[str] | None:
    """Relative paths of every file under ``url`` when its store can list (S3, GCS, local); None for HTTP."""
    fs, path = filesystem(url)
    if any(
        p in ("http", "https") for p in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    ):
        return None
    root = path.rstrip("/") + "/"
    return sorted(p[len(root) :] for p in fs.find(path) if p.startswith(root))


def remote_digests(url: str, names: list[str], workers: int = 8) -> dict[str, str | None]:
    """``{name: sha256 or None (absent)}`` for the files ``names`` under ``url``, fetched ``workers`` at a
    time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda name: sha256_url(join(url, name)), names))
    return dict(zip(names, digests, strict=True))


def verify_remote(
    url: str,
    manifest_name: str,
    parse_manifest: Callable[[str, str], dict[str, str]],
    raw_prefix: str,
) -> tuple[dict[str, str], dict[str, str | None], list[str] | None]:
    """The manifest's entries, the digests of the archive's own files (raw inputs excluded) and, where the
    store can list, every file present; the checks themselves are :func:`llsmflow.archive.verify_archive`'s.
    """
    manifest_url = join(url, manifest_name)
    text = read_text(manifest_url, "a sha256sum manifest")
    if text is None:
        raise LlsmflowError(
            f"has no {manifest_name}; expected an archive written by llsmflow (incomplete or not ours)",
            redact(url),
        )
    expected = parse_manifest(text, redact(manifest_url))
    own = [name for name in expected if not name.startswith(raw_prefix)]
    try:
        digests = remote_digests(url, own)
        present = listable(url)
    except LlsmflowError:
        raise
    except Exception as exc:
        raise unreachable(url, exc) from exc
    return expected, digests, present
