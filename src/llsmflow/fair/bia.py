"""``llsmflow export bia``: a BioImage Archive submission folder built from a run's results and its REMBI.

The folder is a BIA submission RO-Crate, the form that the BioImage Archive's own validator
(``bia-ro-crate-validator``, command ``bia-ro-crate validate DIR``) reads::

    DIR/
      ro-crate-metadata.json   REMBI as BIA entities: Study (the root), Contributor, Affiliation, Dataset,
                               BioSample + Taxon, SpecimenImagingPreparationProtocol, Specimen,
                               ImageAcquisitionProtocol, ImageAnalysisMethod (+ ImageCorrelationMethod),
                               Protocol (llsmflow), and the FileList with its csvw table schema
      filelist.tsv             one row per deposited item: "Files" (the path; the BioStudies file-list
                               header), the dataset, type, description, format, size in bytes, sha256, and
                               the REMBI entities the item is associated with
      <dataset>.ome.zarr/ tracks/ qc/ provenance/    the deposited files (linked or copied)
      raw/                     with ``include_raw``: the raw inputs, each checked against the run's record
      files.sha256             sha256sum manifest of every deposited file (`sha256sum -c files.sha256`)
      rembi.json               the validated REMBI (rembi-mifa's serialisation, REMBI 1.5)

An OME-Zarr is one row of the file list (the BIA takes a ``.zarr`` directory as one entry); its ``sha256``
is that of its lines of ``files.sha256``: ``grep '  NAME.ome.zarr/' files.sha256 | sha256sum``.

The BIA's validator needs Python ≥ 3.13 and is not a dependency: the export writes what it reads, and the
tests run it when it is installed (docs/fair.md). The JSON-LD context below lists the BIA context's terms
that this crate uses, with the BIA's mappings (the validator rejects a remapped term).

The results are never modified: files are hard-linked (default; same bytes, no copy; a file system that
cannot, e.g. another device, falls back to a copy), reflinked (copy-on-write clone, Linux FICLONE) or copied,
and every file's sha256 is compared with the checksums the run recorded before the folder is renamed into
place; an interrupted export leaves only a ``.DIR.*.partial`` folder.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

from llsmflow.errors import LlsmflowError

LINK_MODES = ("hardlink", "reflink", "copy")

LICENSES = {
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
}

BIA = "http://bia/"
SCHEMA = "http://schema.org/"

#: Terms of the BIA RO-Crate context (bia-ro-crate-validator's bia_ro_crate_context.jsonld) used here.
CONTEXT_TERMS = {
    "bia": BIA,
    "csvw": "http://www.w3.org/ns/csvw#",
    "schema": SCHEMA,
    "dc": "http://purl.org/dc/terms/",
    "@type": {"@container": "@set"},
    "name": {"@id": "schema:name"},
    "description": {"@id": "schema:description"},
    "accessionId": {"@id": "bia:accessionId"},
    "author": {"@id": "schema:author", "@container": "@set"},
    "hasPart": {"@id": "schema:hasPart", "@container": "@set"},
    "keywords": {"@id": "schema:keywords", "@container": "@set"},
    "license": {"@id": "schema:license"},
    "datePublished": {"@id": "schema:datePublished"},
    "fundingStatement": {"@id": "bia:fundingStatement"},
    "memberOf": {"@id": "schema:memberOf", "@container": "@set"},
    "role": {"@id": "bia:role", "@container": "@set"},
    "email": {"@id": "schema:email"},
    "address": {"@id": "schema:address"},
    "associatedBiologicalEntity": {"@id": "bia:associatedBiologicalEntity", "@container": "@set"},
    "associatedSpecimenImagingPreparationProtocol": {
        "@id": "bia:associatedImagingPreparationProtocol",
        "@container": "@set",
    },
    "associatedImageAcquisitionProtocol": {
        "@id": "bia:associatedImageAcquisitionProtocol",
        "@container": "@set",
    },
    "associatedImageAnalysisMethod": {"@id": "bia:associatedAnalysisMethod", "@container": "@set"},
    "associatedImageCorrelationMethod": {"@id": "bia:associatedCorrelationMethod", "@container": "@set"},
    "associatedProtocol": {"@id": "bia:associatedProtocol", "@container": "@set"},
    "associatedSpecimen": {"@id": "bia:associatedSubject"},
    "organismClassification": {"@id": "schema:taxonomicRange", "@container": "@set"},
    "scientificName": {"@id": "http://rs.tdwg.org/dwc/terms/scientificName"},
    "commonName": {"@id": "http://rs.tdwg.org/dwc/terms/vernacularName"},
    "experimentalVariableDescription": {"@id": "bia:experimentalVariableDescription", "@container": "@set"},
    "extrinsicVariableDescription": {"@id": "bia:extrinsicVariableDescription", "@container": "@set"},
    "intrinsicVariableDescription": {"@id": "bia:intrinsicVariableDescription", "@container": "@set"},
    "growthProtocol": {"@id": "bia:growthProtocol"},
    "biologicalEntity": {"@id": "bia:sampleOf", "@container": "@set"},
    "imagingPreparationProtocol": {"@id": "bia:imagingPreparationProtocol", "@container": "@set"},
    "imagingInstrumentDescription": {"@id": "bia:imagingInstrumentDescription"},
    "imagingMethodName": {"@id": "bia:imagingMethodName", "@container": "@set"},
    "fbbiId": {"@id": "bia:fbbiId", "@container": "@set"},
    "fiducialsUsed": {"@id": "bia:fiducialsUsed"},
    "transformationMatrix": {"@id": "bia:transformationMatrix"},
    "tableSchema": {"@id": "csvw:tableSchema"},
    "column": {"@id": "csvw:column", "@container": "@set"},
    "columnName": {"@id": "csvw:name"},
    "propertyUrl": {"@id": "csvw:propertyUrl"},
}

#: File-list columns: (header, propertyUrl or None). "Files" first, as BioStudies file lists require.
COLUMNS = (
    ("Files", BIA + "filePath"),
    ("dataset", SCHEMA + "isPartOf"),
    ("type", None),
    ("description", None),
    ("format", None),
    ("size_bytes", None),
    ("sha256", None),
    ("biosample", BIA + "associatedBiologicalEntity"),
    ("specimen", BIA + "associatedSubject"),
    ("image_acquisition", BIA + "associatedImageAcquisitionProtocol"),
    ("protocol", BIA + "associatedProtocol"),
)

FILE_LIST = "filelist.tsv"


def _ref(entity_id: str) -> dict:
    return {"@id": entity_id}


def bia_crate(study, inventory: dict) -> dict:
    """The ``ro-crate-metadata.json`` of the submission (a dict): REMBI ``study`` (rembi-mifa model) as BIA
    entities, the dataset of ``inventory`` (:func:`llsmflow.fair.results.results_inventory`), the file list."""
    from llsmflow import __version__

    s = study.study
    component = study.study_components[0] if study.study_components else None
    graph: list[dict] = []
    authors = []
    for i, author in enumerate(s.authors):
        author_id = author.orcid or f"#author-{i}"
        affiliation_id = f"#affiliation-{i}"
        affiliation = {"@id": affiliation_id, "@type": "bia:Affiliation", "name": author.affiliation.name}
        if getattr(author.affiliation, "address", None):
            affiliation["address"] = author.affiliation.address
        if getattr(author.affiliation, "url", None):
            affiliation["website"] = str(author.affiliation.url)
        contributor = {
            "@id": author_id,
            "@type": "bia:Contributor",
            "name": f"{author.first_name} {author.last_name}",
            "email": str(author.email),
            "memberOf": [_ref(affiliation_id)],
        }
        if author.role:
            contributor["role"] = [author.role]
        graph += [contributor, affiliation]
        authors.append(_ref(author_id))
    license_url = LICENSES.get(s.license or "CC0-1.0", s.license or LICENSES["CC0-1.0"])
    keywords = [k.strip() for k in (s.keywords or "").split(",") if k.strip()]

    dataset_id = "#dataset-0"
    biosample_ids, prep_ids, acquisition_ids = [], [], []
    for i, sample in enumerate(study.sample):
        taxon_id = sample.organism.ncbi_taxon
        taxon = {"@id": taxon_id, "@type": "bia:Taxon", "scientificName": sample.organism.scientific_name}
        if sample.organism.common_name:
            taxon["commonName"] = sample.organism.common_name
        if taxon_id not in {e["@id"] for e in graph}:
            graph.append(taxon)
        biosample = {
            "@id": f"#biosample-{i}",
            "@type": "bia:BioSample",
            "name": sample.biological_entity,
            "description": sample.description or sample.biological_entity,
            "organismClassification": [_ref(taxon_id)],
        }
        for key, field in (
            ("intrinsicVariableDescription", "intrinsic_variables"),
            ("extrinsicVariableDescription", "extrinsic_variables"),
            ("experimentalVariableDescription", "experimental_variables"),
        ):
            if getattr(sample, field):
                biosample[key] = [getattr(sample, field)]
        graph.append(biosample)
        biosample_ids.append(biosample["@id"])
    for i, specimen in enumerate(study.specimen):
        prep = {
            "@id": f"#specimen-preparation-{i}",
            "@type": "bia:SpecimenImagingPreparationProtocol",
            "name": f"specimen preparation {i}",
            "description": specimen.sample_preparation,
        }
        graph.append(prep)
        prep_ids.append(prep["@id"])
        if specimen.growth_protocol and i < len(biosample_ids):
            growth_id = f"#growth-protocol-{i}"
            graph.append(
                {
                    "@id": growth_id,
                    "@type": "bia:Protocol",
                    "name": f"growth protocol {i}",
                    "description": specimen.growth_protocol,
                }
            )
            graph[[e["@id"] for e in graph].index(biosample_ids[i])]["growthProtocol"] = _ref(growth_id)
    specimen_id = "#specimen-0"
    graph.append(
        {
            "@id": specimen_id,
            "@type": "bia:Specimen",
            "biologicalEntity": [_ref(b) for b in biosample_ids],
            "imagingPreparationProtocol": [_ref(p) for p in prep_ids],
        }
    )
    for i, acquisition in enumerate(study.image_acquisition):
        entity = {
            "@id": f"#image-acquisition-{i}",
            "@type": "bia:ImageAcquisitionProtocol",
            "name": f"image acquisition {i}",
            "description": acquisition.image_acquisition_parameters,
            "imagingInstrumentDescription": acquisition.imaging_instrument,
            "imagingMethodName": [acquisition.imaging_method.value],
            "fbbiId": [acquisition.imaging_method.ontology_id.rsplit("/", 1)[-1].replace("_", ":")],
        }
        graph.append(entity)
        acquisition_ids.append(entity["@id"])
    analysis_ids, correlation_ids = [], []
    if study.image_analysis:
        analysis_ids.append("#image-analysis-0")
        graph.append(
            {
                "@id": analysis_ids[0],
                "@type": "bia:ImageAnalysisMethod",
                "name": "image analysis",
                "description": study.image_analysis.analysis_overview,
            }
        )
    if study.image_correlation:
        c = study.image_correlation
        correlation_ids.append("#image-correlation-0")
        graph.append(
            {
                "@id": correlation_ids[0],
                "@type": "bia:ImageCorrelationMethod",
                "name": "image correlation",
                "description": c.spatial_and_temporal_alignment,
                "fiducialsUsed": c.fiducials_used,
                "transformationMatrix": c.transformations_used,
            }
        )
    protocol_id = "#protocol-llsmflow"
    graph.append(
        {
            "@id": protocol_id,
            "@type": "bia:Protocol",
            "name": f"llsmflow {__version__}",
            "description": "deskew, deconvolution, stitching, OME-Zarr archive and particle tracking by llsmflow; "
            "the run's configuration, software versions and checksums are in provenance/ro-crate-metadata.json",
        }
    )
    dataset = {
        "@id": dataset_id,
        "@type": "bia:Dataset",
        "name": component.name if component else inventory["dataset"],
        "description": component.description if component else f"llsmflow results of {inventory['dataset']}",
        "associatedBiologicalEntity": [_ref(b) for b in biosample_ids],
        "associatedSpecimenImagingPreparationProtocol": [_ref(p) for p in prep_ids],
        "associatedSpecimen": _ref(specimen_id),
        "associatedImageAcquisitionProtocol": [_ref(a) for a in acquisition_ids],
        "associatedImageAnalysisMethod": [_ref(a) for a in analysis_ids],
        "associatedImageCorrelationMethod": [_ref(c) for c in correlation_ids],
        "associatedProtocol": [_ref(protocol_id)],
    }
    graph.append({k: v for k, v in dataset.items() if v != []})
    column_ids = [f"#column-{name}" for name, _ in COLUMNS]
    graph.append(
        {
            "@id": FILE_LIST,
            "@type": ["File", "bia:FileList"],
            "name": "file list",
            "tableSchema": _ref("#filelist-schema"),
        }
    )
    graph.append({"@id": "#filelist-schema", "@type": "csvw:Schema", "column": [_ref(c) for c in column_ids]})
    for column_id, (name, prop) in zip(column_ids, COLUMNS, strict=True):
        column = {"@id": column_id, "@type": "csvw:Column", "columnName": name}
        if prop:
            column["propertyUrl"] = prop
        graph.append(column)
    root = {
        "@id": "./",
        "@type": ["Dataset", "bia:Study"],
        "name": s.title,
        "description": s.description,
        "author": authors,
        "license": license_url,
        "datePublished": s.private_until_date.isoformat(),
        "keywords": keywords,
        "hasPart": [_ref(dataset_id), _ref(FILE_LIST)],
        "accessionId": "",
    }
    if s.funding:
        root["fundingStatement"] = s.funding.funding_statement
    metadata = {
        "@id": "ro-crate-metadata.json",
        "@type": "CreativeWork",
        "conformsTo": _ref("https://w3id.org/ro/crate/1.1"),
        "about": _ref("./"),
    }
    return {
        "@context": ["https://w3id.org/ro/crate/1.1/context", CONTEXT_TERMS],
        "@graph": [metadata, root, *graph],
    }


def _place(source: Path, target: Path, link: str) -> str:
    """Put ``source`` at ``target`` by ``link``; returns how it was placed (a hard link may fall back to a
    copy across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link == "hardlink":
        try:
            os.link(source, target)
            return "hardlink"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    elif link == "reflink":
        import fcntl

        ficlone = 0x40049409  # Linux FICLONE ioctl: a copy-on-write clone (Btrfs, XFS, …)
        with open(source, "rb") as src, open(target, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), ficlone, src.fileno())
            except OSError as exc:
                raise LlsmflowError(
                    f"cannot reflink ({os.strerror(exc.errno)}); expected a file system with copy-on-write "
                    "clones (Btrfs, XFS), or --link hardlink/copy",
                    target.parent,
                ) from None
        shutil.copystat(source, target)
        return "reflink"
    shutil.copy2(source, target)
    return "copy"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def raw_items(inventory: dict) -> tuple[Path, list, dict[str, str]]:
    """The run's raw inputs as deposit items ``raw/<name>``: (raw folder, items, {``raw/<name>``: recorded
    sha256}), from the ``raw/`` lines of the archive's ``checksums.sha256`` (the run's record of its inputs)."""
    from llsmflow.archive.manifest import _parse_manifest
    from llsmflow.fair.results import ResultsFile

    raw_dir = Path((inventory["record"].get("config") or {}).get("raw_dir") or "")
    manifest = inventory["archive"] / "checksums.sha256"
    recorded = (
        {k: v for k, v in _parse_manifest(manifest).items() if k.startswith("raw/")}
        if manifest.is_file()
        else {}
    )
    if not recorded:
        raise LlsmflowError("has no raw/ lines; expected the run's record of its raw inputs", manifest)
    items = [
        ResultsFile(
            name,
            "raw data",
            "raw acquisition as the instrument wrote it",
            Path(name).suffix.lstrip(".").upper(),
        )
        for name in sorted(recorded)
    ]
    return raw_dir, items, recorded


def export_bia(
    results_dir: str | Path,
    out_dir: str | Path,
    rembi_path: str | Path,
    link: str = "hardlink",
    include_raw: bool = False,
) -> dict:
    """Write the BioImage Archive submission folder of a run's results (see the module docstring).

    Parameters
    ----------
    results_dir : path
        A finished run's ``results_dir/<dataset>`` (read only).
    out_dir : path
        The folder to create; it must not exist. Written as ``.NAME.*.partial`` beside it, then renamed.
    rembi_path : path
        The dataset's REMBI YAML (written by ``llsmflow init``, filled in by the user).
    link : {"hardlink", "reflink", "copy"}
        How the files are placed.
    include_raw : bool
        Also deposit the raw inputs (as ``raw/<name>``, from the run's ``raw_dir``), each checked against the
        sha256 the run recorded for it.

    Returns
    -------
    dict
        ``out_dir``, ``files`` (number of deposited files), ``bytes``, ``items`` (file-list rows),
        ``placed`` ({how: number of files}).
    """
    from llsmflow.fair.rembi import load_rembi, rembi_json
    from llsmflow.fair.results import recorded_checksums, results_inventory
    from llsmflow.io import atomic_output

    if link not in LINK_MODES:
        raise LlsmflowError(f"link mode {link!r}; expected one of {', '.join(LINK_MODES)}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise LlsmflowError("exists; expected a new folder for the submission", out_dir)
    study = load_rembi(rembi_path)
    inventory = results_inventory(results_dir)
    root = inventory["results_dir"]
    recorded = recorded_checksums(root)
    items = list(inventory["items"])
    raw_dir = None
    if include_raw:
        raw_dir, raw, raw_recorded = raw_items(inventory)
        items += raw
        recorded.update(raw_recorded)
    placed: dict[str, int] = {}
    manifest: list[tuple[str, str]] = []
    rows = []
    total = 0
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        for item in items:
            members = [f"{item.path}/{f}" for f in item.files] if item.is_dir else [item.path]
            size = 0
            lines = []
            for rel in members:
                if any(ch in rel for ch in "\t\n\r\\"):
                    raise LlsmflowError(
                        f"file name {rel!r} has a tab, line break or backslash; expected a name "
                        "the BIA file list can hold",
                        root,
                    )
                source = raw_dir / rel.removeprefix("raw/") if item.kind == "raw data" else root / rel
                if not source.is_file():
                    raise LlsmflowError("is missing; expected the file the run recorded", source)
                how = _place(source, tmp / rel, link)
                placed[how] = placed.get(how, 0) + 1
                digest = _sha256(tmp / rel)
                if rel in recorded and recorded[rel] != digest:
                    raise LlsmflowError(
                        f"sha256 {digest} differs from the run's record {recorded[rel]}; expected the file "
                        "as the run wrote or read it (llsmflow verify)",
                        source,
                    )
                manifest.append((rel, digest))
                lines.append((rel, digest))
                size += (tmp / rel).stat().st_size
            total += size
            listing = "".join(f"{d}  {r}\n" for r, d in sorted(lines))
            tree = hashlib.sha256(listing.encode("utf-8")).hexdigest() if item.is_dir else digest
            derived = item.kind not in ("provenance", "raw data")
            imaged = item.kind in ("image", "raw data")
            rows.append(
                {
                    "Files": item.path,
                    "dataset": "#dataset-0",
                    "type": item.kind,
                    "description": item.description,
                    "format": item.format,
                    "size_bytes": str(size),
                    "sha256": tree,
                    "biosample": "#biosample-0" if imaged else "",
                    "specimen": "#specimen-0" if imaged else "",
                    "image_acquisition": "#image-acquisition-0" if imaged else "",
                    "protocol": "#protocol-llsmflow" if derived else "",
                }
            )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, [name for name, _ in COLUMNS], delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / FILE_LIST).write_text(buffer.getvalue(), encoding="utf-8")
        (tmp / "files.sha256").write_text(
            "".join(f"{digest}  {rel}\n" for rel, digest in sorted(manifest)), encoding="utf-8"
        )
        (tmp / "rembi.json").write_text(
            json.dumps(rembi_json(study), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        crate = bia_crate(study, inventory)
        (tmp / "ro-crate-metadata.json").write_text(
            json.dumps(crate, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return {"out_dir": out_dir, "files": len(manifest), "bytes": total, "items": rows, "placed": placed}
