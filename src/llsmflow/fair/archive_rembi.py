"""The dataset's REMBI metadata as the archive stores it (the workflow's archive step).

The archive's ``llsmflow`` attributes carry the validated REMBI (``rembi``) so that the metadata travel with the
data to wherever the archive is copied; a REMBI file that is not filled in yet, or not valid, does not stop the
run: the archive is written without it and the reason is returned for the step's log and record.
"""

from __future__ import annotations

from pathlib import Path

from llsmflow.errors import LlsmflowError


def rembi_for_archive(path: str | Path | None) -> tuple[dict | None, str | None]:
    """``(REMBI as JSON values, None)`` when ``path`` holds a valid, filled-in REMBI YAML; ``(None, reason)``
    otherwise (no file given, still ``FILL IN`` fields, invalid, rembi-mifa not installed); ``(None, None)``
    when no file is given."""
    if not path:
        return None, None
    from llsmflow.fair.rembi import load_rembi, rembi_json

    try:
        return rembi_json(load_rembi(path)), None
    except LlsmflowError as error:
        return None, f"REMBI not stored in the archive: {error}"
