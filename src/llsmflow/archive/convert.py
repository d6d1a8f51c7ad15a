"""A copy of an archive in another NGFF version (0.5 ⇄ 0.4), without re-running the workflow.

Fiji's N5/OME-Zarr readers, MoBIE and BigDataViewer read NGFF 0.4 (zarr v2) but not yet 0.5 (zarr v3), and
the workflow keeps no fused volumes: :func:`convert_archive` rewrites the image from the archive itself. The
pyramid is rebuilt from level 0 by :func:`llsmflow.archive.ome_zarr.write_ome_zarr` with the same number of
levels and the same block means, so each level equals the source's; the ``omero`` channels (names, colours,
contrast windows, wavelengths), axes, scale and translation, the ``llsmflow`` attributes (acquisition,
registration, processing, software) and the tables are carried over; the checksum manifest is recomputed for
the copy's files, and the raw inputs' lines are taken from the source manifest (the raw files need not be at
hand). The copy records where it came from under ``llsmflow.converted_from``. The source may be a URL
(``https://…``, ``s3://…``: :mod:`llsmflow.archive.remote`); the copy is always written locally.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from llsmflow.errors import LlsmflowError


def convert_archive(source: str | Path, output: str | Path, ngff_version: str = "0.4") -> Path:
    """Copy the archive ``source`` to ``output`` as NGFF ``ngff_version``, atomically.

    Parameters
    ----------
    source : str or Path
        An llsmflow archive (``.ome.zarr`` with ``tables/`` and ``checksums.sha256``), NGFF 0.4 or 0.5, a
        folder or a URL; read only.
    output : str or Path
        The copy to write; must not exist (nothing is overwritten).
    ngff_version : {"0.4", "0.5"}
        The copy's NGFF version ("0.4": zarr v2, for Fiji/MoBIE/BigDataViewer).

    Returns
    -------
    Path
        ``output``.
    """
    import zarr

    from llsmflow.archive.dataset import MANIFEST_NAME, RAW_PREFIX, TABLES_DIR
    from llsmflow.archive.manifest import parse_manifest_text, write_checksum_manifest
    from llsmflow.archive.ome_zarr import NGFF_VERSIONS, _image_name, _name_multiscales, write_ome_zarr
    from llsmflow.archive.read import read_ome_zarr
    from llsmflow.archive.remote import is_url, join, read_member, redact
    from llsmflow.io import atomic_output

    remote = is_url(source)
    source = str(source) if remote else Path(source)
    shown = redact(source) if remote else source

    def member_name(relative: str):  # a member as error messages name it (a URL without its credentials)
        return join(str(shown), relative) if remote else source / relative

    output = Path(output)
    ngff_version = str(ngff_version)
    if ngff_version not in NGFF_VERSIONS:
        raise LlsmflowError(f"NGFF version {ngff_version!r} is not supported; expected one of {NGFF_VERSIONS}")
    if output.exists() or output.is_symlink():
        raise LlsmflowError("already exists; expected a new path for the copy (nothing is overwritten)", output)
    if not remote and output.resolve().is_relative_to(source.resolve()):
        raise LlsmflowError(f"lies inside the archive {source}; expected a path outside it", output)
    image, meta = read_ome_zarr(source)
    root = zarr.open_group(str(source), mode="r")
    attrs = root.attrs.asdict()
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    channels = (ome.get("omero") or {}).get("channels")
    llsm = dict(meta["llsmflow"])
    if not llsm:
        raise LlsmflowError("has no llsmflow attributes; expected an archive written by llsmflow", shown)
    level0 = root[ome["multiscales"][0]["datasets"][0]["path"]]
    manifest_name = llsm.get("manifest", MANIFEST_NAME)
    manifest = read_member(source, manifest_name)
    raw_lines = {}
    if manifest is not None:
        entries = parse_manifest_text(manifest.decode("utf-8", errors="replace"), member_name(manifest_name))
        raw_lines = {k: v for k, v in entries.items() if k.startswith(RAW_PREFIX)}
    tables = {}
    for name, entry in (llsm.get("tables") or {}).items():
        table = read_member(source, entry["path"])
        if table is None or hashlib.sha256(table).hexdigest() != entry.get("sha256"):
            raise LlsmflowError(
                f"table {name!r} is missing or differs from its recorded sha256; expected an intact archive "
                f"(`llsmflow verify {shown}`)",
                member_name(entry["path"]),
            )
        tables[name] = table
    llsm["converted_from"] = {
        "path": str(shown) if remote else str(source.resolve()),
        "ngff_version": meta["ngff_version"],
        "manifest_sha256": hashlib.sha256(manifest).hexdigest() if manifest is not None else None,
    }
    with atomic_output(output) as tmp:
        write_ome_zarr(
            tmp,
            image,
            meta["voxel_size_um"],
            meta["time_interval_s"] or 1.0,
            meta["channel_names"],
            wavelengths_nm=[c.get("emission_wavelength_nm") for c in channels] if channels else None,
            ngff_version=ngff_version,
            chunks_zyx=tuple(level0.chunks[2:]),
            n_levels=meta["n_levels"],
            attributes=llsm,
            origin_um=meta["origin_um"],
        )
        group = zarr.open_group(str(tmp), mode="r+")
        if channels:  # the source's colours and windows as they were (set by a user, or by another tool)
            new = group.attrs.asdict()
            if "ome" in new:
                new["ome"]["omero"]["channels"] = channels
                group.attrs["ome"] = new["ome"]
            else:
                group.attrs["omero"] = {**new.get("omero", {}), "channels": channels}
        _name_multiscales(group, _image_name(output))
        for name, table in tables.items():
            target = tmp / llsm["tables"][name]["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(table)
        (tmp / TABLES_DIR).mkdir(exist_ok=True)
        write_checksum_manifest(tmp, tmp / llsm.get("manifest", MANIFEST_NAME), known_digests=raw_lines)
    return output
