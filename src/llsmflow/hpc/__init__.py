"""Running on a cluster: what each job requests, SLURM profiles, dask clusters of SLURM jobs, and containers.

Submodules, one per concern:

``resources``
    The resource model (memory, time, GPU memory of every workflow step, from the dataset's volume sizes)
    that both the workflow (``workflow/rules/common.smk``) and ``llsmflow estimate`` use.
``profiles``
    Snakemake profiles for SLURM sites (``llsmflow profile init`` writes one; ``estimate`` reads one).
``cluster``
    Where the chunks of the whole-volume steps run: this process, or a dask ``SLURMCluster``
    (imports dask-jobqueue only when one starts).
``containers``
    Apptainer images: definitions, builds, pinned images of a run, the image a process runs in (imports
    spython only when building or parsing).

Nothing is imported until a name is used: the Snakefile imports ``containers`` and ``resources`` at every
start, and a workflow job imports ``cluster``.
"""

from __future__ import annotations

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "GPU_BACKENDS",
            "StepResources",
            "VolumeSizes",
            "grow",
            "volume_sizes",
            "step_resources",
            "submissions",
            "format_estimate",
            "estimate",
        ),
        "resources",
    ),
    **dict.fromkeys(
        ("GROUPS", "SiteAnswers", "render_profile", "write_profile", "parse_group_sizes", "profile_settings"),
        "profiles",
    ),
    **dict.fromkeys(("dask_cluster", "settings_from", "slurm_cluster_kwargs"), "cluster"),
    **dict.fromkeys(
        (
            "FLAVOURS",
            "resolve_images",
            "running_container",
            "check_image",
            "build_image",
            "pin_lines",
            "definition_path",
            "repository_root",
        ),
        "containers",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
