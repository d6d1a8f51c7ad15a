"""Old home of the Workflow Run RO-Crate writer, now :mod:`llsmflow.provenance.crate`.

Kept because older recorded workflow snapshots (the provenance script) import :func:`write_crate` from here.
"""

from llsmflow._lazy import lazy_exports

_MOVED = {
    "CRATE_FILES": "llsmflow.provenance.crate",
    "LICENSE": "llsmflow.provenance.crate",
    "METADATA": "llsmflow.provenance.crate",
    "PROFILES": "llsmflow.provenance.crate",
    "RO_CRATE_VERSION": "llsmflow.provenance.crate",
    "WFRUN": "llsmflow.provenance.crate",
    "WFRUN_TERMS": "llsmflow.provenance.crate",
    "WORKFLOW_FILES": "llsmflow.provenance.crate",
    "build_crate": "llsmflow.provenance.crate",
    "copy_workflow": "llsmflow.provenance.crate",
    "flatten_config": "llsmflow.provenance.crate",
    "write_crate": "llsmflow.provenance.crate",
}
__getattr__, __dir__ = lazy_exports(__name__, _MOVED)
__all__ = sorted(_MOVED)
