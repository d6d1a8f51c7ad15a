"""Progress lines for long steps, throttled for job logs.

Long library calls report progress through a callback ``progress(done, total)`` (deconvolution iterations,
fused chunks, tracked frames). Logging every call floods a job's log where a step has thousands of units
(fusing a large volume in 64³ chunks), and says nothing about when the step will end.
:func:`progress_logger` returns such a callback that logs the first unit, the last one and, in between, at
most one line every ``interval_s`` seconds, with the share done, the time elapsed and the time left at the
rate since the first unit (so that set-up before it, such as FFT planning, does not skew the estimate).

Written here rather than taken from tqdm: Snakemake job logs are files, not terminals, and tqdm's redrawn
bar becomes one long line of carriage returns there (or, with ``mininterval`` and a file, lines without the
log's timestamps and logger names); what is wanted is ordinary ``logging`` records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["progress_logger", "format_seconds", "format_summary_seconds"]


def format_seconds(seconds: float) -> str:
    """A duration for people: ``"42 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_summary_seconds(seconds: float | None) -> str:
    """A duration in one unit, as ``llsmflow run``'s summary table and the QC report's header write it
    (``"42.0 s"``, ``"2.7 min"``, ``"1.2 h"``; ``"–"`` when unknown)."""
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def progress_logger(
    log: logging.Logger,
    label: str,
    interval_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[int, int | None], None]:
    """A ``progress(done, total)`` callback that logs ``"<label> <done>/<total> (p %, … elapsed, … left)"``.

    Parameters
    ----------
    log : logging.Logger
        Where the lines go (level INFO).
    label : str
        What is counted, e.g. ``"fused chunk"``.
    interval_s : float
        Least time (s) between two lines, except for the first and the last unit, which are always logged.
        0 logs every call.
    clock : callable
        Monotonic time in seconds (a parameter so that tests can drive it).

    ``total`` may be None (unknown): the line then has the count and the time elapsed only.
    """
    if interval_s < 0:
        raise ValueError(f"interval_s {interval_s} is invalid; expected >= 0 (seconds)")
    start = clock()
    last_logged: float | None = None
    first: tuple[float, int] | None = None  # (time, done) of the first call: the rate is measured from there

    def report(done: int, total: int | None) -> None:
        nonlocal last_logged, first
        now = clock()
        if first is None:
            first = (now, done)
        final = total is not None and done >= total
        if not (last_logged is None or final or now - last_logged >= interval_s):
            return
        last_logged = now
        elapsed = now - start
        if total is None or total <= 0:
            log.info("%s %d (%s elapsed)", label, done, format_seconds(elapsed))
            return
        rate_units = done - first[1]
        left = (now - first[0]) / rate_units * (total - done) if rate_units > 0 else None
        log.info(
            "%s %d/%d (%.0f %%, %s elapsed%s)",
            label,
            done,
            total,
            100.0 * done / total,
            format_seconds(elapsed),
            "" if final or left is None else f", ~{format_seconds(left)} left",
        )

    return report
