"""Old home of the dask cluster of the whole-volume steps, now :mod:`llsmflow.hpc.cluster`.

Kept because older recorded workflow snapshots (the fuse and deconvolve scripts) and the docs import
:func:`dask_cluster` from here.
"""

from llsmflow._lazy import lazy_exports

_MOVED = {
    "DEFAULTS": "llsmflow.hpc.cluster",
    "KINDS": "llsmflow.hpc.cluster",
    "dask_cluster": "llsmflow.hpc.cluster",
    "settings_from": "llsmflow.hpc.cluster",
    "slurm_cluster_kwargs": "llsmflow.hpc.cluster",
    "client_threads": "llsmflow.parallel",
}
__getattr__, __dir__ = lazy_exports(__name__, _MOVED)
__all__ = sorted(_MOVED)
