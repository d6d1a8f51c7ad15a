"""Old home of the dask cluster of the whole-volume steps, now :mod:`llsmflow.hpc.cluster`.

Kept because older recorded workflow snapshots (the fuse and deconvolve scripts) and the docs import
:func:`dask_cluster` from here.
"""

from llsmflow.hpc.cluster import DEFAULTS, KINDS, dask_cluster, settings_from, slurm_cluster_kwargs
from llsmflow.parallel import client_threads

__all__ = ["DEFAULTS", "KINDS", "client_threads", "dask_cluster", "settings_from", "slurm_cluster_kwargs"]
