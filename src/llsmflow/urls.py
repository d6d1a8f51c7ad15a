"""URLs: data where they live. :func:`is_url`, :func:`redact` (no credentials in any message),
:func:`url_filesystem` (fsspec, one line when a package is missing) and :class:`UrlPath`, the few
:class:`~pathlib.Path` methods that ingest, hashing and the archive use on a raw folder or file by URL.

A bottom module (standard library only; fsspec imported on first use), re-exported by :mod:`llsmflow.io`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

from llsmflow.errors import LlsmflowError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/@\s]*@)?([^\s?#'\"]*)(\?[^\s#'\"]*)?")
_URL_PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "az": "adlfs"}


def is_url(value) -> bool:
    """True when ``value`` is a string with a scheme (``http://``, ``s3://`` …) or a :class:`UrlPath`."""
    return isinstance(value, UrlPath) or (isinstance(value, str) and bool(_URL.match(value)))


def as_path(value) -> Path | UrlPath:
    """A local path as :class:`~pathlib.Path`, a URL as :class:`UrlPath` (``Path`` would fold its ``//``)."""
    return value if isinstance(value, UrlPath) else UrlPath(value) if is_url(value) else Path(value)


class UrlPath:
    """A file or folder at a URL with the few :class:`~pathlib.Path` methods ingest and hashing use, through
    fsspec; ``str()`` is the URL itself (what is read), messages use :func:`redact`.

    Not universal-pathlib: llsmflow needs ten methods, with two choices of its own: over HTTP a URL is a folder
    when it lists with a trailing ``/`` (a server's HTML listing, e.g. python's ``http.server``), so telling a
    file from a folder never downloads the file; ``stat().st_mtime_ns`` is the server's version of the file
    (``Last-Modified``, else its ``ETag``), which keeps cached digests honest (:mod:`llsmflow.provenance.digests`).
    """

    def __init__(self, url, kind: str | None = None):
        self.url, self._kind, self._info = str(url).rstrip("/"), kind, None  # kind: from a listing

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other) -> bool:
        return self.url < str(other)

    def __truediv__(self, name) -> UrlPath:
        from urllib.parse import quote

        name = str(name)
        return UrlPath(name if is_url(name) else f"{self.url}/{quote(name) if self._http() else name}")

    @property
    def name(self) -> str:
        from urllib.parse import unquote

        return unquote(self.url.rsplit("/", 1)[-1].partition("?")[0])

    suffix, stem = property(lambda self: Path(self.name).suffix), property(lambda self: Path(self.name).stem)
    shown = property(lambda self: redact(self.url))  # what messages name (LlsmflowError)
    parent = property(lambda self: UrlPath(self.url.rsplit("/", 1)[0]))
    is_absolute = lambda self: True  # noqa: E731
    resolve = lambda self: self  # noqa: E731
    is_symlink = lambda self: False  # noqa: E731

    def is_relative_to(self, other) -> bool:
        return isinstance(other, UrlPath) and (self.url + "/").startswith(other.url + "/")

    def relative_to(self, other) -> Path:
        from urllib.parse import unquote

        if not self.is_relative_to(other):
            raise ValueError(f"{redact(self.url)} is not under {redact(str(other))}")
        return Path(unquote(self.url[len(other.url) :].lstrip("/")) or ".")

    def _http(self) -> bool:
        return self.url.lower().startswith(("http://", "https://"))

    def info(self) -> dict:
        if self._info is None:
            fs, remote = url_filesystem(self.url)
            self._info = fs.info(remote)
        return self._info

    def is_dir(self) -> bool:
        if self._kind is not None:
            return self._kind == "directory"
        fs, remote = url_filesystem(self.url)
        try:  # over HTTP the folder's listing: a file's URL + "/" is not found (nothing downloaded)
            return bool(fs.ls(remote + "/", detail=False) is not None) if self._http() else fs.isdir(remote)
        except (OSError, ValueError):
            return False

    def is_file(self) -> bool:
        if self._kind is not None:
            return self._kind == "file"
        try:
            return self.info().get("type", "file") == "file"
        except (OSError, ValueError):
            return False

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self):
        """The folder's entries (a server's HTML listing over HTTP; the store's own over s3://)."""
        fs, remote = url_filesystem(self.url)
        base, scheme = self.url + "/", self.url.split("://")[0]
        for entry in fs.ls(remote + "/" if self._http() else remote, detail=True):
            url = str(entry["name"]).rstrip("/")
            url = url if is_url(url) else f"{scheme}://{url}"
            if url.startswith(base) and "/" not in url[len(base) :]:  # not a parent or sorting link
                yield UrlPath(url, kind="directory" if entry.get("type") == "directory" else "file")

    def stat(self):
        """``st_size``; ``st_mtime_ns`` the file's version (Last-Modified, else made from its ETag, else 0)."""
        from email.utils import parsedate_to_datetime
        from types import SimpleNamespace

        info, stamp = self.info(), 0
        version = info.get("Last-Modified") or info.get("LastModified") or info.get("mtime")
        with contextlib.suppress(TypeError, ValueError):
            moment = version if hasattr(version, "timestamp") else parsedate_to_datetime(str(version))
            stamp = int(moment.timestamp() * 1e9)
        if not stamp and info.get("ETag"):
            stamp = int(hashlib.sha256(str(info["ETag"]).encode()).hexdigest()[:15], 16)
        return SimpleNamespace(st_size=int(info.get("size") or 0), st_mtime_ns=stamp)

    def open(self, mode: str = "rb", **kwargs):
        if mode != "rb":
            raise LlsmflowError(f"opened with mode {mode!r}; expected 'rb' (raw data by URL)", redact(self.url))
        fs, remote = url_filesystem(self.url)
        return fs.open(remote, "rb", **kwargs)

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        fs, remote = url_filesystem(self.url)
        return fs.cat_file(remote).decode(encoding, errors)


def redact(text) -> str:
    """``text`` with every URL's credentials removed: ``user:password@`` dropped, a query string shown as
    ``?…`` (pre-signed URLs carry their signature there)."""
    return _URL_IN_TEXT.sub(lambda m: m.group(1) + m.group(2) + ("?…" if m.group(3) else ""), str(text))


def url_filesystem(url: str):
    """``(fsspec filesystem, path within it)``; one clear line when fsspec or the protocol's package is
    missing."""
    scheme = url.partition(":")[0].lower()
    package = _URL_PACKAGES.get(scheme, f"an fsspec implementation of {scheme}://")
    try:
        from fsspec.core import url_to_fs

        return url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise LlsmflowError(
            f"reading {scheme}:// URLs needs fsspec and {package}; expected them installed "
            "(pip install 'llsmflow[remote]'" + ("" if package == "aiohttp" else f" {package}") + ")",
            redact(url),
        ) from exc
