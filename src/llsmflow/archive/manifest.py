"""Checksum manifests in the ``sha256sum`` line format: write one for a directory, verify a directory.

A manifest line is ``<sha256 hex>  <relative path>`` (two spaces; GNU's escaped form, a leading ``\\``, for
names with a backslash or a line break), sorted by path, so that ``cd ROOT && sha256sum -c MANIFEST`` checks
the files under ``ROOT`` without llsmflow. Files outside ``ROOT`` (raw inputs) are listed under the names they
are given (``raw/<file name>``); docs/provenance.md gives the two ``sha256sum -c`` pipelines that check the
lines of ``ROOT`` and those of the raw directory.

This module is light on purpose (standard library and :mod:`llsmflow.io` only, no zarr, dask or ome-zarr):
the provenance job imports :func:`write_checksum_manifest` alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from llsmflow.errors import LlsmflowError
from llsmflow.io import as_path, atomic_output, sha256_file


def _manifest_line(digest: str, name: str) -> str:
    # GNU sha256sum escapes names containing a backslash or a newline and marks the line with a leading "\".
    if "\\" in name or "\n" in name or "\r" in name:
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}"
    return f"{digest}  {name}"


def _parse_manifest(manifest_path: Path) -> dict[str, str]:
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LlsmflowError(f"cannot read manifest ({exc})", manifest_path) from exc
    return parse_manifest_text(text, manifest_path)


def parse_manifest_text(text: str, manifest_path: str | Path) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of a manifest's text (``manifest_path`` names it in errors: a path or
    a URL, whose manifest was fetched over the network)."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        escaped = line.startswith("\\")
        body = line[1:] if escaped else line
        digest, sep, name = body.partition("  ")
        if not sep:  # binary-mode lines use " *name"
            digest, sep, name = body.partition(" *")
        if (
            not sep
            or len(digest) != 64
            or any(ch not in "0123456789abcdefABCDEF" for ch in digest)
            or not name
        ):
            raise LlsmflowError(
                f"line {number} {line!r} is malformed; expected '<sha256 hex>  <path>'", manifest_path
            )
        if escaped:
            name = name.replace("\\\\", "\0").replace("\\n", "\n").replace("\\r", "\r").replace("\0", "\\")
        if name in entries:
            raise LlsmflowError(
                f"line {number} repeats path {name!r}; expected each path once", manifest_path
            )
        entries[name] = digest.lower()
    return entries


def _files_under(root: Path, exclude: set[Path], follow_symlinks: bool = True) -> dict[str, Path]:
    """``{relative path: path}`` of the files under ``root``; symlinked files are left out unless
    ``follow_symlinks`` (symlinked directories are never entered)."""
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in filenames:
            full = Path(dirpath, filename)
            if not follow_symlinks and full.is_symlink():
                continue
            if full.resolve() in exclude or not full.is_file():
                continue
            files[full.relative_to(root).as_posix()] = full
    return files


def symlinks_under(root: str | Path) -> dict[str, str]:
    """``{relative path: link target}`` of every symbolic link under ``root`` (files and directories; links
    are not followed, so nothing outside ``root`` is read)."""
    root = Path(root)
    links: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            if full.is_symlink():
                links[full.relative_to(root).as_posix()] = os.readlink(full)
    return links


def add_to_manifest(manifest_path: str | Path, root: str | Path, files) -> Path:
    """Add (or replace) the lines of ``files`` (paths under ``root``) in a manifest describing ``root``;
    rewritten atomically, sorted by path."""
    manifest_path, root = Path(manifest_path), Path(root)
    entries = _parse_manifest(manifest_path)
    for file in files:
        entries[Path(file).relative_to(root).as_posix()] = sha256_file(file)
    lines = [_manifest_line(entries[name], name) for name in sorted(entries)]
    with atomic_output(manifest_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return manifest_path


def _check_extra_name(name: str, out_path: Path) -> str:
    pure = PurePosixPath(str(name).replace("\\", "/"))
    if not str(name) or pure.is_absolute() or ".." in pure.parts:
        raise LlsmflowError(
            f"extra file name {name!r} is invalid; expected a relative path without '..'", out_path
        )
    return pure.as_posix()


def write_checksum_manifest(
    root: str | Path,
    out_path: str | Path,
    extra_files: Mapping[str, str | Path] | None = None,
    known_digests: Mapping[str, str] | None = None,
    digest=None,
) -> Path:
    """Write a ``sha256sum``-compatible manifest of every file under ``root``, atomically.

    Parameters
    ----------
    root : str or Path
        Directory whose files (recursively, symlinks followed to their content) are listed by path relative to
        ``root``, with ``/`` separators. The manifest itself is skipped if it lies under ``root``.
    out_path : str or Path
        The manifest to write: ``<sha256 hex>  <relative path>`` per line, sorted by path.
    extra_files : dict of str to path, optional
        Files outside ``root`` (e.g. raw inputs) listed under the given relative names.
    known_digests : dict of str to str, optional
        Lines taken as they are, ``{name: sha256 hex}``: the raw inputs' lines of an archive being copied
        (:func:`llsmflow.archive.convert.convert_archive`), whose files may no longer be at hand.
    digest : callable, optional
        ``digest(path) -> sha256 hex`` (default: hash the file), e.g. a digest cache's, so that a file is
        hashed once per run.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    LlsmflowError
        If ``root`` is not a directory, an extra file is missing, or a name is invalid or collides.
    """
    root, out_path = Path(root), Path(out_path)
    if not root.is_dir():
        raise LlsmflowError("not found or not a directory; expected a directory to checksum", root)
    files = _files_under(root, {out_path.resolve()})
    for name, file_path in (extra_files or {}).items():
        key = _check_extra_name(name, out_path)
        if key in files:
            raise LlsmflowError(f"extra file name {key!r} collides with a file under {root}", out_path)
        files[key] = as_path(file_path)  # a raw file by URL is hashed through fsspec
    hash_file = digest or sha256_file
    digests = {name: hash_file(path) for name, path in files.items()}
    for name, known in (known_digests or {}).items():
        key = _check_extra_name(name, out_path)
        if key in digests or len(known) != 64 or any(ch not in "0123456789abcdef" for ch in known.lower()):
            raise LlsmflowError(f"known digest {key!r}: {known!r} collides or is not a sha256 hex", out_path)
        digests[key] = known.lower()
    lines = [_manifest_line(digests[name], name) for name in sorted(digests)]
    with atomic_output(out_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out_path


def verify_manifest(
    root: str | Path, manifest_path: str | Path, extra_files: Mapping[str, str | Path] | None = None
) -> dict[str, list[str]]:
    """Compare the files under ``root`` with a manifest written by :func:`write_checksum_manifest`.

    Parameters
    ----------
    root : str or Path
        The directory the manifest describes.
    manifest_path : str or Path
        The manifest (``sha256sum`` format). It is ignored as a file if it lies under ``root``.
    extra_files : dict of str to path, optional
        Where to find manifest entries that are not under ``root`` (the ``extra_files`` given when writing).
        Without it such entries are reported as missing.

    Returns
    -------
    dict
        ``{"missing": [...], "extra": [...], "changed": [...]}``: sorted relative paths listed but absent,
        present but not listed, and present with a different SHA-256. All empty means the tree is intact.
        Symbolic links under ``root`` are not followed: a listed path that is a link counts as missing (list
        them with :func:`symlinks_under`).

    Raises
    ------
    LlsmflowError
        If ``root`` is not a directory or the manifest is missing or malformed.
    """
    root, manifest_path = Path(root), Path(manifest_path)
    if not root.is_dir():
        raise LlsmflowError(
            "not found or not a directory; expected the directory the manifest describes", root
        )
    if not manifest_path.is_file():
        raise LlsmflowError("manifest not found; expected a checksum manifest file", manifest_path)
    expected = _parse_manifest(manifest_path)
    # symlinks under root are not followed (see symlinks_under): a listed one is missing as a file
    present = _files_under(root, {manifest_path.resolve()}, follow_symlinks=False)
    outside = {_check_extra_name(k, manifest_path): as_path(v) for k, v in (extra_files or {}).items()}
    missing, changed = [], []
    for name, digest in expected.items():
        file_path = outside.get(name, present.get(name))
        if file_path is None or not file_path.is_file():
            missing.append(name)
        elif sha256_file(file_path) != digest:
            changed.append(name)
    extra = [name for name in present if name not in expected]
    return {"missing": sorted(missing), "extra": sorted(extra), "changed": sorted(changed)}
