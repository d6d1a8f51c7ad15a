"""Old home of the Workflow Run RO-Crate writer, now :mod:`llsmflow.provenance.crate`.

Kept because older recorded workflow snapshots (the provenance script) import :func:`write_crate` from here.
"""

from llsmflow.provenance.crate import (
    CRATE_FILES,
    LICENSE,
    METADATA,
    PROFILES,
    RO_CRATE_VERSION,
    WFRUN,
    WFRUN_TERMS,
    WORKFLOW_FILES,
    build_crate,
    copy_workflow,
    flatten_config,
    write_crate,
)

__all__ = [
    "CRATE_FILES",
    "LICENSE",
    "METADATA",
    "PROFILES",
    "RO_CRATE_VERSION",
    "WFRUN",
    "WFRUN_TERMS",
    "WORKFLOW_FILES",
    "build_crate",
    "copy_workflow",
    "flatten_config",
    "write_crate",
]
