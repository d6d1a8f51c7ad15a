"""Run ``rocrate-validator`` offline on a machine without network access.

The validator resolves the crate's JSON-LD ``@context`` through its HTTP cache (a ``requests_cache`` SQLite file
under ``$XDG_CACHE_HOME/rocrate-validator``); ``--offline`` only reads that cache. With network access one runs
``rocrate-validator cache warm`` once. Here (CI without network) the cache, in a private ``XDG_CACHE_HOME``, is
seeded with a stand-in for ``https://w3id.org/ro/crate/1.1/context``: the RO-Crate context that the ``rocrate``
package ships (``rocrate/data/ro-crate.jsonld``, version 1.3, a superset of 1.1's terms) with the four bioschemas
terms that changed IRI since 1.1 mapped back to their 1.1 IRIs, stored as a fetched response would be.
"""

import io
import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import requests
import urllib3

VALIDATOR = Path(sys.executable).parent / "rocrate-validator"
VALIDATE = [str(VALIDATOR), "--no-interactive", "validate", "--offline", "-p", "provenance-run-crate-0.5"]


# RO-Crate 1.1 context: bioschemas terms as the Workflow Run Crate 0.5 profiles (and the validator) expect them
RO_CRATE_1_1_BIOSCHEMAS = {
    "ComputationalWorkflow": "https://bioschemas.org/ComputationalWorkflow",
    "FormalParameter": "https://bioschemas.org/FormalParameter",
    "input": "https://bioschemas.org/ComputationalWorkflow#input",
    "output": "https://bioschemas.org/ComputationalWorkflow#output",
}


class _LocalDocuments(requests.adapters.BaseAdapter):
    """Transport adapter answering GETs of known URLs with local JSON-LD documents."""

    def __init__(self, documents: dict[str, bytes]):
        super().__init__()
        self.documents = documents

    def send(self, request, **kwargs):
        body = self.documents.get(request.url)
        status = 200 if body is not None else 404
        headers = {"Content-Type": "application/ld+json"}
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body or b""),
            headers=headers,
            status=status,
            preload_content=False,
            request_url=request.url,
        )
        return requests.adapters.HTTPAdapter().build_response(request, raw)

    def close(self):
        pass


def seed_validator_cache(cache_home: Path) -> Path:
    """Store the RO-Crate JSON-LD context in a validator HTTP cache under ``cache_home``; return ``cache_home``."""
    from requests_cache import CachedSession

    document = json.loads((files("rocrate") / "data" / "ro-crate.jsonld").read_bytes())
    document["@context"].update(RO_CRATE_1_1_BIOSCHEMAS)
    url = "https://w3id.org/ro/crate/1.1/context"
    document["@id"] = url
    data = json.dumps(document).encode()
    cache = cache_home / "rocrate-validator" / "http_cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    session = CachedSession(
        cache_name=str(cache), backend="sqlite", allowable_methods=("GET",), allowable_codes=(200,)
    )
    session.mount("https://", _LocalDocuments({url: data}))
    response = session.get(url, headers={"Accept": "application/ld+json, application/json"})
    assert response.status_code == 200, response.status_code
    session.close()
    return cache_home


def validate(crate_dir: Path, cache_home: Path) -> subprocess.CompletedProcess:
    """``rocrate-validator --no-interactive validate --offline -p provenance-run-crate-0.5 CRATE_DIR``."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home), COLUMNS="200")
    return subprocess.run([*VALIDATE, str(crate_dir)], capture_output=True, text=True, env=env, timeout=600)
