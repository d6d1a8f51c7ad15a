"""Where the chunks of the whole-volume steps run: in this process, or on a dask cluster of SLURM jobs.

Fusion (:func:`llsmflow.stitch.fuse_to_zarr`) and chunked deconvolution (:func:`llsmflow.decon.deconvolve`
with ``max_memory_gb``) split one large volume into chunks. By default (``cluster: local``) the chunks run
in the job's own process (fusion on a thread pool, deconvolution block by block), under the job's memory
budget, and neither dask nor ``distributed`` is imported. With ``cluster: slurm`` a
``dask_jobqueue.SLURMCluster`` submits worker jobs (``cores``, ``memory``, ``walltime``, ``partition``,
``account`` per worker job) and the chunks run there, so one volume is processed by several nodes;
the worker jobs are cancelled when the step ends, whether it succeeds or fails.

dask-jobqueue does the submitting; this module only turns the workflow's ``dask`` config section into its
arguments and guarantees that the cluster is closed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping

from llsmflow.errors import LlsmflowError

log = logging.getLogger("llsmflow.cluster")

#: Defaults of the workflow's ``dask`` config section (config/schema.yaml holds the same).
DEFAULTS = {
    "cluster": "local",
    "workers": 2,
    "cores": 1,
    "processes": 1,
    "memory": "4GB",
    "walltime": "01:00:00",
    "partition": None,
    "account": None,
    "interface": None,
    "local_directory": None,
    "log_directory": None,
    "job_extra_directives": [],
    "timeout_s": 300,
}

KINDS = ("local", "slurm")


def settings_from(config: Mapping | None) -> dict:
    """The ``dask`` settings with defaults filled in; ``config`` is that section (or None)."""
    settings = dict(DEFAULTS)
    settings.update({k: v for k, v in (config or {}).items() if v is not None or k in DEFAULTS})
    if settings["cluster"] not in KINDS:
        raise LlsmflowError(
            f"dask cluster {settings['cluster']!r} is not known; expected one of {', '.join(KINDS)}"
        )
    for key in ("workers", "cores", "processes"):
        if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < 1:
            raise LlsmflowError(f"dask {key} {settings[key]!r} is invalid; expected a whole number >= 1")
    return settings


def slurm_cluster_kwargs(settings: Mapping) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for the given ``dask`` settings."""
    kwargs = {
        "cores": settings["cores"],
        "processes": settings["processes"],
        "memory": settings["memory"],
        "walltime": settings["walltime"],
        "python": sys.executable,
        "job_extra_directives": list(settings.get("job_extra_directives") or []),
        "name": "llsmflow-dask-worker",
        "job_name": "llsmflow-dask",
    }
    optional = {
        "queue": settings.get("partition"),
        "account": settings.get("account"),
        "interface": settings.get("interface"),
        "local_directory": settings.get("local_directory"),
        "log_directory": settings.get("log_directory"),
    }
    kwargs.update({k: v for k, v in optional.items() if v})
    return kwargs


@contextlib.contextmanager
def dask_cluster(config: Mapping | None = None) -> Iterator[object | None]:
    """A dask client for the whole-volume steps, closed (worker jobs cancelled) on exit.

    Parameters
    ----------
    config : mapping, optional
        The workflow's ``dask`` section: ``cluster`` (``local`` or ``slurm``), ``workers`` (worker jobs),
        ``cores``, ``processes``, ``memory``, ``walltime`` (per worker job), ``partition``, ``account``,
        ``interface`` (network interface of the scheduler and workers, e.g. ``ib0``; ``lo`` on one machine),
        ``local_directory``, ``log_directory`` (the worker jobs' SLURM output; default: the current
        directory), ``job_extra_directives`` (more ``#SBATCH`` lines) and ``timeout_s`` (how long to
        wait for the first worker).

    Yields
    ------
    distributed.Client or None
        None for ``local`` (nothing imported): the steps then run their chunks in this process.

    Raises
    ------
    LlsmflowError
        Invalid settings, or no worker started within ``timeout_s`` (the jobs are cancelled first).
    """
    settings = settings_from(config)
    if settings["cluster"] == "local":
        yield None
        return
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    kwargs = slurm_cluster_kwargs(settings)
    log.info("starting a dask SLURMCluster: %d worker jobs, %s", settings["workers"], kwargs)
    with contextlib.ExitStack() as stack:
        cluster = SLURMCluster(**kwargs)
        stack.callback(cluster.close)
        client = Client(cluster)
        stack.callback(client.close)
        cluster.scale(jobs=settings["workers"])
        try:
            client.wait_for_workers(1, timeout=settings["timeout_s"])
        except TimeoutError:
            raise LlsmflowError(
                f"no dask worker job started within {settings['timeout_s']} s (partition "
                f"{settings.get('partition') or 'default'}, {settings['memory']}, {settings['walltime']}); "
                "expected the queue to start one: check squeue, or raise dask.timeout_s"
            ) from None
        yield client
