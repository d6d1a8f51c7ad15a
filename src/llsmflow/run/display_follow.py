"""Following a run from its kept Snakemake log (for ``llsmflow watch``): the latest log of a work directory,
and its lines fed to a :class:`llsmflow.run.display.RunDisplay` as they are written.

A run started by ``llsmflow run`` writes Snakemake's whole output to ``work/<dataset>/logs/snakemake/<date>-
<time>.log`` (:func:`llsmflow.run.display.run_log_path`); another terminal (or a login node, for a run on
SLURM) can show the same progress view by reading that file. Lines already written are read at once, so the
jobs' durations, and the time the steps have left, are known only for jobs that finish while following.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from llsmflow.run.display import RunDisplay

__all__ = ["ENDINGS", "follow", "latest_run_log"]

#: lines with which Snakemake ends a run's output
ENDINGS = ("Complete log(s):", "Nothing to be done")


def latest_run_log(work: str | Path) -> Path | None:
    """The newest ``<work>/logs/snakemake/*.log`` (names sort by start time), or None."""
    logs = sorted((Path(work) / "logs" / "snakemake").glob("*.log"))
    return logs[-1] if logs else None


def follow(
    log_path: str | Path,
    display: RunDisplay,
    stop: threading.Event | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> bool:
    """Feed ``display`` every line of ``log_path``, then the lines appended to it, until Snakemake's last line
    (:data:`ENDINGS`), ``stop`` is set, or ``timeout_s`` passes; True when the run's end was seen.

    ``display`` should have no log file of its own (``log_path=None``): the log is read, not written.
    """
    stop = stop or threading.Event()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = b""
    with Path(log_path).open("rb") as fh:
        while not stop.is_set():
            chunk = fh.read()
            if chunk:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for raw in lines:
                    display.feed(raw + b"\n")
                    if raw.decode("utf-8", "replace").startswith(ENDINGS):
                        return True
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return False
            stop.wait(poll_s)
    return False
