"""Planned FFTs of the NumPy backend: pyFFTW (FFTW) when importable, ``scipy.fft`` otherwise, and FFTW
wisdom kept between processes in the file named by ``LLSMFLOW_FFTW_WISDOM`` (``FFTW_WISDOM_ENV``).

The settings (``USE_PYFFTW``, ``FFTW_PLANNER_EFFORT`` …) are read from this module when a workspace is made:
set them here (``llsmflow.decon.fft.USE_PYFFTW = False``), not on the package."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import scipy.fft

# one logger for the whole package: the name the workflow's log configuration and users know
log = logging.getLogger("llsmflow.decon")


def _import_pyfftw():
    """Import pyFFTW (optional) with its OpenMP threads waiting passively.

    pyFFTW's wheels run FFTW's threads on a bundled libgomp, whose threads spin at every barrier by default.
    When another process takes a core, each barrier then waits for a descheduled thread: measured on a busy
    2-core machine, RL on 2 threads ran 3x slower than on 1 (7x for small blocks); with
    ``OMP_WAIT_POLICY=PASSIVE`` it ran as fast as on 1 thread. libgomp reads the variable once, when it is
    loaded, so it is set just around this import (unless the user set it) and removed again: other libraries
    and child processes never see it.
    """
    added = "OMP_WAIT_POLICY" not in os.environ
    if added:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import pyfftw as module
    except ImportError:  # pragma: no cover - the scipy.fft path is tested by setting USE_PYFFTW = False
        return None
    finally:
        if added:
            os.environ.pop("OMP_WAIT_POLICY", None)
    return module


pyfftw = _import_pyfftw()

USE_PYFFTW: bool = pyfftw is not None
"""Use pyFFTW (FFTW) for the NumPy backend's FFTs; set to False to force ``scipy.fft``."""

FFTW_PLANNER_EFFORT = "FFTW_MEASURE"
"""FFTW planner flag for new shapes (``FFTW_ESTIMATE`` plans instantly but runs slower)."""

FFTW_PLANNING_TIMELIMIT_S: float | None = 30.0
"""Upper bound (s) on FFTW's planning of one transform; FFTW keeps the best plan found by then."""

FFTW_WISDOM_ENV = "LLSMFLOW_FFTW_WISDOM"
"""Environment variable naming a file where FFTW wisdom (the measured plans) is kept between processes:
read before the first plan, rewritten (atomically) after planning a new shape. Unset: plans live only as long
as the process. Worth setting when a workflow deconvolves many same-shaped volumes in separate processes on
the same kind of machine (``FFTW_MEASURE`` planning costs about 1 s per shape on one core, more with
threads)."""


def _is_numpy(xp) -> bool:
    return xp is np


_wisdom_read_from: str | None = None
_PLANNED: set[tuple] = set()  # (shape, threads, planner effort) planned in this process


def _wisdom_file() -> Path | None:
    value = os.environ.get(FFTW_WISDOM_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _load_wisdom() -> None:
    """Import FFTW wisdom from the file named by ``LLSMFLOW_FFTW_WISDOM`` (once per file and process)."""
    global _wisdom_read_from
    path = _wisdom_file()
    if path is None or _wisdom_read_from == str(path):
        return
    _wisdom_read_from = str(path)
    try:
        parts = tuple(path.read_bytes().split(b"\0"))
    except OSError:
        return  # no file yet (or unreadable): plan from scratch
    if len(parts) == 3:
        pyfftw.import_wisdom(parts)


def _save_wisdom() -> None:
    """Write all FFTW wisdom of this process to the ``LLSMFLOW_FFTW_WISDOM`` file, atomically; failures
    (read-only file system, ...) only cost the next process a new planning."""
    path = _wisdom_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(b"\0".join(pyfftw.export_wisdom()))
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("could not save FFTW wisdom to %s: %s", path, exc)


class _Workspace:
    """Preallocated buffers and FFTs for one padded shape: ``n_real`` float32 arrays and one complex64
    half-spectrum ``spec``. Transforms are unnormalised both ways (the OTFs carry the 1/N).

    With pyFFTW, all buffers are SIMD-aligned and the two plans (real → ``spec``, ``spec`` → real) are made
    once, before any data is written (``FFTW_MEASURE`` overwrites its arrays while planning), then pointed
    at whichever buffer a step needs (``update_arrays``). With ``scipy.fft`` or CuPy each transform returns a
    new array (pocketfft and cuFFT cannot write into a given output)."""

    def __init__(self, shape, xp, threads: int, n_real: int):
        self.shape = tuple(int(n) for n in shape)
        self.spec_shape = (*self.shape[:-1], self.shape[-1] // 2 + 1)
        self.xp = xp
        self.threads = threads
        self.fftw = _is_numpy(xp) and USE_PYFFTW and pyfftw is not None
        empty = pyfftw.empty_aligned if self.fftw else xp.empty
        self.reals = [empty(self.shape, dtype=np.float32) for _ in range(n_real)]
        self.spec = empty(self.spec_shape, dtype=np.complex64)
        if self.fftw:
            _load_wisdom()
            start = time.perf_counter()
            # FFTW_ESTIMATE cannot judge threading: its threaded plans can be pathological (measured: 40 FFTs of
            # 56x75x75 took 2.6 s on 2 threads, 0.09 s on 1, with 17,000 context switches per FFT); measured
            # plans (FFTW_MEASURE and up) only use the threads where they pay
            fft_threads = 1 if FFTW_PLANNER_EFFORT == "FFTW_ESTIMATE" else threads
            key = (self.shape, fft_threads, FFTW_PLANNER_EFFORT)
            common = {
                "axes": (0, 1, 2),
                "threads": fft_threads,
                "planning_timelimit": FFTW_PLANNING_TIMELIMIT_S,
            }
            if key in _PLANNED:  # planned before in this process: FFTW has the plans in memory
                self._plan(common)
                return
            _PLANNED.add(key)
            try:  # plans another process measured and saved in the wisdom file: no measuring at all
                self._plan(common, "FFTW_WISDOM_ONLY")
                log.info(
                    "FFTW plans for %s on %d threads taken from wisdom %s", self.shape, key[1], _wisdom_file()
                )
            except RuntimeError:
                # no wisdom for this problem: measure, and keep the plans for the next process
                self._plan(common)
                seconds = time.perf_counter() - start
                log.info(
                    "FFTW planned %s with %s on %d threads in %.2f s", self.shape, key[2], key[1], seconds
                )
                _save_wisdom()

    def _plan(self, common: dict, *extra_flags: str) -> None:
        self._forward = pyfftw.FFTW(
            self.reals[0],
            self.spec,
            direction="FFTW_FORWARD",
            flags=(FFTW_PLANNER_EFFORT, *extra_flags),
            **common,
        )
        self._inverse = pyfftw.FFTW(
            self.spec,
            self.reals[0],
            direction="FFTW_BACKWARD",
            flags=(FFTW_PLANNER_EFFORT, "FFTW_DESTROY_INPUT", *extra_flags),
            **common,
        )

    def forward(self, real):
        """Half-spectrum of ``real`` (unchanged): the workspace's ``spec`` with pyFFTW, else a new array."""
        if self.fftw:
            self._forward.update_arrays(real, self.spec)
            self._forward.execute()
            return self.spec
        if _is_numpy(self.xp):
            return scipy.fft.rfftn(real, workers=self.threads)
        return self.xp.fft.rfftn(real)

    def inverse(self, spec, out):
        """Unnormalised inverse of ``spec`` (destroyed): written into ``out`` with pyFFTW, else a new array."""
        if self.fftw:
            self._inverse.update_arrays(spec, out)
            self._inverse.execute()
            return out
        if _is_numpy(self.xp):
            return scipy.fft.irfftn(
                spec, s=self.shape, norm="forward", workers=self.threads, overwrite_x=True
            )
        return self.xp.fft.irfftn(spec, s=self.shape, norm="forward")
