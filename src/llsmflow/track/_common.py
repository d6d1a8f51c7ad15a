"""Argument checks shared by the tracking modules, the context that quietens trackpy, and its import.

Every public function validates its inputs with these helpers so that a bad value gives one
:class:`~llsmflow.errors.LlsmflowError` naming the value and the expectation, whichever seam it enters by.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Iterator

import numpy as np

from llsmflow.errors import LlsmflowError, require_positive_voxel_size


def _voxel3(voxel_size_um) -> tuple[float, float, float]:
    if voxel_size_um is None or np.ndim(voxel_size_um) != 1 or len(voxel_size_um) != 3:
        raise LlsmflowError(f"voxel size {voxel_size_um!r} µm is invalid; expected three values (dz, dy, dx)")
    values = require_positive_voxel_size(voxel_size_um)
    return (values[0], values[1], values[2])


def _origin3(origin_um) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in origin_um)
    except (TypeError, ValueError):
        raise LlsmflowError(f"origin {origin_um!r} µm is invalid; expected three numbers (z, y, x)") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise LlsmflowError(f"origin {origin_um!r} µm is invalid; expected three finite numbers (z, y, x)")
    return (values[0], values[1], values[2])


def _per_axis_um(value, what: str) -> tuple[float, float, float]:
    """A length in µm given as one number or as (z, y, x); every entry finite and positive."""
    if np.ndim(value) == 0:
        try:
            values = (float(value),) * 3
        except (TypeError, ValueError):
            raise LlsmflowError(f"{what} {value!r} is invalid; expected a positive length in µm") from None
    else:
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise LlsmflowError(f"{what} {value!r} is invalid; expected positive lengths in µm") from None
        if len(values) != 3:
            raise LlsmflowError(
                f"{what} {value!r} has {len(values)} entries; expected one or three (z, y, x)"
            )
    for v in values:
        if not (v > 0 and math.isfinite(v)):
            raise LlsmflowError(f"{what} {value!r} µm is invalid; expected finite positive lengths in µm")
    return (values[0], values[1], values[2])


def _positive(value, what: str, unit: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LlsmflowError(f"{what} {value!r} is invalid; expected a positive number in {unit}") from None
    if not (v > 0 and math.isfinite(v)):
        raise LlsmflowError(f"{what} {value!r} {unit} is invalid; expected a finite positive number")
    return v


def _int_at_least(value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise LlsmflowError(f"{what} {value!r} is invalid; expected an integer >= {minimum}")
    return int(value)


def _check_volume(volume, what: str = "volume") -> np.ndarray:
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise LlsmflowError(f"{what} has shape {arr.shape}; expected a 3-D ZYX array")
    if arr.dtype.kind not in "uif" or arr.dtype.kind == "b":
        raise LlsmflowError(f"{what} has dtype {arr.dtype}; expected an integer or floating point image")
    if arr.size == 0:
        raise LlsmflowError(f"{what} has shape {arr.shape}; expected a non-empty ZYX array")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise LlsmflowError(f"{what} contains NaN or infinite voxels; expected finite intensities")
    return arr


@contextlib.contextmanager
def _quiet_trackpy() -> Iterator[None]:
    """Silence trackpy's per-frame INFO log lines and its pandas-3 deprecation warnings, then restore."""
    logger = logging.getLogger("trackpy")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"trackpy(\.|$)")
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"trackpy(\.|$)")
            # an empty (all-zero) frame simply has no particles; a 3-slice volume is not a colour image
            warnings.filterwarnings("ignore", message="Image is completely black", category=UserWarning)
            warnings.filterwarnings("ignore", message="I am interpreting the image as", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


#: Optional modules ``import trackpy`` loads that the tracking here never uses: pyFFTW (with its interfaces:
#: scipy.fftpack and dask.array, about 0.3 s of a job's start-up) serves only ``trackpy.legacy_bandpass_fftw``,
#: IPython only chooses trackpy's log handler inside a running IPython (where it is already imported).
_TRACKPY_SKIPPED = ("pyfftw", "IPython")
#: Modules ``import trackpy`` imports at its top level (``trackpy.utils``: ``from scipy import stats``) but that
#: only functions the tracking here never calls use (``fit_powerlaw``, the bright-field ring refinement): with
#: ``import_trackpy(defer_unused=True)`` imported lazily, i.e. executed on first attribute access (about
#: 0.1-0.2 s of the track job's start-up).
_TRACKPY_LAZY = ("scipy.stats",)


def _import_lazily(name: str) -> None:
    """Put module ``name`` in ``sys.modules`` unexecuted: it runs on first attribute access
    (:class:`importlib.util.LazyLoader`, the standard library's recipe), as one module object for everyone.

    Python 3.11's lazy module takes no lock: its first use should not happen in several threads at once (the
    tracking here never uses it; a program that does can ``import scipy.stats`` before tracking).
    """
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)  # as the import system binds a loaded submodule


def import_trackpy(defer_unused: bool = False):
    """trackpy, imported without :data:`_TRACKPY_SKIPPED` when this process has not imported them yet.

    While trackpy is first imported, each skipped module not yet in ``sys.modules`` is marked absent there
    (``None``: Python's documented way of making an import fail), so trackpy takes its fallbacks (NumPy's FFT
    for its legacy FFTW band-pass; the plain log handler, its choice anyway outside IPython); the marks are
    removed right after, so that later imports of pyfftw or IPython work as usual. ``trackpy.locate``'s
    band-pass (scipy.ndimage) and everything else this package calls are unaffected.

    ``defer_unused``: each module of :data:`_TRACKPY_LAZY` not yet imported is imported lazily (it runs when
    first used, by trackpy or anyone). That changes how the whole process imports it, so only a process that
    is the caller's own asks for it: the workflow's track job (a fresh, single-threaded interpreter), not
    the library's calls inside someone else's program.
    """
    if "trackpy" in sys.modules:
        return sys.modules["trackpy"]
    for name in _TRACKPY_LAZY if defer_unused else ():
        if name not in sys.modules:
            _import_lazily(name)
    skipped = [name for name in _TRACKPY_SKIPPED if name not in sys.modules]
    for name in skipped:
        sys.modules[name] = None
    try:
        import trackpy
    finally:
        for name in skipped:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return trackpy
