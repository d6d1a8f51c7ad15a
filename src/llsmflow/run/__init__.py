"""Run management: everything about one workflow run that is not a processing step.

Submodules, one per concern:

``config``
    Finding the workflow, reading and validating a config, and filling in the schema's defaults (the one
    place outside Snakemake that applies them).
``paths``
    Where a dataset's results and work directories are, and the run pointer ``llsmflow status`` follows.
``lock``
    The run lock of a results directory, and the clean-up after a killed run.
``launch``
    The Snakemake command of ``llsmflow run``, run under the lock, and why a failed run failed.
``status``
    What a run did and what is left (``llsmflow run``'s summary, ``llsmflow status``).
``steps``
    Step records: :class:`StepRecorder` (every workflow job), reading and summarising them.
``batch``
    The work of one deskew-and-deconvolve job: each volume read, deskewed, deconvolved and written, one at
    a time (:func:`~llsmflow.run.batch.process_volume`).
``display``
    What a run shows while it runs: the live view on a terminal, the plain log elsewhere (Snakemake's
    output read line by line and kept in the run's log file); ``display_follow``: the same view from that log
    file, for ``llsmflow watch``.

Nothing is imported until a name is used (a workflow job needs only ``steps``).
"""

from __future__ import annotations

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "SOURCE_TREE": "config",
    "find_workflow_root": "config",
    "load_schema": "config",
    "fill_defaults": "config",
    "read_config": "config",
    "check_config": "config",
    "snakemake_executable": "config",
    "POINTER_DIR": "paths",
    "run_paths": "paths",
    "write_run_pointer": "paths",
    "find_run_pointer": "paths",
    "RunLock": "lock",
    "lock_path": "lock",
    "clear_stale_snakemake_locks": "lock",
    "remove_partial_outputs": "lock",
    "print_run_summary": "status",
    "run_status": "status",
    "jobs_left": "status",
    "parse_job_stats": "status",
    "StepRecorder": "steps",
    "configure_logging": "steps",
    "peak_memory_mb": "steps",
    "read_step_records": "steps",
    "step_records_under": "steps",
    "parse_time": "steps",
    "summarise_steps": "steps",
    "process_volume": "batch",
    "RunDisplay": "display",
    "RunState": "display",
    "choose_mode": "display",
    "run_log_path": "display",
    "follow": "display_follow",
    "latest_run_log": "display_follow",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
