"""Run the BioImage Archive's validator (``bia-ro-crate-validator``, ``bia-ro-crate validate``) without network.

Run by the validator's own interpreter (it needs Python ≥ 3.13)::

    python fair_bia_offline.py CRATE_DIR CONTEXT_JSON

The validator reads the crate's JSON-LD ``@context`` ``https://w3id.org/ro/crate/1.1/context`` three ways:
rdflib (urllib), PyLD and rocrate-validator (requests). This script answers that one URL, in this process only,
with ``CONTEXT_JSON`` (the RO-Crate context the ``rocrate`` package ships, prepared as in
``tests/rocrate_offline.py``) and refuses every other URL, then runs the validator's parser
(``bia_ro_crate.core.parser.ro_crate_parser.ROCrateParser``, as ``bia-ro-crate validate`` does) and prints
its JSON report. Exit 0 when the report's highest level is below ERROR.
"""

import email.message
import io
import json
import sys
import urllib.request
import urllib.response
from pathlib import Path

URL = "https://w3id.org/ro/crate/1.1/context"


def main(crate: str, context_path: str) -> int:
    body = Path(context_path).read_bytes()

    class Local(urllib.request.BaseHandler):
        handler_order = 100  # before urllib's own HTTPS handler

        def https_open(self, req):
            if req.full_url.rstrip("/") != URL:
                raise urllib.error.URLError(f"offline: {req.full_url}")
            headers = email.message.Message()
            headers["Content-Type"] = "application/ld+json"
            response = urllib.response.addinfourl(io.BytesIO(body), headers, req.full_url, 200)
            response.msg = "OK"
            return response

        http_open = https_open

    urllib.request.install_opener(urllib.request.build_opener(Local))

    import requests
    import urllib3

    def send(self, request, **kwargs):
        if request.url.rstrip("/") != URL:
            raise requests.ConnectionError(f"offline: {request.url}")
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers={"Content-Type": "application/ld+json"},
            status=200,
            preload_content=False,
            request_url=request.url,
        )
        return self.build_response(request, raw)

    requests.adapters.HTTPAdapter.send = send

    from bia_ro_crate.core.parser.ro_crate_parser import ROCrateParser
    from bia_ro_crate.validator.validation import _report_issues

    # what bia_roc_validation(crate) does, except that an exception other than the validator's own
    # ExceptionGroup of issues (which its report mode would swallow) fails here with its traceback
    parser = ROCrateParser(Path(crate))
    try:
        parser.parse()
        _ = parser.result  # raises when the parse left no result
    except ExceptionGroup:
        pass
    report = _report_issues(parser)
    print(json.dumps(report, indent=2))
    return (
        0
        if report["highest_error_level"] is None
        or report["highest_error_level"] in ("INFO", "WARNING", "DEBUG")
        else 1
    )


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
