"""The thread pool the resampling kernels (shear and rotation) run their planes and blocks on."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from llsmflow.errors import LlsmflowError
from llsmflow.parallel import available_cpus


def default_workers() -> int:
    """Threads used by :func:`deskew` and :func:`deskew_rotate` when ``workers`` is not given.

    ``$LLSMFLOW_THREADS`` if set (to leave cores to other work; the workflow's jobs pass their ``threads``
    instead), else the CPUs this process may run on (:func:`llsmflow.parallel.available_cpus`), at most 8 (the
    resampling is bound by memory bandwidth beyond a few cores).
    """
    env = os.environ.get("LLSMFLOW_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise LlsmflowError(f"LLSMFLOW_THREADS={env!r} is invalid; expected a positive integer") from None
    return max(1, min(available_cpus(), 8))


@lru_cache(maxsize=4)
def _executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llsmflow-geometry")


def _run_parallel(func, chunks: list, workers: int | None) -> None:
    """Call ``func(chunk)`` for every chunk, on ``workers`` threads (serially for one worker or one chunk)."""
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise LlsmflowError(f"workers={workers} is invalid; expected at least 1 thread")
    if workers == 1 or len(chunks) <= 1:
        for chunk in chunks:
            func(chunk)
        return
    for future in [_executor(workers).submit(func, chunk) for chunk in chunks]:
        future.result()  # re-raises a worker's exception here


def _split(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into at most ``parts`` contiguous, non-empty, near-equal ranges."""
    parts = max(1, min(parts, n))
    bounds = [round(p * n / parts) for p in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
