"""Planned FFTs of the NumPy backend: pyFFTW (FFTW) when importable, ``scipy.fft`` otherwise; how much
planning a transform gets; FFTW wisdom kept between processes (``llsmflow.decon.wisdom``).

Planning effort (``FFTW_PLANNER_EFFORT``, default ``"auto"``; or the environment variable
``LLSMFLOW_FFTW_PLANNING``: ``auto``, ``estimate``, ``measure``, ``patient``). With ``auto``:

1. plans measured before for this shape and thread count (in this process, or by any process into the
   wisdom file) are used: re-creating a plan from wisdom takes milliseconds;
2. else, ``FFTW_MEASURE`` on all threads when the wisdom file is shared on purpose (named in
   ``LLSMFLOW_FFTW_WISDOM``, as the workflow does for its jobs) or when measuring pays for itself within this
   call (:func:`measuring_pays`: the transforms the call will run, against the planning cost), and the
   plans are saved to the wisdom file;
3. else ``FFTW_ESTIMATE``: no planning at all. On one thread below ``_ESTIMATE_THREADS_MIN_VOXELS``
   (2^20), because FFTW_ESTIMATE cannot judge threading and its threaded plans of small transforms can be
   pathological (measured: one 56x75x75 real transform took 31 ms on 2 threads with 31,000 context switches,
   2.1 ms on 1); larger transforms showed no such thing (1.1 M and 10 M voxels: 8 and 26 context switches
   per transform), and there a measured plan's gain is only that of a better algorithm (``measuring_pays``
   with one thread's gain).

Measured on this project's 2-core machine (CPU time, one thread, ``bench/bench_cli_deconvolve.py``): a
measured plan was 2–8 % faster than an estimated one for 84–128x288x280 volumes and 1.9x for 40x112x240; the
measuring cost 27–39 transforms' time (220 for 40x112x240) on one thread, about 2.2x that on two. So for
ten RL iterations (42 transforms) on one volume, planning never pays within the call; it pays when many
chunks or iterations follow, or, through the wisdom file, many later calls.

The settings (``USE_PYFFTW``, ``FFTW_PLANNER_EFFORT`` …) are read from this module when a workspace is made:
set them here (``llsmflow.decon.fft.USE_PYFFTW = False``), not on the package."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

# FFTW_WISDOM_ENV is re-exported here: the workflow's scripts and older code import it from this module
from llsmflow.decon.wisdom import FFTW_WISDOM_ENV, import_file, save, wisdom_file  # noqa: F401

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

    pyFFTW's ``__init__`` also imports ``pyfftw.interfaces``, the NumPy/SciPy/dask look-alike interfaces,
    which import ``scipy.fftpack`` and ``dask.array`` (measured: 0.3 s of a 0.35 s import on a quiet machine,
    1.3 s of 1.7 s on a busy one). The engine uses only ``pyfftw.FFTW``, the wisdom functions and
    ``empty_aligned``, so a placeholder stands in for ``pyfftw.interfaces`` during this import and is removed
    after it: a later ``import pyfftw.interfaces`` (by anyone) imports the real module, and so does the first
    use of the attribute ``pyfftw.interfaces`` (trackpy reads it right after ``import pyfftw``).
    """
    if "pyfftw" in sys.modules:
        return sys.modules["pyfftw"]
    added = "OMP_WAIT_POLICY" not in os.environ
    if added:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    placeholder = types.ModuleType("pyfftw.interfaces")
    sys.modules.setdefault("pyfftw.interfaces", placeholder)
    try:
        import pyfftw as module
    except ImportError:  # pragma: no cover - the scipy.fft path is tested by setting USE_PYFFTW = False
        return None
    finally:
        if added:
            os.environ.pop("OMP_WAIT_POLICY", None)
        if sys.modules.get("pyfftw.interfaces") is placeholder:
            del sys.modules["pyfftw.interfaces"]
            parent = sys.modules.get("pyfftw")
            if parent is not None and getattr(parent, "interfaces", None) is placeholder:
                del parent.interfaces
    if "interfaces" not in vars(module) and "__getattr__" not in vars(module):
        module.__getattr__ = _import_interfaces_on_first_use
    return module


def _import_interfaces_on_first_use(name: str):
    """``pyfftw.__getattr__`` (PEP 562): ``pyfftw.interfaces`` imported when first read."""
    if name == "interfaces":
        import importlib

        return importlib.import_module("pyfftw.interfaces")
    raise AttributeError(f"module 'pyfftw' has no attribute {name!r}")


pyfftw = _import_pyfftw()

USE_PYFFTW: bool = pyfftw is not None
"""Use pyFFTW (FFTW) for the NumPy backend's FFTs; set to False to force ``scipy.fft``."""

FFTW_PLANNER_EFFORT = "auto"
"""FFTW planner effort for new shapes: ``"auto"`` (see the module docstring), or an FFTW flag
(``"FFTW_ESTIMATE"``, ``"FFTW_MEASURE"``, ``"FFTW_PATIENT"``) for every shape. Overridden by
``LLSMFLOW_FFTW_PLANNING`` when that is set (``auto``, ``estimate``, ``measure``, ``patient``)."""

FFTW_PLANNING_ENV = "LLSMFLOW_FFTW_PLANNING"
"""Environment variable choosing the planner effort (``auto``, ``estimate``, ``measure``, ``patient``); e.g.
``measure`` once for a shape you will deconvolve often: later calls take the plans from the wisdom file."""

FFTW_PLANNING_TIMELIMIT_S: float | None = 30.0
"""Upper bound (s) on FFTW's planning of one transform; FFTW keeps the best plan found by then."""

# The cost model of "auto" (measured on 2 cores, see the module docstring): measuring on one thread costs
# about this many transforms' time ...
_PLAN_COST_TRANSFORMS = 40.0
# ... and on more threads this factor more (measured on 2 threads: 9.2–11.3 s against 4.4 s on one);
_THREADED_PLAN_FACTOR = 2.2
# a measured one-thread plan saves this fraction of an estimated plan's time (measured 2–8 %, 47 % on small
# shapes) ...
_MEASURED_GAIN_1_THREAD = 0.1
# ... and a measured plan on T threads runs about PARALLEL_EFFICIENCY · T times faster than the one-thread
# estimated plan (assumed: on 2 busy cores we measured no gain, on a quiet one FFTW's threads reach 0.6–0.8)
_PARALLEL_EFFICIENCY = 0.7

# FFTW_ESTIMATE plans use all threads from this many voxels on (measured on 2 cores: 40x112x240 = 1.1 M
# voxels and 128x288x280 = 10 M ran on 2 threads with 8 and 26 context switches per transform, no slower than
# on one; 56x75x75 = 0.3 M took 15x longer, with 31,000); below it, one thread
_ESTIMATE_THREADS_MIN_VOXELS = 1 << 20

_EFFORTS = {"estimate": "FFTW_ESTIMATE", "measure": "FFTW_MEASURE", "patient": "FFTW_PATIENT", "auto": "auto"}


def planner_effort() -> str:
    """The effort asked for: ``LLSMFLOW_FFTW_PLANNING`` if set (unknown values: ``auto``, one warning),
    else ``FFTW_PLANNER_EFFORT``."""
    value = os.environ.get(FFTW_PLANNING_ENV, "").strip().lower()
    if not value:
        return FFTW_PLANNER_EFFORT
    effort = _EFFORTS.get(value.removeprefix("fftw_"))
    if effort is None:
        if value not in _warned:
            _warned.add(value)
            log.warning(
                "%s=%r is not understood; expected one of %s; planning with 'auto'",
                FFTW_PLANNING_ENV, value, ", ".join(_EFFORTS),
            )  # fmt: skip
        return "auto"
    return effort


def measuring_pays(transforms: int | None, threads: int, estimate_threads: int = 1) -> bool:
    """Whether ``FFTW_MEASURE`` planning on ``threads`` threads costs less than it saves over ``transforms``
    transforms, against ``FFTW_ESTIMATE`` plans on ``estimate_threads`` (1, or ``threads``) threads
    (``transforms`` None: unknown work, assumed large)."""
    if transforms is None:
        return True
    cost = _PLAN_COST_TRANSFORMS * (1.0 if threads <= 1 else _THREADED_PLAN_FACTOR)
    gain = _MEASURED_GAIN_1_THREAD
    if estimate_threads < threads:
        gain = max(1.0 - estimate_threads / (_PARALLEL_EFFICIENCY * threads), gain)
    return transforms * gain >= cost


def _is_numpy(xp) -> bool:
    return xp is np


_warned: set[str] = set()
_PLANNED: set[tuple] = set()  # (shape, threads, planner effort) planned in this process


def _wisdom_file() -> Path | None:
    return wisdom_file()[0]


def _load_wisdom() -> None:
    """Import FFTW wisdom from the wisdom file (once per file and process; see ``llsmflow.decon.wisdom``)."""
    path = _wisdom_file()
    if path is not None:
        import_file(path, pyfftw)


class _Workspace:
    """Preallocated buffers and FFTs for one padded shape: ``n_real`` float32 arrays and, with pyFFTW, one
    complex64 half-spectrum ``spec``. Transforms are unnormalised both ways (the OTFs carry the 1/N).

    With pyFFTW, all buffers are SIMD-aligned and the two plans (real → ``spec``, ``spec`` → real) are made
    once, before any data is written (``FFTW_MEASURE`` overwrites its arrays while planning), then pointed
    at whichever buffer a step needs (``update_arrays``). With ``scipy.fft`` or CuPy each transform returns a
    new array (pocketfft and cuFFT cannot write into a given output)."""

    def __init__(self, shape, xp, threads: int, n_real: int, transforms: int | None = None):
        """``transforms``: how many transforms of this shape the caller expects to run (the planning effort
        follows from it with ``FFTW_PLANNER_EFFORT = "auto"``); None: unknown, many."""
        self.shape = tuple(int(n) for n in shape)
        self.spec_shape = (*self.shape[:-1], self.shape[-1] // 2 + 1)
        self.xp = xp
        self.threads = threads
        self.fftw = _is_numpy(xp) and USE_PYFFTW and pyfftw is not None
        self.effort = None
        empty = pyfftw.empty_aligned if self.fftw else xp.empty
        self.reals = [empty(self.shape, dtype=np.float32) for _ in range(n_real)]
        # the transforms' output buffer exists only for FFTW's plans: scipy.fft and cuFFT return new arrays,
        # and a buffer they never use would hold 2.8 GB of GPU memory at a 351-million-voxel padded shape
        self.spec = empty(self.spec_shape, dtype=np.complex64) if self.fftw else None
        if self.fftw:
            self._make_plans(threads, transforms)

    def _make_plans(self, threads: int, transforms: int | None) -> None:
        """Plans for this shape, from memory or wisdom when there are any, else planned with the effort asked
        for (``auto``: see the module docstring); measured plans are saved to the wisdom file."""
        path, shared = wisdom_file()
        if path is not None:
            import_file(path, pyfftw)
        start = time.perf_counter()
        effort = planner_effort()
        if effort == "auto":
            if (self.shape, threads, "FFTW_MEASURE") in _PLANNED or self._from_wisdom("FFTW_MEASURE", threads):
                self._plan("FFTW_MEASURE", threads)
                return
            big = math.prod(self.shape) >= _ESTIMATE_THREADS_MIN_VOXELS
            measure = shared or measuring_pays(transforms, threads, threads if big else 1)
            effort = "FFTW_MEASURE" if measure else "FFTW_ESTIMATE"
        # threaded FFTW_ESTIMATE plans can be pathological on small transforms (module docstring): one thread
        small = math.prod(self.shape) < _ESTIMATE_THREADS_MIN_VOXELS
        fft_threads = 1 if effort == "FFTW_ESTIMATE" and small else threads
        key = (self.shape, fft_threads, effort)
        if key in _PLANNED or effort == "FFTW_ESTIMATE":  # in memory, or nothing to measure
            self._plan(effort, fft_threads)
            if key not in _PLANNED:
                _PLANNED.add(key)
                log.info(
                    "FFTW planned %s with FFTW_ESTIMATE on %d thread(s) (%s transforms expected: measuring "
                    "would cost more than it saves)", self.shape, fft_threads, transforms or "?",
                )  # fmt: skip
            return
        if self._from_wisdom(effort, fft_threads):
            self._plan(effort, fft_threads)
            return
        # no wisdom for this problem: measure, and keep the plans for the next process
        self._plan(effort, fft_threads)
        _PLANNED.add(key)
        seconds = time.perf_counter() - start
        log.info("FFTW planned %s with %s on %d threads in %.2f s", self.shape, effort, fft_threads, seconds)
        if path is not None:
            save(path, pyfftw)

    def _from_wisdom(self, effort: str, threads: int) -> bool:
        """Whether plans of ``effort`` on ``threads`` threads can be made from FFTW's wisdom alone (plans an
        earlier process measured and saved); if so they are made, and remembered for this process."""
        try:
            self._plan(effort, threads, "FFTW_WISDOM_ONLY")
        except RuntimeError:
            return False
        _PLANNED.add((self.shape, threads, effort))
        log.info("FFTW plans for %s on %d threads taken from wisdom %s", self.shape, threads, _wisdom_file())
        return True

    def _plan(self, effort: str, threads: int, *extra_flags: str) -> None:
        common = {"axes": (0, 1, 2), "threads": threads, "planning_timelimit": FFTW_PLANNING_TIMELIMIT_S}
        self._forward = pyfftw.FFTW(
            self.reals[0], self.spec, direction="FFTW_FORWARD", flags=(effort, *extra_flags), **common
        )
        self._inverse = pyfftw.FFTW(
            self.spec,
            self.reals[0],
            direction="FFTW_BACKWARD",
            flags=(effort, "FFTW_DESTROY_INPUT", *extra_flags),
            **common,
        )
        self.effort = effort

    def empty(self, shape, dtype):
        """An uninitialised array on the workspace's device (SIMD-aligned with pyFFTW)."""
        return (pyfftw.empty_aligned if self.fftw else self.xp.empty)(shape, dtype=dtype)

    def kernel_spectrum(self, targets, small: np.ndarray, out, precise: bool = False) -> bool:
        """Write into ``out`` (the workspace's ``spec`` shape, complex64) the real-FFT half-spectrum of a kernel
        that is zero on the grid except on the box ``np.ix_(*targets)``, where it is ``small`` (the kernel
        folded onto the grid, ``otf._folded``); return False, writing nothing, without pyFFTW.

        A pruned transform: a WB back projector of 27x35x31 voxels fills 0.1 % of a 96x320x288 grid, so the
        x transform runs on its 27·35 rows only, the y transform on its 27 planes only and the z transform on
        the whole half-spectrum (the first two stages cost a few % of the full FFT), with no zero fill and no
        placement of the kernel on the full real grid: 36 ms of CPU time against 81 ms for placement, FFT and
        scaling (2-core machine, busy). Same values to float32 round-off (``tests/test_wb_fast.py``). FFTW has
        no pruned transform of its own, hence the three one-axis plans (``FFTW_ESTIMATE``: each runs once);
        numpy.fft (one thread) and scipy.fft (0.1–0.5 s to import) are not used here for that reason.

        ``precise``: ``small`` is float64 and the two small stages run in double precision (the OTF: see
        ``engine._Engine.otf``); only the last stage, on the whole half-spectrum, runs in single precision."""
        if not self.fftw:
            return False
        (tz, ty, tx), (kz, ky, _) = targets, small.shape
        nz, ny, nx = self.shape
        mx = self.spec_shape[-1]
        # the stages on the kernel's rows and planes are small: one thread (module docstring)
        few = {"threads": 1, "flags": ("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT")}
        rows = pyfftw.empty_aligned((kz, ky, nx), dtype=np.float64 if precise else np.float32)
        rows.fill(0)
        rows[:, :, tx] = small
        along_x = pyfftw.empty_aligned((kz, ky, mx), dtype=np.complex128 if precise else np.complex64)
        pyfftw.FFTW(rows, along_x, axes=(2,), **few)()
        planes = pyfftw.empty_aligned((kz, ny, mx), dtype=np.complex128 if precise else np.complex64)
        planes.fill(0)
        planes[:, ty, :] = along_x
        pyfftw.FFTW(planes, planes, axes=(1,), **few)()
        others = np.ones(nz, dtype=bool)
        others[tz] = False
        for z in np.flatnonzero(others):
            out[z] = 0
        out[tz] = planes
        threads = self.threads if math.prod(self.shape) >= _ESTIMATE_THREADS_MIN_VOXELS else 1
        pyfftw.FFTW(out, out, axes=(0,), threads=threads, flags=("FFTW_ESTIMATE",))()
        return True

    def forward(self, real):
        """Half-spectrum of ``real`` (unchanged): the workspace's ``spec`` with pyFFTW, else a new array."""
        if self.fftw:
            self._forward.update_arrays(real, self.spec)
            self._forward.execute()
            return self.spec
        if _is_numpy(self.xp):
            import scipy.fft  # only on this fallback path: importing it costs 0.1–0.5 s per process

            return scipy.fft.rfftn(real, workers=self.threads)
        return self.xp.fft.rfftn(real)

    def inverse(self, spec, out):
        """Unnormalised inverse of ``spec`` (destroyed): written into ``out`` with pyFFTW, else a new array."""
        if self.fftw:
            self._inverse.update_arrays(spec, out)
            self._inverse.execute()
            return out
        if _is_numpy(self.xp):
            import scipy.fft

            return scipy.fft.irfftn(
                spec, s=self.shape, norm="forward", workers=self.threads, overwrite_x=True
            )
        return self.xp.fft.irfftn(spec, s=self.shape, norm="forward")
