"""Each file hashed once per run: sha256 digests kept by path, size and modification time.

Three things of a run list the sha256 of every raw stack: the archive's manifest (written by the archive job),
the run record and the provenance manifest (both written by the provenance job). At 20,000 stacks of 300 MB a
pass over the raw data takes an hour or more, so the provenance job hashes a file only when no digest of it is
known: :class:`DigestCache` keeps ``{absolute path: (size, mtime_ns, sha256)}`` in
``work/<dataset>/.cache/sha256.json``, and is first seeded from the archive's manifest, whose digests were
computed during this run. A digest is reused only while the file's size and modification time are those it was
recorded with; a seeded digest only for a file not modified since the manifest was written. Reading a digest
back where the file changed since, with its size and mtime restored, is the one case this does not catch; raw
data are never modified by the workflow, and ``llsmflow reproduce`` hashes the raw files it re-reads anew.

A raw file by URL (``raw_dir`` by URL, docs/remote.md) is keyed by its URL, its size and version those the server
gives (``Content-Length``, ``Last-Modified``), and hashed by streaming it once through fsspec.

A cache of a few fields in JSON rather than a library: nothing standard keys digests by stat fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

FORMAT = "llsmflow-sha256-cache/1"


class DigestCache:
    """sha256 of files, computed once while a file stays as it was (size and mtime).

    Parameters
    ----------
    path : path, optional
        JSON file where the digests persist between jobs and runs (:meth:`save`); None keeps them in memory.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.entries: dict[str, list] = {}
        self.computed = 0
        self.reused = 0
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = {}  # a damaged cache is only a cache: start afresh
            if isinstance(data, dict) and data.get("format") == FORMAT:
                self.entries = {k: v for k, v in data.get("files", {}).items() if _valid(v)}

    @staticmethod
    def _key(path) -> str:
        from llsmflow.io import is_url

        return str(path) if is_url(path) else os.path.abspath(path)

    def digest(self, path: str | Path) -> str:
        """sha256 of ``path``: the known one while its size and mtime are unchanged, else computed (and kept)."""
        from llsmflow.io import as_path, sha256_file

        path = as_path(path)  # a raw file by URL: stat from the server (size, Last-Modified), hashed streaming
        key = self._key(path)
        stat = path.stat()
        known = self.entries.get(key)
        if known is not None and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            self.reused += 1
            return known[2]
        digest = sha256_file(path)
        self.computed += 1
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, digest]
        return digest

    def seed(self, digests: Mapping[str | Path, str], written_ns: int) -> int:
        """Take digests computed elsewhere (``{path: sha256}``, e.g. the archive's manifest written at
        ``written_ns``, epoch ns) for files not modified since; returns how many were taken."""
        from llsmflow.io import as_path

        taken = 0
        for path, digest in digests.items():
            try:
                stat = as_path(path).stat()
            except (OSError, ValueError):
                continue
            if stat.st_mtime_ns <= written_ns and len(str(digest)) == 64:
                self.entries[self._key(as_path(path))] = [stat.st_size, stat.st_mtime_ns, str(digest).lower()]
                taken += 1
        return taken

    def seed_from_manifest(
        self, manifest: str | Path, root: str | Path, names: Mapping[str, str | Path] | None = None
    ) -> int:
        """Seed from a ``sha256sum`` manifest of ``root`` (``names`` maps its other names, such as
        ``raw/<file>``, to the files they stand for); an absent or unreadable manifest seeds nothing."""
        manifest, root, names = Path(manifest), Path(root), dict(names or {})
        try:
            written = manifest.stat().st_mtime_ns
            lines = manifest.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return 0
        digests = {}
        for line in lines:
            if line.startswith("\\"):
                continue  # escaped names (backslash, newline): rare; those files are simply hashed
            digest, sep, name = line.partition("  ")
            if sep and name:
                digests[names.get(name, root / name)] = digest
        return self.seed(digests, written)

    def save(self) -> None:
        """Write the cache (atomically); nothing without a path."""
        if self.path is None:
            return
        from llsmflow.io import atomic_output

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.path) as tmp:
            Path(tmp).write_text(json.dumps({"format": FORMAT, "files": self.entries}), encoding="utf-8")


def _valid(entry) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], int)
        and isinstance(entry[1], int)
        and isinstance(entry[2], str)
        and len(entry[2]) == 64
    )
