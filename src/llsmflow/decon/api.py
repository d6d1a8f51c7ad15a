"""The front end: ``deconvolve`` (backend choice, chunking, retries after a GPU ran out of memory),
``richardson_lucy`` and ``wiener_butterworth`` on arrays, and ``DeconResult``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llsmflow.decon.backends import (
    BACKENDS,
    DEFAULT_ITERATIONS,
    GPU_OOM_RETRIES,
    METHODS,
    _free_gpu_memory,
    _is_out_of_memory,
    available_backends,
    choose_backend,
)
from llsmflow.decon.chunks import _BUDGET_RESERVE, plan_chunks
from llsmflow.decon.cudadecon import _deconvolve_pycudadecon
from llsmflow.decon.engine import clear_engine_cache
from llsmflow.decon.execute import _run_plan
from llsmflow.decon.otf import _WB_ALPHA, _WB_ORDER, _check_wb
from llsmflow.decon.psf import _prepare_psf_cached, resolve_background
from llsmflow.decon.volumes import _check_volume, _read_block, _volume_like
from llsmflow.errors import LlsmflowError, located, require_positive_voxel_size

# one logger for the whole package: the name the workflow's log configuration and users know
log = logging.getLogger("llsmflow.decon")


def _check_iterations(iterations) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer) or iterations < 1:
        raise LlsmflowError(f"iterations {iterations!r} is invalid; expected an integer >= 1")
    return int(iterations)


def _prepare_run(volume, psf_prepared, iterations, background, initial):
    if not isinstance(volume, np.ndarray) and hasattr(volume, "get"):
        volume = volume.get()  # a CuPy array: prepare on the host like any other input
    volume = _check_volume(volume)
    psf = _check_volume(psf_prepared, "prepared PSF")
    iterations = _check_iterations(iterations)
    if initial not in ("data", "flat"):
        raise LlsmflowError(f"initial estimate {initial!r} is not understood; expected 'data' or 'flat'")
    bg = resolve_background(volume, background)
    return volume, psf, iterations, bg


def richardson_lucy(
    volume,
    psf_prepared,
    iterations: int = DEFAULT_ITERATIONS["rl"],
    background: float | str = "auto",
    acceleration: bool = False,
    xp=np,
    progress: Callable[[int, int], None] | None = None,
    *,
    initial: str = "data",
    threads: int | None = None,
) -> np.ndarray:
    """Deconvolve a ZYX volume by Richardson–Lucy iterations, in float32, with NumPy or CuPy.

    Parameters
    ----------
    volume : ndarray
        ZYX volume, any real dtype (NumPy or CuPy).
    psf_prepared : ndarray
        Kernel from :func:`prepare_psf`, sampled like ``volume``.
    iterations : int
        Number of RL iterations (cudaDecon/pycudadecon default: 10), >= 1.
    background : float or 'auto'
        Constant subtracted before deconvolution (then clamped at 0), in the volume's intensity units; see
        :func:`resolve_background` for ``'auto'``.
    acceleration : bool
        Biggs–Andrews vector extrapolation (as in cudaDecon), λ clamped to [0, 1]. Reaches a given sharpness
        in fewer iterations; it also amplifies noise sooner.
    xp : module
        ``numpy`` (FFTs by pyFFTW, or ``scipy.fft`` when ``llsmflow.decon.fft.USE_PYFFTW`` is False or
        pyFFTW is missing) or ``cupy`` (runs on the current CUDA device).
    progress : callable, optional
        Called as ``progress(iteration, iterations)`` after each iteration (1-based).
    initial : {'data', 'flat'}
        First estimate: the background-subtracted data (cudaDecon), or a constant equal to its mean
        (``skimage.restoration.richardson_lucy`` uses a constant; after one iteration any constant gives the
        same estimate).
    threads : int, optional
        CPU threads for the FFTs and element-wise steps (NumPy backend); default all available cores.

    Returns
    -------
    ndarray
        float32 NumPy array with the shape of ``volume``, >= 0, in the volume's intensity units (background
        removed; total intensity approximately preserved).

    Notes
    -----
    The volume is padded by at least half the PSF size on each side (``numpy.pad`` 'reflect' mode, so that the
    cyclic FFT convolution sees a continuous extension rather than a step at the border) and up to fast
    lengths; the OTF is computed once. Each iteration is ``x <- max(x * H^T(d / max(H x, eps)), 0)`` with
    ``eps = 1e-6 * max(d)``: four real FFTs. Memory: see :func:`estimate_memory` (about 7 float32 copies of
    the padded volume, 9 with acceleration, staging included), plus the input and the result.
    """
    volume, psf, iterations, bg = _prepare_run(volume, psf_prepared, iterations, background, initial)
    plan = plan_chunks(volume.shape, psf.shape, None, acceleration=acceleration)
    report = None if progress is None else (lambda k, _total: progress(k, iterations))
    return _run_plan(
        volume,
        psf,
        plan,
        bg,
        iterations,
        xp=xp,
        threads=threads,
        acceleration=acceleration,
        initial=initial,
        progress=report,
    )


def wiener_butterworth(
    volume,
    psf_prepared,
    iterations: int = DEFAULT_ITERATIONS["wb"],
    background: float | str = "auto",
    xp=np,
    progress: Callable[[int, int], None] | None = None,
    *,
    alpha: float = _WB_ALPHA,
    beta: float | None = None,
    order: int = _WB_ORDER,
    initial: str = "data",
    threads: int | None = None,
) -> np.ndarray:
    """Deconvolve a ZYX volume with the Wiener–Butterworth back projector (Guo et al., Nat. Biotechnol. 2020).

    The RL iteration ``x <- max(x * B(d / max(H x, eps)), 0)`` with the unmatched back projector
    ``B = conj(H) / (|H|² + α) · 1 / sqrt(1 + ee·w^order)``, ``w = Σ_i (k_i / kc_i)²`` (see
    :func:`wb_back_projector`): a Wiener filter times a Butterworth window whose cutoffs ``kc_i`` are
    1 / FWHM of the PSF along each axis and whose ``ee`` sets the back projector's gain at the cutoff to
    ``β``. Each iteration costs the same four FFTs as an RL iteration (from a flat start, the first costs
    two, and one WB iteration needs no OTF); with pyFFTW the back projector's spectrum is a pruned transform
    of the small kernel, not an FFT of the padded volume. Measured as correlation with the ground truth
    (``bench/bench_decon_quality.py``, 64×256×256, real LLSM PSF, Poisson noise; ``bench/RESULTS.md``): from
    a flat first estimate, one WB iteration beats 10 iterations of ``skimage.restoration.richardson_lucy``
    on beads on a dense texture (0.913 against 0.865; 2 and 3 WB iterations: 0.869, 0.837), but on sparse
    beads no WB iteration count reaches it (best 0.533, at 2, against 0.645), where RL from a flat start
    does in 6. Starting from the data (the default), WB-3 stays well below (0.73 and 0.37). On the small
    Gaussian-PSF objects of ``bench/bench_decon.py`` (from the data) WB reaches RL-10's quality in 2
    iterations on 4 isolated beads and in 3 on 60 beads, not on a dense texture. Beyond the best count,
    more iterations amplify noise.

    Unlike RL, whose matched back projector keeps the total intensity, WB does not: starting from the data
    (cudaDecon's start, the default) isolated beads grow about 3x brighter in 3 iterations (in the tests),
    dense structure much less. Use RL where intensities are measured.

    Parameters
    ----------
    volume, psf_prepared, background, xp, progress, initial, threads
        As in :func:`richardson_lucy`.
    iterations : int
        Number of iterations (default 3), >= 1.
    alpha : float
        Wiener parameter (relative to ``|H|² <= 1``), > 0; larger is smoother. Default 0.001 (Guo et al.).
    beta : float, optional
        Gain of the back projector at the cutoff, in (0, 1]; default (``None``): the forward projector's own
        gain there, ``|H|`` on the cutoff planes averaged over the three axes (``BackProjector.m``, beta=1).
    order : int
        Butterworth order (steepness), >= 1; default 10.

    Returns
    -------
    ndarray
        float32 NumPy array with the shape of ``volume``, >= 0, in the volume's intensity units.
    """
    volume, psf, iterations, bg = _prepare_run(volume, psf_prepared, iterations, background, initial)
    wb = _check_wb(alpha, beta, order)
    plan = plan_chunks(volume.shape, psf.shape, None, method="wb")
    report = None if progress is None else (lambda k, _total: progress(k, iterations))
    return _run_plan(
        volume, psf, plan, bg, iterations, xp=xp, threads=threads, method="wb", initial=initial,
        progress=report, wb=wb,
    )  # fmt: skip


@dataclass
class DeconResult:
    """Output of :func:`deconvolve`.

    Attributes
    ----------
    data : ndarray
        Deconvolved ZYX volume, float32, same shape as the input (the ``out`` array when one was given).
    backend : str
        Backend that ran: ``'cpu'``, ``'cupy'`` or ``'pycudadecon'``.
    iterations : int
        Number of iterations.
    background : float
        Constant background subtracted from the data (input intensity units).
    seconds : float
        Wall time of the deconvolution itself (PSF preparation included), in s.
    method : str
        ``'rl'`` or ``'wb'``.
    chunks : int
        Number of chunks the volume was deconvolved in (1: whole volume).
    fallbacks : list of str
        What happened before the run that produced ``data`` when a GPU backend ran out of memory (retries in
        more chunks, then the CPU), one sentence each; empty when the first attempt succeeded.
    """

    data: np.ndarray
    backend: str
    iterations: int
    background: float
    seconds: float
    method: str = "rl"
    chunks: int = 1
    fallbacks: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What ran, for metadata and provenance: backend, method, iterations, chunks, background, and (only
        when a GPU ran out of memory) ``fallbacks``, the retries that led to the result."""
        summary = {
            "backend": self.backend,
            "method": self.method,
            "iterations": self.iterations,
            "chunks": self.chunks,
            "background": self.background,
        }
        if self.fallbacks:
            summary["fallbacks"] = list(self.fallbacks)
        return summary


def _deconvolve_on(name, volume, kernel, plan, bg, iterations, data_voxel, **kwargs):
    """Deconvolve ``volume`` following ``plan`` on backend ``name`` (``'cpu'``, ``'cupy'``, ``'pycudadecon'``)."""
    out = kwargs.pop("out")
    if name == "pycudadecon":
        if out is None:
            out = np.empty(volume.shape, dtype=np.float32)
        for _, region, core in plan.boxes():
            block = _read_block(volume, region)
            within = tuple(
                slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region, strict=True)
            )
            out[core] = _deconvolve_pycudadecon(block, kernel, data_voxel, iterations, bg)[within]
        return out
    xp = np
    if name == "cupy":
        import cupy as xp
    return _run_plan(volume, kernel, plan, bg, iterations, xp=xp, out=out, **kwargs)


def checked_method_backend_iterations(method: str, backend: str, iterations: int | None) -> int:
    """Check ``method`` and ``backend`` names; the iterations to run (the method's default for None)."""
    if method not in METHODS:
        raise LlsmflowError(
            f"method {method!r} is not known; expected one of {', '.join(map(repr, METHODS))}"
        )
    if backend not in ("auto", *BACKENDS):
        raise LlsmflowError(
            f"backend {backend!r} is not known; expected one of 'auto', {', '.join(BACKENDS)}"
        )
    return _check_iterations(DEFAULT_ITERATIONS[method] if iterations is None else iterations)


def deconvolve(
    volume,
    psf,
    data_voxel_um,
    psf_voxel_um,
    iterations: int | None = None,
    background: float | str = "auto",
    psf_background: float | str = "auto",
    backend: str = "cpu",
    method: str = "rl",
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    *,
    acceleration: bool = False,
    max_memory_gb: float | None = None,
    out=None,
    client=None,
    psf_path: str | Path | None = None,
) -> DeconResult:
    """Deconvolve a ZYX volume with a measured PSF, on the CPU unless another backend is asked for.

    A GPU backend that runs out of memory is retried in smaller chunks (halving the budget up to
    ``GPU_OOM_RETRIES`` times), then on the CPU; ``DeconResult.fallbacks`` says what happened.

    Parameters
    ----------
    volume : array-like
        ZYX volume (e.g. deskewed), any real dtype: a NumPy array, or with ``max_memory_gb`` / ``out`` any
        array with ``shape``, ``dtype`` and slicing (``numpy.memmap``, zarr, h5py), read chunk by chunk.
    psf : ndarray
        Measured ZYX bead PSF (raw; it is prepared with :func:`prepare_psf`).
    data_voxel_um, psf_voxel_um : tuple of 3 floats
        ``(dz, dy, dx)`` in µm of the volume and of the PSF.
    iterations : int, optional
        Iterations; default 10 for RL (as pycudadecon), 3 for WB (see ``DEFAULT_ITERATIONS``).
    background : float or 'auto'
        Data background, see :func:`resolve_background` (resolved once, on the whole volume).
    psf_background : float or 'auto'
        PSF background, see :func:`prepare_psf`.
    backend : {'cpu', 'auto', 'pycudadecon', 'cupy'}
        Default ``'cpu'``, the workflow's default (``config/schema.yaml``, ``deconvolution.backend``). See
        :func:`choose_backend`: ``'auto'`` picks the best available one; it skips pycudadecon when
        ``dy != dx`` (it assumes square pixels) or for ``method='wb'`` (it has RL only).
    method : {'rl', 'wb'}
        ``'rl'``: Richardson–Lucy (:func:`richardson_lucy`); ``'wb'``: Wiener–Butterworth
        (:func:`wiener_butterworth`, default parameters).
    progress : callable, optional
        ``progress(step, steps)`` after each iteration, ``steps = iterations × chunks``; not called by the
        pycudadecon backend.
    threads : int, optional
        CPU threads for the FFTs and element-wise steps of the NumPy backend (default: all available cores).
    acceleration : bool
        Biggs–Andrews acceleration of RL (CPU/CuPy backends; cudaDecon applies its own). With chunks, λ is
        computed per chunk, so the result differs a little more from whole-volume deconvolution.
    max_memory_gb : float, optional
        Budget (GB, 10^9 bytes) for the deconvolution's working set: host memory for 'cpu', GPU memory for
        'cupy' and 'pycudadecon'. Volumes whose working set (:func:`estimate_memory`) exceeds it are
        deconvolved in overlapping chunks (:func:`plan_chunks`). ``None`` (default): the whole volume at once.
        The input and the output array are not counted: pass ``out`` (and a lazily read ``volume``) to keep
        them out of memory too.
    out : array-like, optional
        Where to write the result (shape of ``volume``; e.g. a zarr array or ``numpy.memmap``), chunk by chunk.
        Default: a new float32 NumPy array.
    client : distributed.Client, optional
        With a chunked plan and the 'cpu' or 'cupy' backend, the chunks are deconvolved on this client's
        workers (e.g. SLURM jobs from :func:`llsmflow.cluster.dask_cluster`); this process reads and writes.
    psf_path : str or Path, optional
        The file ``psf`` was read from, named in errors about the PSF.

    Returns
    -------
    DeconResult

    Raises
    ------
    LlsmflowError
        Bad volume, PSF, voxel sizes, iterations, method, backend, budget or ``out`` shape.
    """
    iterations = checked_method_backend_iterations(method, backend, iterations)
    start = time.perf_counter()
    lazy = max_memory_gb is not None or out is not None
    volume = _volume_like(volume) if lazy else _check_volume(volume)
    if out is not None and tuple(out.shape) != tuple(volume.shape):
        raise LlsmflowError(f"out has shape {tuple(out.shape)}; expected the volume's shape {volume.shape}")
    data_voxel = require_positive_voxel_size(data_voxel_um, what="data voxel size")
    bg = resolve_background(volume, background)
    with located(psf_path):
        kernel = _prepare_psf_cached(psf, psf_voxel_um, data_voxel, background=psf_background)

    square = abs(data_voxel[1] - data_voxel[2]) <= 1e-3 * data_voxel[2]
    if backend == "auto" and (not square or method != "rl"):
        found = available_backends()
        name = next(n for n in BACKENDS if n != "pycudadecon" and found[n] == "available")
    else:
        name = choose_backend(backend)
    if name == "pycudadecon" and method != "rl":
        raise LlsmflowError(f"method {method!r} is not available with pycudadecon; expected method 'rl'")
    if name == "pycudadecon" and not square:
        raise LlsmflowError(
            f"data voxel size {data_voxel} µm has dy != dx; expected square pixels for pycudadecon "
            "(use backend 'cupy' or 'cpu')"
        )
    plan = plan_chunks(volume.shape, kernel.shape, max_memory_gb, acceleration=acceleration, method=method)
    options = dict(
        threads=threads,
        method=method,
        acceleration=acceleration,
        progress=progress,
        out=out,
        checked=not lazy,
        client=client,
    )
    fallbacks: list[str] = []
    for attempt in range(GPU_OOM_RETRIES + 2):
        if plan.count > 1:
            log.info(
                "deconvolving %s voxels in %d chunks: cores %s, halo %s, FFT window %s, ~%.2f GB each",
                volume.shape, plan.count, plan.core, plan.halo, plan.padded_shape, plan.bytes / 1e9,
            )  # fmt: skip
        try:
            out = _deconvolve_on(name, volume, kernel, plan, bg, iterations, data_voxel, **options)
            break
        except Exception as error:
            if name == "cpu" or not _is_out_of_memory(error):
                raise
            clear_engine_cache()  # the kept engines hold GPU memory the retry needs
            _free_gpu_memory(name)
            what = f"{name} ran out of GPU memory in {plan.count} chunk(s) of ~{plan.bytes / 1e9:.3g} GB"
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            log.warning("%s (%s: %s)", what, type(error).__name__, first_line)
            # halve the budget (from this plan's working set) and retry in more, smaller chunks
            smaller = None
            if attempt < GPU_OOM_RETRIES:
                budget_gb = plan.bytes / 1e9 / (1 - _BUDGET_RESERVE) / 2
                try:
                    smaller = plan_chunks(
                        volume.shape, kernel.shape, budget_gb, acceleration=acceleration, method=method
                    )
                except LlsmflowError:
                    smaller = None
            if smaller is not None and smaller.count > plan.count:
                fallbacks.append(f"{what}; retried in {smaller.count} chunks (budget {budget_gb:.3g} GB)")
                plan = smaller
                continue
            # the CPU with the caller's (host) budget: max_memory_gb was meant for the GPU's memory, but it
            # is the only budget the caller gave
            fallbacks.append(f"{what}; fell back to the CPU")
            name = "cpu"
            plan = plan_chunks(
                volume.shape, kernel.shape, max_memory_gb, acceleration=acceleration, method=method
            )
    else:  # pragma: no cover - the CPU attempt always ends the loop (result or exception)
        raise AssertionError("unreachable")
    return DeconResult(
        data=out,
        backend=name,
        iterations=iterations,
        background=bg,
        seconds=time.perf_counter() - start,
        method=method,
        chunks=plan.count,
        fallbacks=fallbacks,
    )
