"""Each file hashed once per run (llsmflow.provenance.digests): digests reused while a file is unchanged,
taken from the archive's manifest only for files not modified since it was written."""

import hashlib
import os
from pathlib import Path

from llsmflow.archive.manifest import write_checksum_manifest
from llsmflow.provenance import DigestCache, file_entries


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_file_is_hashed_once_while_unchanged(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    stacks = []
    for i in range(3):
        stacks.append(raw / f"stack{i}.tif")
        stacks[-1].write_bytes(os.urandom(1000 + i))
    cache = DigestCache(tmp_path / "work" / ".cache" / "sha256.json")
    entries = file_entries(stacks, tmp_path, cache)
    assert [e["sha256"] for e in entries] == [_sha(s) for s in stacks]
    assert cache.computed == 3
    # the manifest of the same run reuses them, and so does the next job (the cache persists)
    write_checksum_manifest(raw, tmp_path / "m.sha256", digest=cache.digest)
    assert cache.computed == 3 and cache.reused == 3
    cache.save()
    again = DigestCache(tmp_path / "work" / ".cache" / "sha256.json")
    assert again.digest(stacks[0]) == _sha(stacks[0]) and again.computed == 0
    # a changed file (size and mtime) is hashed anew
    stacks[1].write_bytes(b"changed")
    assert again.digest(stacks[1]) == _sha(stacks[1]) and again.computed == 1


def test_digests_from_a_manifest_are_taken_only_for_files_unchanged_since(tmp_path):
    root = tmp_path / "archive.zarr"
    root.mkdir()
    (root / "a").write_bytes(b"alpha")
    (root / "b").write_bytes(b"beta")
    raw = tmp_path / "stack.tif"
    raw.write_bytes(b"raw stack")
    manifest = root / "checksums.sha256"
    write_checksum_manifest(root, manifest, extra_files={"raw/stack.tif": raw})
    # b is modified after the manifest was written (a later mtime): its recorded digest is not trusted
    later = manifest.stat().st_mtime_ns + 10**9
    (root / "b").write_bytes(b"BETA")
    os.utime(root / "b", ns=(later, later))
    cache = DigestCache()
    assert cache.seed_from_manifest(manifest, root, {"raw/stack.tif": raw}) == 2
    assert cache.digest(raw) == _sha(raw) and cache.digest(root / "a") == _sha(root / "a")
    assert cache.computed == 0
    assert cache.digest(root / "b") == _sha(root / "b") and cache.computed == 1
    # an absent manifest seeds nothing
    assert DigestCache().seed_from_manifest(tmp_path / "none.sha256", root) == 0
