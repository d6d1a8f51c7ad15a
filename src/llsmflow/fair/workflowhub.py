"""``llsmflow export workflowhub``: the run's crate as the ``.crate.zip`` WorkflowHub accepts; an offline
cache for ``rocrate-validator``.

The zip holds the crate directory (``results/<dataset>/provenance``: ``ro-crate-metadata.json`` at the zip's
root, the README, the workflow snapshot, config and run record), not the data: raw inputs and results are named
in the crate by local ``#raw/…``/``#results/…`` identifiers with their sha256. Authors given at export (name,
ORCID, affiliation) replace those the crate took from the REMBI YAML. The results' own crate is not changed;
the zip is written under a temporary name and renamed when complete.

``rocrate-validator --offline`` reads the RO-Crate 1.1 JSON-LD context from its HTTP cache (a
``requests_cache`` SQLite file under ``$XDG_CACHE_HOME/rocrate-validator``), which is empty on a fresh machine
without network. :func:`seed_validator_cache` stores there a stand-in built from what is installed: the RO-Crate
context that the ``rocrate`` package ships (version 1.3, a superset of 1.1's terms) with the four bioschemas
terms that changed IRI since 1.1 mapped back to their 1.1 IRIs, stored as a fetched response would be (there is
no validator API for adding a document to its cache, hence this small transport adapter).
"""

from __future__ import annotations

import io
import json
import zipfile
from importlib.resources import files
from pathlib import Path

from llsmflow.errors import LlsmflowError

CONTEXT_URL = "https://w3id.org/ro/crate/1.1/context"
# RO-Crate 1.1 context: bioschemas terms as the Workflow Run Crate 0.5 profiles (and the validator) expect them
RO_CRATE_1_1_BIOSCHEMAS = {
    "ComputationalWorkflow": "https://bioschemas.org/ComputationalWorkflow",
    "FormalParameter": "https://bioschemas.org/FormalParameter",
    "input": "https://bioschemas.org/ComputationalWorkflow#input",
    "output": "https://bioschemas.org/ComputationalWorkflow#output",
}
METADATA = "ro-crate-metadata.json"


def export_workflowhub(results_dir, output, authors: list[dict] | None = None) -> dict:
    """Write the crate of ``results_dir`` (``RESULTS_DIR/provenance``) as the zip ``output``.

    ``authors``: ``[{name, orcid, affiliation}]`` to record as the crate's authors (the first one's
    affiliation as publisher); default: those of the crate. Returns ``{"output", "files", "bytes"}``.
    """
    from llsmflow.io import atomic_output
    from llsmflow.provenance.crate_meta import set_authors

    crate_dir = Path(results_dir) / "provenance"
    metadata_path = crate_dir / METADATA
    if not metadata_path.is_file():
        raise LlsmflowError(f"no {METADATA}; expected the results directory of a finished llsmflow run", crate_dir)
    output = Path(output)
    if not output.name.endswith(".crate.zip"):
        raise LlsmflowError("output name does not end in .crate.zip; expected NAME.crate.zip (WorkflowHub)", output)
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise LlsmflowError(
            f"is not valid JSON ({error}); expected a crate written by llsmflow", metadata_path
        ) from None
    set_authors(metadata, authors or [])
    paths = sorted(p for p in crate_dir.rglob("*") if p.is_file() and p.name != METADATA)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(METADATA, json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
        for path in paths:
            archive.write(path, path.relative_to(crate_dir).as_posix())
    return {"output": output, "files": len(paths) + 1, "bytes": output.stat().st_size}


def seed_validator_cache(cache_home) -> Path:
    """Store the RO-Crate 1.1 JSON-LD context in a ``rocrate-validator`` HTTP cache under ``cache_home`` (the
    validator's default: ``$XDG_CACHE_HOME``, else ``~/.cache``); return ``cache_home``."""
    import requests
    import urllib3
    from requests_cache import CachedSession

    class LocalDocuments(requests.adapters.BaseAdapter):
        """Transport adapter answering GETs of known URLs with local JSON-LD documents."""

        def __init__(self, documents: dict[str, bytes]):
            super().__init__()
            self.documents = documents

        def send(self, request, **kwargs):
            body = self.documents.get(request.url)
            raw = urllib3.HTTPResponse(
                body=io.BytesIO(body or b""),
                headers={"Content-Type": "application/ld+json"},
                status=200 if body is not None else 404,
                preload_content=False,
                request_url=request.url,
            )
            return requests.adapters.HTTPAdapter().build_response(request, raw)

        def close(self):
            pass

    cache_home = Path(cache_home)
    document = json.loads((files("rocrate") / "data" / "ro-crate.jsonld").read_bytes())
    document["@context"].update(RO_CRATE_1_1_BIOSCHEMAS)
    document["@id"] = CONTEXT_URL
    cache = cache_home / "rocrate-validator" / "http_cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    session = CachedSession(
        cache_name=str(cache), backend="sqlite", allowable_methods=("GET",), allowable_codes=(200,)
    )
    session.mount("https://", LocalDocuments({CONTEXT_URL: json.dumps(document).encode()}))
    response = session.get(CONTEXT_URL, headers={"Accept": "application/ld+json, application/json"})
    session.close()
    if response.status_code != 200:
        raise LlsmflowError(f"could not store the RO-Crate context (HTTP {response.status_code})", cache)
    return cache_home
