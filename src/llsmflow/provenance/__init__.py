"""Provenance: what produced a run's outputs, recorded beside them, and re-running a run from that record.

Submodules, one per product:

``record``
    The run record (``provenance/run-record.json``): configuration, workflow version, software versions,
    environment, container, GPU, and the sha256 of every input and output; the same facts for the QC report
    (:func:`provenance_summary`). Standard library only, so every workflow job may import it.
``crate``
    The Workflow Run RO-Crate built from the run record (imports ``rocrate``, hence its own module).
``crate_steps``
    The steps of a run in its crate: one ``CreateAction`` per job, or per rule for a large run.
``digests``
    Each file hashed once per run: sha256 digests kept by path, size and modification time.
``snapshot``
    Before anything runs: every file of a crate's workflow snapshot against the checksums the crate records,
    the snapshot against the installed llsmflow's own workflow, and the raw inputs (``--raw-dir``) by sha256.
``reproduce``
    ``llsmflow reproduce``: re-run a verified crate's workflow and compare every output (reads Zarr, tables
    and images only when comparing).

Step records moved to :mod:`llsmflow.run.steps` (they are run bookkeeping); :class:`StepRecorder`,
:func:`configure_logging` and :func:`peak_memory_mb` stay importable from here because every workflow script,
and the workflow snapshots recorded in older crates, import them from ``llsmflow.provenance``. Nothing is
imported until a name is used.
"""

from __future__ import annotations

from llsmflow._lazy import lazy_exports

_HERE = {
    **dict.fromkeys(
        (
            "ENV_ALLOW_LIST",
            "SECRET_MARKERS",
            "REDACTED",
            "GPU_PACKAGES",
            "now_iso",
            "file_entries",
            "recorded_packages",
            "package_versions",
            "allowed_environment",
            "scrub",
            "container_info",
            "gpu_info",
            "git_state",
            "run_record",
            "write_run_record",
            "provenance_summary",
        ),
        "record",
    ),
    "write_crate": "crate",
    "build_crate": "crate",
    "DigestCache": "digests",
}
# names that older code imports from here but that live in another package now
_ELSEWHERE = {
    "StepRecorder": "llsmflow.run.steps",
    "configure_logging": "llsmflow.run.steps",
    "peak_memory_mb": "llsmflow.run.steps",
    "GPU_BACKENDS": "llsmflow.decon.backends",
    "sha256_file": "llsmflow.io",
    "write_json": "llsmflow.io",
}
__getattr__, __dir__ = lazy_exports(__name__, {**_HERE, **_ELSEWHERE})
__all__ = sorted([*_HERE, *_ELSEWHERE])
