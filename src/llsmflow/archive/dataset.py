"""The dataset archive a facility keeps: the OME-Zarr image, its tables and a checksum manifest, in one
directory; and its verification against that manifest (raw inputs included).

Verification hashes files and reads the root attributes, nothing more, so the writer (:mod:`.ome_zarr`:
ome-zarr-py, its pydantic models, scikit-image, dask, about 0.6 s to import) is imported inside
:func:`write_dataset_archive` only, and Zarr (0.2 s) where an archive is written or a remote one read: a local
archive's root attributes are one JSON document (``zarr.json``'s ``attributes``, or a Zarr v2 ``.zattrs``),
read here with :mod:`json` as Zarr reads them (``llsmflow verify`` 1.00 s → 0.16 s; bench/bench_cli_startup.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from llsmflow.archive.manifest import (
    _parse_manifest,
    parse_manifest_text,
    symlinks_under,
    verify_manifest,
    write_checksum_manifest,
)
from llsmflow.archive.remote import is_url
from llsmflow.errors import LlsmflowError
from llsmflow.io import as_path, atomic_output, redact, sha256_file

MANIFEST_NAME = "checksums.sha256"
TABLES_DIR = "tables"
RAW_PREFIX = "raw/"
WORKFLOW_MARKERS = frozenset({".snakemake_timestamp"})
"""Files a workflow manager adds to a finished directory output; not part of the archive's content."""


def write_dataset_archive(
    out_path: str | Path,
    image_tczyx,
    voxel_size_um: Sequence[float],
    time_interval_s: float,
    channel_names: Sequence[str],
    *,
    tables: Mapping[str, str | Path] | None = None,
    raw_files: Sequence[str | Path] = (),
    attributes: Mapping | None = None,
    **image_options,
) -> Path:
    """Write the archive a facility keeps: OME-Zarr image + Parquet tables + sha256 manifest, atomically.

    Layout of ``out_path`` (an OME-Zarr directory that any NGFF reader opens as an image)::

        zarr.json / .zattrs …       the multiscale TCZYX image (:func:`write_ome_zarr`)
        tables/<name>.parquet       tracks and statistics, referenced from the root attributes
        checksums.sha256            sha256 of every file above and of the raw inputs (``raw/<file name>``)

    NGFF has no tables standard, so tables are Parquet files beside the image group and the root attributes
    (``llsmflow.tables``) list each one's path, size and sha256; ``llsmflow.raw_inputs`` records where the
    raw files were, so that :func:`verify_archive` can check them too.

    Parameters
    ----------
    out_path:
        Destination directory, replaced only once complete (an interrupted write leaves nothing there).
    image_tczyx, voxel_size_um, time_interval_s, channel_names:
        As for :func:`write_ome_zarr`; further keyword arguments (``wavelengths_nm``, ``ngff_version``,
        ``chunks_zyx``, ``n_levels``, ``origin_um``) are passed on to it.
    tables:
        ``{name: parquet file}``; copied to ``tables/<name>.parquet``.
    raw_files:
        Raw input files whose checksums go into the manifest (file names must be unique).
    attributes:
        Acquisition metadata and processing history (JSON), stored under ``llsmflow``.
    """
    import shutil

    import zarr

    from llsmflow.archive.ome_zarr import _image_name, _name_multiscales, write_ome_zarr

    tables = dict(tables or {})
    raw_files = [as_path(p) for p in raw_files]  # a URL too (raw_dir by URL: hashed through fsspec)
    for name, table in tables.items():
        if not Path(table).is_file():
            raise LlsmflowError(f"table {name!r} not found; expected a Parquet file", table)
    names = [p.name for p in raw_files]
    if len(set(names)) != len(names):
        raise LlsmflowError("raw input file names are not unique; expected one file per name")
    attrs = dict(attributes or {})
    attrs["tables"] = {
        name: {
            "path": f"{TABLES_DIR}/{name}.parquet",
            "format": "parquet",
            "bytes": Path(table).stat().st_size,
            "sha256": sha256_file(table),
        }
        for name, table in sorted(tables.items())
    }
    attrs["raw_inputs"] = {
        "directories": sorted({redact(p.resolve().parent) for p in raw_files}),
        "files": sorted(names),
        "manifest_prefix": RAW_PREFIX,
    }
    attrs["manifest"] = MANIFEST_NAME
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        write_ome_zarr(
            tmp, image_tczyx, voxel_size_um, time_interval_s, channel_names, attributes=attrs, **image_options
        )
        _name_multiscales(zarr.open_group(str(tmp), mode="r+"), _image_name(out_path))
        (tmp / TABLES_DIR).mkdir()
        for name, table in tables.items():
            shutil.copyfile(table, tmp / TABLES_DIR / f"{name}.parquet")
        write_checksum_manifest(
            tmp, tmp / MANIFEST_NAME, extra_files={f"{RAW_PREFIX}{p.name}": p for p in raw_files}
        )
    return out_path


def _root_attributes(archive: Path) -> dict:
    """The archive's ``llsmflow`` attributes; empty when the root metadata is unreadable or a symlink (which
    is not followed: :func:`verify_archive` reports it)."""
    if any((archive / name).is_symlink() for name in ("zarr.json", ".zattrs", ".zgroup")):
        return {}
    try:
        return dict(dict(_group_attributes(archive)).get("llsmflow", {}))
    except Exception:  # a damaged root metadata file is reported as changed by the manifest check
        return {}


def _group_attributes(group: Path) -> dict:
    """A local Zarr group's attributes as ``zarr.open_group(group, mode="r").attrs`` reads them (Zarr 3:
    ``zarr.json`` if there, else Zarr v2's ``.zgroup`` and optional ``.zattrs``; no group: an error), without
    importing Zarr (0.2 s of ``llsmflow verify``)."""
    if (group / "zarr.json").is_file():
        metadata = json.loads((group / "zarr.json").read_bytes())
        if metadata.get("zarr_format") != 3 or metadata.get("node_type") != "group":
            raise ValueError(f"{group / 'zarr.json'} describes no Zarr v3 group")
        return metadata.get("attributes", {})
    if json.loads((group / ".zgroup").read_bytes()).get("zarr_format") != 2:
        raise ValueError(f"{group / '.zgroup'} describes no Zarr v2 group")
    zattrs = group / ".zattrs"
    return json.loads(zattrs.read_bytes()) if zattrs.is_file() else {}


def _table_mismatches(
    archive: Path, attrs: dict, expected: dict[str, str], digests: dict[str, str | None] | None = None
) -> list[str]:
    """Tables whose sha256 recorded in the root attributes disagrees with the manifest or the file (its
    digest taken from ``digests`` when given: a remote archive's, already fetched)."""
    found = []
    tables = attrs.get("tables")
    for name, entry in sorted((tables if isinstance(tables, dict) else {}).items()):
        path = entry.get("path") if isinstance(entry, dict) else None
        recorded = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not isinstance(recorded, str):
            found.append(f"{name} (attributes record no path and sha256 for this table)")
            continue
        file = archive / path
        listed = expected.get(path)
        if listed is not None and listed != recorded:
            found.append(f"{path} (attributes record sha256 {recorded[:16]}…, the manifest {listed[:16]}…)")
        elif digests is not None:
            if digests.get(path) not in (None, recorded):
                found.append(f"{path} (attributes record sha256 {recorded[:16]}…, the file differs)")
        elif file.is_file() and not file.is_symlink() and sha256_file(file) != recorded:
            found.append(f"{path} (attributes record sha256 {recorded[:16]}…, the file differs)")
    return found


def verify_archive(archive: str | Path, raw_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Check an archive written by :func:`write_dataset_archive` against its manifest.

    Every file of the archive is compared with ``checksums.sha256``; raw inputs (``raw/<name>`` entries) are
    looked for in ``raw_dir`` or, by default, where they were when the archive was written. Snakemake's
    ``.snakemake_timestamp`` marker (added after the archive was sealed) is not reported as extra. Symbolic
    links inside the archive are reported, never followed (an archive is self-contained: a link could make it
    read files elsewhere), and the tables' sha256 recorded in the root attributes (``llsmflow.tables``) are
    cross-checked against the manifest and the files.

    Returns
    -------
    dict
        ``{"missing": [...], "extra": [...], "changed": [...], "symlinks": [...], "tables": [...]}``: paths
        relative to the archive (raw inputs as ``raw/<name>``); ``symlinks`` as ``path -> target``; ``tables``
        as ``path (what disagrees)``. All empty means the archive and its raw inputs are intact.

        ``archive`` may be a URL (``https://…``, ``s3://…``: :mod:`llsmflow.archive.remote`): every file the
        manifest lists is fetched and hashed; a remote report adds ``"unchecked"``, what could not be checked
        (extra files where the store cannot list, as over HTTP; raw inputs not found in ``raw_dir`` or where
        they were when archived).
    """
    if is_url(archive):
        return _verify_remote_archive(archive, raw_dir)
    archive = Path(archive)
    manifest = archive / MANIFEST_NAME
    if not archive.is_dir():
        raise LlsmflowError("not found or not a directory; expected an llsmflow archive (.ome.zarr)", archive)
    if manifest.is_symlink() or not manifest.is_file():
        raise LlsmflowError(
            f"has no {MANIFEST_NAME} (or it is a symlink); expected an archive written by llsmflow "
            "(incomplete or not ours)",
            archive,
        )
    expected = _parse_manifest(manifest)
    raw_names = [name[len(RAW_PREFIX) :] for name in expected if name.startswith(RAW_PREFIX)]
    attrs = _root_attributes(archive)
    directories = [as_path(raw_dir)] if raw_dir is not None else []  # a URL too (s3://…/raw)
    if raw_dir is None:
        directories = [Path(d) for d in attrs.get("raw_inputs", {}).get("directories", [])]
    extra_files = {}
    for name in raw_names:
        found = next((d / name for d in directories if (d / name).is_file()), None)
        extra_files[f"{RAW_PREFIX}{name}"] = found if found is not None else Path("/nonexistent") / name
    report = verify_manifest(archive, manifest, extra_files)
    links = symlinks_under(archive)
    under_link = tuple(f"{name}/" for name in links)  # a linked directory hides its files

    def linked(name: str) -> bool:
        return name in links or name.startswith(under_link)

    report["missing"] = [name for name in report["missing"] if not linked(name)]
    report["extra"] = [
        name
        for name in report["extra"]
        if PurePosixPath(name).name not in WORKFLOW_MARKERS and not linked(name)
    ]
    report["symlinks"] = [f"{name} -> {target}" for name, target in sorted(links.items())]
    report["tables"] = _table_mismatches(archive, attrs, expected)
    return report


def _verify_remote_archive(url: str, raw_dir: str | Path | None) -> dict[str, list[str]]:
    """:func:`verify_archive` for an archive at a URL (fetched file by file, as the manifest lists them)."""
    import zarr

    from llsmflow.archive.remote import verify_remote

    expected, digests, present = verify_remote(url, MANIFEST_NAME, parse_manifest_text, RAW_PREFIX)
    try:
        attrs = dict(dict(zarr.open_group(url, mode="r").attrs).get("llsmflow", {}))
    except Exception:  # a damaged root metadata file is reported as changed by the manifest check
        attrs = {}
    report: dict[str, list[str]] = {
        "missing": [],
        "extra": [],
        "changed": [],
        "symlinks": [],
        "unchecked": [],
    }
    for name, digest in digests.items():
        if digest is None:
            report["missing"].append(name)
        elif digest != expected[name]:
            report["changed"].append(name)
    if present is None:
        report["unchecked"].append(
            "extra files (the server cannot list a directory: only the files the manifest lists were checked)"
        )
    else:
        report["extra"] = [
            name
            for name in present
            if name not in expected
            and name != MANIFEST_NAME
            and PurePosixPath(name).name not in WORKFLOW_MARKERS
        ]
    directories = [as_path(raw_dir)] if raw_dir is not None else []  # a URL too (s3://…/raw)
    if raw_dir is None:
        directories = [Path(d) for d in attrs.get("raw_inputs", {}).get("directories", []) if not is_url(d)]
    for name in sorted(n for n in expected if n.startswith(RAW_PREFIX)):
        found = next(
            (d / name[len(RAW_PREFIX) :] for d in directories if (d / name[len(RAW_PREFIX) :]).is_file()),
            None,
        )
        if found is not None:
            if sha256_file(found) != expected[name]:
                report["changed"].append(name)
        elif raw_dir is not None:
            report["missing"].append(name)
        else:
            report["unchecked"].append(f"{name} (raw input not at hand here; give --raw-dir)")
    report["tables"] = _table_mismatches(Path("."), attrs, expected, digests)
    for key in ("missing", "changed", "extra"):
        report[key].sort()
    return report
