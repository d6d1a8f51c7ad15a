"""What makes a run crate a Workflow RO-Crate that WorkflowHub accepts: ids, authors, README, formats.

- Data outside the crate (raw inputs, results, intermediates) get local identifiers, never the machine's paths:
  ``#raw/<path relative to raw_dir>``, ``#results/<dataset>/…`` and ``#work/…`` (relative to the run
  directory), each with its ``sha256`` and size. RO-Crate 1.2 (and ``rocrate-validator``) reads ``#`` ids as
  local identifiers of data that are not part of the crate's payload; ``llsmflow reproduce`` maps ``#raw/…``
  back onto ``raw_dir`` (or ``--raw-dir``).
- ``author`` (``Person``, ORCID as ``@id`` where known) and ``publisher`` (the first author's affiliation, an
  ``Organization``) come from the authors of the dataset's REMBI YAML (config key ``rembi``) or are given to
  ``llsmflow export workflowhub``.
- ``README.md`` is written into the crate and described as ``about`` the crate (text/markdown).
- Every ``File`` gets an ``encodingFormat`` (a media type) from its name.
- The generated JSON-LD is compacted the RO-Crate 1.1 way: a property with one value holds the value, not a
  one-element list; the metadata descriptor conforms to RO-Crate 1.1 and Workflow RO-Crate 1.0.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
RO_CRATE_1_1 = "https://w3id.org/ro/crate/1.1"
SNAKEMAKE_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#snakemake"
COMPUTATIONAL_WORKFLOW_PROFILE = "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"
KEYWORDS = [
    "lattice light-sheet microscopy",
    "deconvolution",
    "image stitching",
    "particle tracking",
    "OME-Zarr",
    "Snakemake",
]
README = "README.md"
MEDIA_TYPES = {
    ".py": "text/x-python",
    ".smk": "text/x-snakemake",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".json": "application/json",
    ".md": "text/markdown",
    ".rst": "text/x-rst",
    ".def": "text/plain",
    ".sha256": "text/plain",
    ".txt": "text/plain",
    ".log": "text/plain",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".png": "image/png",
    ".html": "text/html",
    ".parquet": "application/vnd.apache.parquet",
    ".npy": "application/octet-stream",
    ".zarr": "application/octet-stream",
}


def encoding_format(name: str) -> str:
    """Media type of a file from its name (``Snakefile``: ``text/x-snakemake``; unknown: octet-stream)."""
    path = Path(name)
    if path.name == "Snakefile":
        return "text/x-snakemake"
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def local_id(resolved: Path, raw_dir: Path | None, run_dir: Path, is_dir: bool) -> str:
    """``#raw/…``, ``#<path relative to the run directory>`` or ``#external/<name>`` for a data file."""
    relative = None
    if raw_dir is not None and resolved.is_relative_to(raw_dir):
        relative = "raw/" + resolved.relative_to(raw_dir).as_posix()
    elif resolved.is_relative_to(run_dir):
        relative = resolved.relative_to(run_dir).as_posix()
    else:  # neither raw data nor written by the run (e.g. a PSF elsewhere): its name, not its place
        relative = "external/" + resolved.name
    return "#" + relative.rstrip("/") + ("/" if is_dir else "")


def portable(value, raw_dir: Path | None, run_dir: Path):
    """A parameter value (in lists and mappings too) with an absolute path replaced by the same relative name
    as :func:`local_id` gives (``raw``, ``raw/…``, a path relative to the run directory, ``external/<name>``);
    other values as they are. The crate's ``config.yaml`` and ``run-record.json`` keep the paths as given
    (``llsmflow reproduce`` reads them)."""
    if isinstance(value, list | tuple):
        return [portable(v, raw_dir, run_dir) for v in value]
    if isinstance(value, dict):
        return {k: portable(v, raw_dir, run_dir) for k, v in value.items()}
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    normal = Path(os.path.normpath(value))
    for path in (normal, normal.resolve()):  # resolving (an lstat per component) only when needed
        if raw_dir is not None and (path == raw_dir or path.is_relative_to(raw_dir)):
            return ("raw/" + path.relative_to(raw_dir).as_posix()).rstrip("/.")
        if path == run_dir or path.is_relative_to(run_dir):
            return path.relative_to(run_dir).as_posix()
    return "external/" + normal.name


def project_url() -> str | None:
    """llsmflow's public homepage or source, as its installed distribution declares it (``Project-URL``
    Homepage/Source/Repository, or ``Home-page``); None when none is declared (then the crate points to the
    workflow snapshot it holds)."""
    from importlib import metadata

    try:
        meta = metadata.metadata("llsmflow")
    except metadata.PackageNotFoundError:
        return None
    urls = {}
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    for label in ("homepage", "source", "repository"):
        if urls.get(label, "").startswith("http"):
            return urls[label]
    home = meta.get("Home-page") or ""
    return home if home.startswith("http") else None


def rule_sources(crate_dir: Path, snapshot: str) -> dict[str, str]:
    """``{rule: crate-relative path of the snapshot file that defines it}`` (a rule's ``url`` in the crate)."""
    import re

    sources = {}
    for path in sorted((crate_dir / snapshot).rglob("*")):
        if path.name == "Snakefile" or path.suffix == ".smk":
            text = path.read_text(encoding="utf-8", errors="replace")
            for rule in re.findall(r"^\s*rule\s+(\w+)\s*:", text, flags=re.MULTILINE):
                sources.setdefault(rule, path.relative_to(crate_dir).as_posix())
    return sources


def rembi_authors(config: dict, run_dir: Path) -> list[dict]:
    """Authors of the dataset's REMBI YAML (config key ``rembi``) as ``{name, orcid, affiliation,
    affiliation_url}`` (the affiliation's ``url``); [] when
    there is none or it is not filled in (the REMBI file is validated by ``llsmflow export bia``)."""
    import yaml

    path = config.get("rembi")
    if not path:
        return []
    path = Path(path) if Path(path).is_absolute() else run_dir / path
    try:
        study = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("study") or {}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return []
    authors = []
    for entry in study.get("authors") or []:
        if not isinstance(entry, dict):
            continue
        name = " ".join(str(entry.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
        if not name or "FILL IN" in name:
            continue
        place = entry.get("affiliation")
        affiliation = place.get("name") if isinstance(place, dict) else None
        # REMBI's affiliation is {name, url} or {name, address} (rembi-mifa); "website" as earlier crates read it
        website = (place.get("url") or place.get("website")) if isinstance(place, dict) else None
        authors.append(
            {"name": name, "orcid": entry.get("orcid"), "affiliation": affiliation, "affiliation_url": website}
        )
    return authors


def rembi_metadata(config: dict, run_dir: Path) -> dict | None:
    """The dataset's REMBI (config key ``rembi``, relative to the run directory) validated with rembi-mifa,
    as JSON values; None when there is none, or it is not filled in or not valid (the archive step's log and
    record say why; the crate still lists the file, with its sha256, among the run's inputs)."""
    path = config.get("rembi")
    if not path:
        return None
    from llsmflow.fair.archive_rembi import rembi_for_archive

    path = Path(path) if Path(path).is_absolute() else run_dir / path
    return rembi_for_archive(path)[0]


def person_entities(authors: list[dict]) -> tuple[list[dict], dict | None]:
    """JSON-LD ``Person`` entities of ``authors`` (ORCID as ``@id`` when given) and the ``Organization`` of
    the first author's affiliation (the crate's publisher), or None."""
    people, organizations = [], {}
    for index, author in enumerate(authors):
        orcid = (author.get("orcid") or "").strip()
        if orcid and not orcid.startswith("http"):
            orcid = "https://orcid.org/" + orcid
        person = {"@id": orcid or f"#author-{index + 1}", "@type": "Person", "name": author["name"]}
        if author.get("affiliation"):
            org_id = "#organization-" + _slug(author["affiliation"])
            organization = {"@id": org_id, "@type": "Organization", "name": author["affiliation"]}
            if author.get("affiliation_url"):
                organization["url"] = author["affiliation_url"]
            organizations.setdefault(org_id, organization)
            person["affiliation"] = {"@id": org_id}
        people.append(person)
    publisher = next(iter(organizations.values()), None)
    return people + list(organizations.values()), publisher


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def set_authors(metadata: dict, authors: list[dict]) -> dict:
    """Put ``authors`` (``{name, orcid, affiliation}``) on the root dataset as ``author`` and the first
    author's affiliation as ``publisher`` (replacing earlier ones); returns ``metadata``."""
    if not authors:
        return metadata
    graph = metadata["@graph"]
    root = next(e for e in graph if e["@id"] == "./")
    entities, publisher = person_entities(authors)
    old = {_id["@id"] for key in ("author", "publisher") for _id in _as_list(root.get(key))}
    new_ids = {e["@id"] for e in entities}
    # people and organizations that other entities name (the REMBI study's authors, their affiliations) stay
    kept = _named_by(e for e in graph if e["@id"] not in old and e is not root)
    while True:
        more = _named_by(e for e in graph if e["@id"] in kept & old) - kept
        if not more:
            break
        kept |= more
    graph[:] = [e for e in graph if e["@id"] not in old or e["@id"] in new_ids or e["@id"] in kept]
    known = {e["@id"] for e in graph}
    graph.extend(e for e in entities if e["@id"] not in known)
    people = [{"@id": e["@id"]} for e in entities if e["@type"] == "Person"]
    root["author"] = people[0] if len(people) == 1 else people
    if publisher is not None:
        root["publisher"] = {"@id": publisher["@id"]}
    for entity in graph:  # the people who ran it (Process Run Crate: an Action's agent)
        if "CreateAction" in _as_list(entity.get("@type")):
            entity["agent"] = people[0]
    return metadata


def _named_by(entities) -> set[str]:
    """The ids that ``entities`` refer to (the actions' ``agent`` left out: :func:`set_authors` sets it)."""
    return {
        ref["@id"]
        for e in entities
        for key, value in e.items()
        if key != "agent"
        for ref in _as_list(value)
        if isinstance(ref, dict) and "@id" in ref
    }


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def finish(metadata: dict) -> dict:
    """The descriptor's ``conformsTo`` (RO-Crate 1.1 and Workflow RO-Crate 1.0), an ``encodingFormat`` on every
    ``File``, and single values instead of one-element lists (RO-Crate 1.1's compacted JSON-LD)."""
    for entity in metadata["@graph"]:
        if entity["@id"] == "ro-crate-metadata.json":
            entity["conformsTo"] = [{"@id": RO_CRATE_1_1}, {"@id": WORKFLOW_RO_CRATE}]
        types = _as_list(entity.get("@type"))
        if "File" in types and "encodingFormat" not in entity:
            entity["encodingFormat"] = encoding_format(entity.get("name") or entity["@id"])
        for key, value in entity.items():
            if isinstance(value, list) and len(value) == 1 and key != "conformsTo":
                entity[key] = value[0]
    return metadata


def readme(record: dict, authors: list[dict]) -> str:
    """The crate's README.md: what the run was, what the crate holds, how to re-run it."""
    config = record.get("config") or {}
    workflow = record.get("workflow") or {}
    commit = workflow.get("commit")
    lines = [
        f"# llsmflow run of dataset {config.get('dataset')}",
        "",
        "A Workflow Run RO-Crate (Provenance Run Crate 0.5, Workflow RO-Crate 1.0) of one run of the llsmflow",
        "Snakemake workflow for lattice light-sheet microscopy: deskew, deconvolution, stitching, tracking and an",
        "OME-Zarr archive (volumes in µm, ZYX; time in s).",
        "",
        f"- workflow: llsmflow {workflow.get('version', '')}"
        + (f", git commit {commit}" if commit else "")
        + (" (uncommitted changes)" if workflow.get("dirty") else ""),
        f"- run recorded: {record.get('created', '')}",
    ]
    if authors:
        lines.append("- authors: " + ", ".join(a["name"] for a in authors))
    lines += [
        "",
        "## Contents",
        "",
        "- `ro-crate-metadata.json`: every step with its parameters, resources and software; every input and",
        "  output with its sha256 (data outside the crate are named `#raw/…` and `#results/…`, relative to the",
        "  raw data directory and to the run directory).",
        "- `workflow/`: the Snakefile, rules, scripts and config schema that ran (main workflow:",
        "  `workflow/Snakefile`).",
        "- `config.yaml`: the resolved configuration; `run-record.json`: the run record; `checksums.sha256`: sha256",
        "  of every result file and raw input.",
        "",
        "## Re-running",
        "",
        "`llsmflow reproduce <this directory> --output <new directory> [--raw-dir <the raw data>]` verifies the",
        "workflow snapshot and every raw input against their recorded sha256, re-runs the workflow and compares",
        "the outputs with the recorded ones.",
        "",
    ]
    return "\n".join(lines)
