"""Old home of the Apptainer image code, now :mod:`llsmflow.hpc.containers`.

Kept because older recorded workflow snapshots (their ``Snakefile`` imports :func:`resolve_images`), the image
definitions' ``%test`` (:func:`check_image`) and the docs import it from here. ``GPU_BACKENDS`` is
:data:`llsmflow.decon.GPU_BACKENDS`, looked up on first use.
"""

from llsmflow.hpc.containers import (
    BUILDERS,
    FLAVOURS,
    GPU_MODULES,
    LABELS_FILE,
    PROVENANCE_VARIABLES,
    REQUIRED_MODULES,
    build_image,
    check_image,
    container_runtime,
    definition_path,
    is_remote,
    parse_definition,
    pin_lines,
    render_definition,
    repository_root,
    resolve_images,
    running_container,
    spython_runtime,
)

__all__ = [
    "BUILDERS",
    "FLAVOURS",
    "GPU_MODULES",
    "LABELS_FILE",
    "PROVENANCE_VARIABLES",
    "REQUIRED_MODULES",
    "build_image",
    "check_image",
    "container_runtime",
    "definition_path",
    "is_remote",
    "parse_definition",
    "pin_lines",
    "render_definition",
    "repository_root",
    "resolve_images",
    "running_container",
    "spython_runtime",
]


def __getattr__(name: str):
    if name == "GPU_BACKENDS":
        from llsmflow.decon import GPU_BACKENDS

        return GPU_BACKENDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
