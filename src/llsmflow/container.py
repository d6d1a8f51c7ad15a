"""Old home of the Apptainer image code, now :mod:`llsmflow.hpc.containers`.

Kept because older recorded workflow snapshots (their ``Snakefile`` imports :func:`resolve_images`), the image
definitions' ``%test`` (:func:`check_image`) and the docs import it from here. Each name is looked up in its
new home on first use.
"""

from llsmflow._lazy import lazy_exports

_MOVED = {
    "BUILDERS": "llsmflow.hpc.containers",
    "FLAVOURS": "llsmflow.hpc.containers",
    "GPU_MODULES": "llsmflow.hpc.containers",
    "LABELS_FILE": "llsmflow.hpc.containers",
    "PROVENANCE_VARIABLES": "llsmflow.hpc.containers",
    "REQUIRED_MODULES": "llsmflow.hpc.containers",
    "build_image": "llsmflow.hpc.containers",
    "check_image": "llsmflow.hpc.containers",
    "container_runtime": "llsmflow.hpc.containers",
    "definition_path": "llsmflow.hpc.containers",
    "is_remote": "llsmflow.hpc.containers",
    "parse_definition": "llsmflow.hpc.containers",
    "pin_lines": "llsmflow.hpc.containers",
    "render_definition": "llsmflow.hpc.containers",
    "repository_root": "llsmflow.hpc.containers",
    "resolve_images": "llsmflow.hpc.containers",
    "running_container": "llsmflow.hpc.containers",
    "spython_runtime": "llsmflow.hpc.containers",
    "GPU_BACKENDS": "llsmflow.decon.backends",
}
__getattr__, __dir__ = lazy_exports(__name__, _MOVED)
__all__ = sorted(_MOVED)
