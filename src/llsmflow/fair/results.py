"""What a finished run's results directory holds, as the exports describe it: one entry per deposited item.

A run writes ``RESULTS_DIR = <results_dir>/<dataset>/``::

    <dataset>.ome.zarr/        the fused volumes (T, C, Z, Y, X), µm and s, with checksums.sha256
    tracks/ch<N>.csv …         particle tracks, MSD and per-track summary tables (µm, s), their plots (PNG)
    qc/report.html, *.png      the QC report and its previews
    provenance/                run record, Workflow Run RO-Crate, config, workflow snapshot, checksums

The CSV tables are listed and their Parquet twins are not (same values; CSV is what an archive's users open).
Files whose name starts with ``.`` (Snakemake's ``.snakemake_timestamp``) are not results. Nothing here
writes into the results directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llsmflow.errors import LlsmflowError


@dataclass(frozen=True)
class ResultsFile:
    """One deposited item: a file, or an OME-Zarr directory (``files`` lists what is under it).

    ``path`` is relative to the results directory (``/``-separated); ``kind`` is one of ``image``,
    ``tracks table``, ``tracks plot``, ``QC report``, ``QC preview``, ``provenance``.
    """

    path: str
    kind: str
    description: str
    format: str
    files: tuple[str, ...] = field(default=())

    @property
    def is_dir(self) -> bool:
        return bool(self.files)


TABLES = {
    "": "particle tracks: one row per particle and timepoint (t_s in s; z_um, y_um, x_um in µm)",
    "_msd": "ensemble mean squared displacement per lag (lag_s in s, msd_um2 in µm²)",
    "_summary": "one row per track: duration (s), mean speed (µm/s), net displacement (µm), diffusion "
    "coefficient (µm²/s)",
}


def _visible_files(root: Path) -> list[str]:
    """Files under ``root`` (relative, sorted), skipping names that start with ``.``."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        found.append(rel.as_posix())
    return found


def zarr_attributes(archive: Path) -> dict:
    """The root group's attributes of an OME-Zarr (v3 ``zarr.json`` or v2 ``.zattrs``)."""
    if (archive / "zarr.json").is_file():
        return json.loads((archive / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
    if (archive / ".zattrs").is_file():
        return json.loads((archive / ".zattrs").read_text(encoding="utf-8"))
    raise LlsmflowError("no zarr.json or .zattrs; expected an OME-Zarr archive", archive)


def _channel(name: str) -> str:
    match = re.match(r"ch(\d+)", name)
    return match.group(1) if match else ""


def results_inventory(results_dir: str | Path) -> dict:
    """The items of a finished run's results directory.

    Returns
    -------
    dict
        ``results_dir`` (Path), ``dataset`` (name), ``items`` (list of :class:`ResultsFile`), ``archive``
        (the first OME-Zarr's path), ``attributes`` (its ``llsmflow`` attributes: acquisition, processing),
        ``record`` (the run record, a dict).

    Raises
    ------
    LlsmflowError
        When the directory is not the results of a finished run (no OME-Zarr archive, no run record).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise LlsmflowError(
            "is not a directory; expected a run's results directory (results/<dataset>)", root
        )
    archives = sorted(p for p in root.glob("*.ome.zarr") if p.is_dir())
    if not archives:
        raise LlsmflowError("no *.ome.zarr archive; expected the results directory of a finished run", root)
    record_path = root / "provenance" / "run-record.json"
    if not record_path.is_file():
        raise LlsmflowError(
            "no provenance/run-record.json; expected the results of a finished run (the record is written last)",
            root,
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    items: list[ResultsFile] = []
    attributes = {}
    for archive in archives:
        attrs = zarr_attributes(archive)
        attributes = attributes or attrs.get("llsmflow", {})
        acq = attrs.get("llsmflow", {}).get("acquisition", {})
        version = (attrs.get("ome") or {}).get("version") or (attrs.get("multiscales") or [{}])[0].get(
            "version"
        )
        channels = ", ".join(c.get("name", str(c.get("index"))) for c in acq.get("channels", []))
        items.append(
            ResultsFile(
                path=archive.name,
                kind="image",
                description=f"deskewed, deconvolved, stitched volumes (T, C, Z, Y, X; µm, s); channels {channels}",
                format=f"OME-Zarr {version or ''}".strip(),
                files=tuple(_visible_files(archive)),
            )
        )
    for path in sorted((root / "tracks").glob("*")) if (root / "tracks").is_dir() else []:
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = path.stem
        channel = _channel(stem)
        if path.suffix == ".csv":
            suffix = stem[len(f"ch{channel}") :] if channel else ""
            what = TABLES.get(suffix, "tracks table")
            items.append(
                ResultsFile(f"tracks/{path.name}", "tracks table", f"channel {channel}: {what}", "CSV")
            )
        elif path.suffix == ".png":
            items.append(
                ResultsFile(f"tracks/{path.name}", "tracks plot", f"channel {channel}: {stem}", "PNG")
            )
    qc = root / "qc"
    for path in sorted(qc.glob("*")) if qc.is_dir() else []:
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".html":
            items.append(ResultsFile(f"qc/{path.name}", "QC report", "quality-control report", "HTML"))
        elif path.suffix == ".png":
            items.append(ResultsFile(f"qc/{path.name}", "QC preview", f"preview {path.stem}", "PNG"))
    for rel in _visible_files(root / "provenance"):
        items.append(
            ResultsFile(
                f"provenance/{rel}",
                "provenance",
                "run provenance (run record, Workflow Run RO-Crate, config, workflow snapshot)",
                Path(rel).suffix.lstrip(".").upper() or "text",
            )
        )
    return {
        "results_dir": root,
        "dataset": archives[0].name.removesuffix(".ome.zarr"),
        "items": items,
        "archive": archives[0],
        "attributes": attributes,
        "record": record,
    }


def recorded_checksums(results_dir: Path) -> dict[str, str]:
    """sha256 the run recorded for files of the results directory (relative path -> hex): each archive's
    ``checksums.sha256`` (its own files) and ``provenance/checksums.sha256``; raw-input lines are skipped."""
    from llsmflow.archive.manifest import _parse_manifest

    recorded: dict[str, str] = {}
    for archive in sorted(Path(results_dir).glob("*.ome.zarr")):
        manifest = archive / "checksums.sha256"
        if manifest.is_file():
            for name, digest in _parse_manifest(manifest).items():
                if not name.startswith("raw/"):
                    recorded[f"{archive.name}/{name}"] = digest
    manifest = Path(results_dir) / "provenance" / "checksums.sha256"
    if manifest.is_file():
        for name, digest in _parse_manifest(manifest).items():
            if not name.startswith("raw/"):
                recorded[name] = digest
    return recorded
