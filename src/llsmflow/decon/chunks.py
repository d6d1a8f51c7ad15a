"""Chunk planning and memory estimates: how a volume is split to fit a memory budget, and the working set
of one block (used by the HPC layer to size jobs)."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from llsmflow.decon.padding import _fast_length, padded_shape
from llsmflow.decon.volumes import _IO_SLAB_BYTES
from llsmflow.errors import LlsmflowError

# Share of a memory budget left for allocator slack and the array library's own I/O buffers (see plan_chunks).
_BUDGET_RESERVE = 0.1
# Halo of a chunk, in units of the PSF half-size (at least 1): see plan_chunks.
_HALO_PSF_HALVES = 2


def _fftw_in_use() -> bool:
    """Whether the engine's FFTs go through pyFFTW (one real and one complex array fewer, see _working_set).

    Read from ``llsmflow.decon.fft`` once something imported it (every deconvolution does; its settings may
    have been changed there); before that nobody can have changed them, so the answer is whether pyFFTW is
    installed, found without importing it (pyFFTW imports dask: half a second that the HPC layer, which
    sizes jobs with :func:`estimate_memory`, need not pay)."""
    fft = sys.modules.get("llsmflow.decon.fft")
    if fft is None:
        return importlib.util.find_spec("pyfftw") is not None
    return bool(fft.USE_PYFFTW and fft.pyfftw is not None)


def _working_set(padded_shape, acceleration: bool, fftw: bool) -> int:
    """Working set (bytes) of the engine on one padded block.

    float32 arrays: the data, the estimate and one work array, plus the predicted estimate and the last two
    steps with Biggs–Andrews acceleration; complex64 half-spectra (4 bytes per padded voxel each): the
    spectrum, the OTF and the back projector; without pyFFTW each transform also returns a new array (one
    real, one complex more). Plus staging for reading and writing the block: two slabs (``_IO_SLAB_BYTES``),
    or one float32 copy of the block if that is smaller.
    """
    voxels = math.prod(padded_shape)
    n_real = 5 if acceleration else 3
    n_complex = 3
    if not fftw:
        n_real += 1
        n_complex += 1
    staging = min(4 * voxels, 2 * _IO_SLAB_BYTES)
    return 4 * voxels * (n_real + n_complex) + staging


@dataclass(frozen=True)
class ChunkPlan:
    """How :func:`deconvolve` splits a volume to fit a memory budget.

    Attributes
    ----------
    shape : tuple of 3 ints
        ZYX shape of the volume (voxels).
    core : tuple of 3 ints
        Size of each chunk's core (the part of the output it writes) along z, y, x (voxels).
    halo : tuple of 3 ints
        Least context on each side of a core along z, y, x (voxels; 0 where the axis is not split): real data
        where the volume has it, its reflection beyond the volume's border.
    padded_shape : tuple of 3 ints
        FFT window of every chunk (voxels), the same for all chunks.
    count : int
        Number of chunks.
    bytes : int
        Estimated working set of one chunk (bytes), see :func:`estimate_memory`.
    """

    shape: tuple[int, int, int]
    core: tuple[int, int, int]
    halo: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    count: int
    bytes: int

    def boxes(self) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
        """Yield ``(window_start, region, core)`` for each chunk.

        ``window_start``: ZYX index (may be negative) of the first voxel of the chunk's FFT window of
        ``padded_shape`` voxels, centred on the core; ``region``: the part of the window inside the volume
        (the block to read, real data all the way to the window's edge where the volume has it; the rest
        of the window is filled by reflection at the volume's border); ``core``: where the chunk's output
        goes in the volume.
        """
        ranges = []
        for n, c, p in zip(self.shape, self.core, self.padded_shape, strict=True):
            axis = []
            for start in range(0, n, c):
                stop = min(start + c, n)
                if c >= n:  # axis not split: the whole axis, centred in its padding
                    lo = -((p - n) // 2)
                else:
                    lo = start - (p - (stop - start)) // 2
                axis.append((lo, slice(max(lo, 0), min(lo + p, n)), slice(start, stop)))
            ranges.append(axis)
        for bz in ranges[0]:
            for by in ranges[1]:
                for bx in ranges[2]:
                    yield tuple(zip(bz, by, bx, strict=True))


# The Wiener–Butterworth back projector's grid: the PSF's plus this many voxels on each side (see wb_kernel_shape).
_WB_MARGIN = 4


def wb_kernel_shape(psf_shape) -> tuple[int, ...]:
    """Shape (voxels) of the Wiener–Butterworth back projector of a PSF of ``psf_shape``: the PSF's grid (as
    Guo et al.'s ``BackProjector.m``) plus ``_WB_MARGIN`` voxels on each side.

    The Wiener filter's kernel reaches beyond the PSF: on a PSF cropped to ±4 sigma laterally (the 4-bead
    test of ``tests/test_decon.py``) the PSF's own grid lost 0.012 in the best correlation with the truth
    over 1–3 iterations, 2 voxels per side 0.007; 4 voxels per side gained 0.004 over the grid of
    ``2·n − 1`` voxels used before, and matched it to 0.002 on the objects of
    ``bench/bench_decon_quality.py`` with 14 % fewer padded voxels there (64x256x256, real LLSM PSF); on the
    60-bead object of ``bench/bench_decon.py`` it gave 0.687 against 0.704 after 3 iterations (RL-10: 0.677).
    """
    return tuple(int(k) + 2 * _WB_MARGIN for k in psf_shape)


def reach_shape(psf_shape, method: str) -> tuple[int, ...]:
    """Support (voxels) of the widest kernel an iteration applies: the PSF for RL, the back projector
    (:func:`wb_kernel_shape`) for WB. Padding and halos are sized on it (a kernel wider than the padding would
    wrap around: chunked and whole-volume results would then differ near the volume's border)."""
    if method == "wb":
        return wb_kernel_shape(psf_shape)
    return tuple(int(k) for k in psf_shape)


def estimate_memory(shape, psf_shape, acceleration: bool = False, method: str = "rl") -> int:
    """Estimated working set (bytes) of deconvolving a block of ``shape`` voxels with a ``psf_shape`` kernel.

    Six float32 copies of the padded block for RL or WB (data, estimate, one work array, and three complex64
    half-spectra: spectrum, OTF, back projector), 8 with acceleration, one real and one complex more without
    pyFFTW; plus staging for reading and writing the block (at most 32 MB; one copy of a smaller block). Input
    and output arrays held by the caller, and the buffers of the library they live in (e.g. zarr's decoded
    chunks), are not included: :func:`plan_chunks` leaves 10 % of the budget for those.

    Parameters
    ----------
    shape, psf_shape : tuple of 3 ints
        ZYX sizes (voxels) of the block and of the prepared PSF.
    acceleration : bool
        Biggs–Andrews acceleration (two more arrays).
    method : {'rl', 'wb'}
        WB pads by the back projector's half-size (4 voxels more than the PSF's), so its blocks are larger.

    Returns
    -------
    int
        Bytes.
    """
    padded = padded_shape(shape, reach_shape(psf_shape, method))
    fftw = _fftw_in_use()
    return _working_set(padded, acceleration, fftw)


def _candidate_sizes(n: int) -> list[int]:
    """Core sizes that split ``n`` into equal-ish parts: ceil(n / m) for m = 1 .. n, without repeats."""
    return sorted({-(-n // m) for m in range(1, n + 1)}, reverse=True)


def plan_chunks(
    shape,
    psf_shape,
    max_memory_gb: float | None = None,
    acceleration: bool = False,
    halo=None,
    method: str = "rl",
) -> ChunkPlan:
    """Split a volume into overlapping chunks (along z, y and x as needed) whose working set fits a budget.

    Each chunk is deconvolved in an FFT window of one common shape centred on its core: real data fill the
    window wherever the volume has data (so the context around a core is at least the halo, usually more),
    the reflection of the volume fills it beyond the volume's border exactly as for whole-volume
    deconvolution, and only the core is kept. The halo defaults to twice the PSF half-size (at least the
    half-size): each RL iteration carries information about one PSF size further, with quickly decaying
    weight (measured: 10 RL iterations, real LLSM PSF, chunked vs whole differ by ~1e-4 of the maximum with
    this halo, ~2e-3 with one half-size). Among the splits whose working set (:func:`estimate_memory`) fits
    in 90 % of the budget (the rest is left for allocator slack and the I/O buffers of the array library the
    volume lives in), the one with the least padded volume in total (least FFT work) is chosen. For a
    deskewed LLSM stack (few planes, long y and x axes) that often splits y and x rather than z, because a
    z split needs a halo on a short axis.

    Parameters
    ----------
    shape : tuple of 3 ints
        ZYX shape of the volume (voxels).
    psf_shape : tuple of 3 ints
        Shape of the prepared PSF (voxels).
    max_memory_gb : float, optional
        Budget for the working set in GB (10^9 bytes); ``None``: no limit, one chunk (the whole volume).
    acceleration : bool
        Biggs–Andrews acceleration (a larger working set).
    halo : tuple of 3 ints, optional
        Halo (voxels) along z, y, x when that axis is split; default ``_HALO_PSF_HALVES`` half-sizes of the
        widest kernel (the PSF for RL, the back projector, 8 voxels wider, for WB).
    method : {'rl', 'wb'}
        Deconvolution method (sets the kernel the padding and halo are sized on).

    Returns
    -------
    ChunkPlan

    Raises
    ------
    LlsmflowError
        A non-positive budget, a bad halo, or a budget too small for even the smallest chunk.
    """
    shape = tuple(int(n) for n in shape)
    psf_shape = reach_shape(psf_shape, method)
    halves = tuple(k // 2 for k in psf_shape)
    if halo is None:
        halo = tuple(max(_HALO_PSF_HALVES * h, h) for h in halves)
    else:
        halo = tuple(int(h) for h in halo)
        if len(halo) != 3 or min(halo) < 0:
            raise LlsmflowError(
                f"halo {halo} is invalid; expected three integers >= 0 (voxels along z, y, x)"
            )
    fftw = _fftw_in_use()

    whole = padded_shape(shape, psf_shape)

    def layout(core):
        halo_used = tuple(h if c < n else 0 for c, n, h in zip(core, shape, halo, strict=True))
        # a split axis: window = core + context on both sides (the context covers the kernel half-size)
        padded = tuple(
            _fast_length(c + 2 * h) if h else w for c, h, w in zip(core, halo_used, whole, strict=True)
        )
        count = math.prod(-(-n // c) for n, c in zip(shape, core, strict=True))
        return halo_used, padded, count, _working_set(padded, acceleration, fftw)

    if max_memory_gb is None:
        halo_used, padded, count, nbytes = layout(shape)
        return ChunkPlan(shape, shape, halo_used, padded, count, nbytes)
    try:
        budget = float(max_memory_gb) * 1e9 * (1 - _BUDGET_RESERVE)
    except (TypeError, ValueError):
        raise LlsmflowError(f"max_memory_gb {max_memory_gb!r} is not a number; expected GB > 0") from None
    if not (budget > 0 and math.isfinite(budget)):
        raise LlsmflowError(f"max_memory_gb {max_memory_gb!r} is invalid; expected a finite number of GB > 0")

    best = None
    xs = _candidate_sizes(shape[2])  # descending: the working set shrinks along the list
    for cz in _candidate_sizes(shape[0]):
        for cy in _candidate_sizes(shape[1]):
            # the longest x core that fits, by bisection
            lo, hi = 0, len(xs)
            while lo < hi:
                mid = (lo + hi) // 2
                if layout((cz, cy, xs[mid]))[3] <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            if lo == len(xs):
                continue
            core = (cz, cy, xs[lo])
            halo_used, padded, count, nbytes = layout(core)
            cost = (count * math.prod(padded), count)  # FFT work, then fewer chunks
            if best is None or cost < best[0]:
                best = (cost, core, halo_used, padded, count, nbytes)
    if best is None:
        _, padded, _, nbytes = layout((1, 1, 1))
        raise LlsmflowError(
            f"max_memory_gb {max_memory_gb} is too small for a {shape} volume with a {psf_shape} kernel; expected "
            f"at least {nbytes / 1e9:.3g} GB (a one-voxel chunk with its halo, padded to {padded})"
        )
    _, core, halo_used, padded, count, nbytes = best
    return ChunkPlan(shape, core, halo_used, padded, count, nbytes)
