"""What a deconvolution run may ask for, and what this machine can run: methods, default iterations,
backends (CUDA detection, choice) and the policy on a GPU that runs out of memory.

Cheap to import on purpose (standard library and ``llsmflow.errors`` only; CuPy and pycudadecon are imported
inside the probes): the workflow's Snakefile and the HPC layer read ``GPU_BACKENDS`` and ``DEFAULT_ITERATIONS``
to size and place jobs without loading NumPy, SciPy or FFTW.
"""

from __future__ import annotations

import ctypes
import functools
import warnings

from llsmflow.errors import LlsmflowError

BACKENDS = ("pycudadecon", "cupy", "cpu")
"""Backend names, in the order ``choose_backend("auto")`` prefers them."""

GPU_BACKENDS = ("pycudadecon", "cupy")
"""The backends that run on a GPU: a job with one of them requests a GPU and runs in the GPU image."""

METHODS = ("rl", "wb")
"""Deconvolution methods: Richardson–Lucy, Wiener–Butterworth."""

DEFAULT_ITERATIONS = {"rl": 10, "wb": 3}
"""Default iteration counts: pycudadecon's 10 for RL; 3 for WB (dexp's default; the paper uses 1–3)."""


def _cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 when no driver/GPU), without importing CuPy."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except Exception:
            return 0
    return 0


def _check_cupy() -> str:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return f"cupy cannot be imported ({type(exc).__name__}: {exc})"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return f"cupy finds no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return "cupy finds no CUDA device"
    try:
        probe = cupy.fft.rfftn(cupy.ones((2, 2, 2), dtype=cupy.float32))
        float(probe.real.sum())
    except Exception as exc:
        return f"cupy cannot run a CUDA FFT ({type(exc).__name__}: {exc})"
    return "available"


def _check_pycudadecon() -> str:
    # importing pycudadecon without libcudaDecon only warns; its calls then raise FileNotFoundError.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pycudadecon
    except Exception as exc:
        return f"pycudadecon cannot be imported ({type(exc).__name__}: {exc})"
    try:
        lib = pycudadecon.lib
        lib.lib  # noqa: B018 - the stub installed when the library is missing raises here
        lib.otf_lib  # noqa: B018
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"pycudadecon is installed but its shared library libcudaDecon does not load ({first})"
    if _cuda_device_count() < 1:
        return "pycudadecon loads but the CUDA driver reports no GPU"
    return "available"


@functools.lru_cache(maxsize=1)
def _detect_backends() -> tuple[tuple[str, str], ...]:
    return (("cpu", "available"), ("cupy", _check_cupy()), ("pycudadecon", _check_pycudadecon()))


def available_backends() -> dict[str, str]:
    """Report which deconvolution backends can run here (detected once per process, then cached).

    Returns
    -------
    dict
        ``{"cpu": ..., "cupy": ..., "pycudadecon": ...}``, each ``"available"`` or the reason it is not.
        ``cpu`` is always available; ``cupy`` needs CuPy and a CUDA device; ``pycudadecon`` needs its shared
        library (conda-forge ``cudadecon``) to load and a CUDA device.
    """
    return dict(_detect_backends())


def choose_backend(requested: str = "auto") -> str:
    """Resolve a backend request to a backend name that can run here.

    Parameters
    ----------
    requested : {'auto', 'pycudadecon', 'cupy', 'cpu'}
        ``'auto'`` picks the first available of pycudadecon, cupy, cpu.

    Returns
    -------
    str
        The backend name.

    Raises
    ------
    LlsmflowError
        Unknown name, or an explicitly requested backend that is not available (with the reason).
    """
    if requested not in ("auto", *BACKENDS):
        raise LlsmflowError(
            f"backend {requested!r} is not known; expected one of 'auto', {', '.join(BACKENDS)}"
        )
    found = available_backends()
    if requested == "auto":
        return next(name for name in BACKENDS if found[name] == "available")
    if found[requested] != "available":
        raise LlsmflowError(
            f"backend {requested!r} is not available here: {found[requested]}; expected 'auto' or "
            "'cpu', or a machine with a CUDA GPU and that backend installed"
        )
    return requested


GPU_OOM_RETRIES = 3
"""How many times :func:`deconvolve` halves the memory budget and retries on a GPU that ran out of memory
before it falls back to the CPU."""


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says a device (or the host) ran out of memory.

    CuPy raises ``cupy.cuda.memory.OutOfMemoryError`` (a ``MemoryError``); cuFFT reports a failed plan
    allocation as ``CUFFT_ALLOC_FAILED``; cudaDecon's errors carry the CUDA error name or text.
    """
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    markers = ("out of memory", "outofmemory", "alloc_failed", "cudaerrormemoryallocation", "cuda_error_out")
    return any(marker in text for marker in markers)


def _free_gpu_memory(name: str) -> None:
    """Give CuPy's cached blocks back to the driver after an out-of-memory error, before a retry."""
    if name != "cupy":
        return
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
        cupy.fft.config.get_plan_cache().clear()
    except Exception:  # pragma: no cover - best effort: the retry reports its own error
        pass
