"""The iteration engine: deconvolve blocks of one padded shape with the multiplicative RL/WB update
(optionally Biggs–Andrews accelerated), element-wise steps in place, slab by slab, on all threads."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llsmflow.decon.fft import _is_numpy, _Workspace
from llsmflow.decon.otf import _WB_ALPHA, _WB_ORDER, _folded, _place_kernel, wb_back_projector
from llsmflow.decon.padding import _reflect_fill
from llsmflow.decon.volumes import _read_block, _slabs, _sub_z
from llsmflow.errors import LlsmflowError
from llsmflow.parallel import available_cpus

# Element-wise steps run on blocks of about this many bytes per array (fits the L2 cache with 3 operands).
_SLAB_BYTES = 1 << 18
# Blocks with fewer voxels than this run on one thread.
_MIN_VOXELS_FOR_THREADS = 1 << 16
# From a flat first estimate, the first iteration skips the transforms of the (constant) estimate; False: the
# general path (tests compare the two)
_FLAT_FIRST_STEP = True
# The OTF's and the WB back projector's spectra by a pruned transform with pyFFTW (fft._Workspace.kernel_spectrum);
# False: an FFT of the kernel placed on the padded grid (tests compare the two)
_PRUNED_SPECTRUM = True


def _resolve_threads(threads) -> int:
    if threads is None:
        return available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise LlsmflowError(f"threads {threads!r} is invalid; expected an integer >= 1 or None (all cores)")
    return int(threads)


class _Runner:
    """Run an in-place element-wise function block by block: slabs of planes along axis 0, small enough to
    stay in cache across the steps of the function, split over ``threads`` threads (NumPy releases the GIL
    in its loops). With CuPy the function runs once on the whole arrays."""

    def __init__(self, xp, shape, threads: int):
        self.xp = xp
        self.pool = None
        plane_bytes = 4 * math.prod(shape[1:])
        step = max(1, _SLAB_BYTES // max(plane_bytes, 1))
        slabs = [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)]
        parts = min(threads, len(slabs)) if _is_numpy(xp) else 1
        bounds = np.linspace(0, len(slabs), parts + 1).round().astype(int)
        self.parts = [slabs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        if len(self.parts) > 1:
            self.pool = ThreadPoolExecutor(max_workers=len(self.parts), thread_name_prefix="llsmflow-decon")

    @staticmethod
    def _run_part(fn, arrays, slabs) -> list:
        return [fn(*(a[s] for a in arrays)) for s in slabs]

    def __call__(self, fn, *arrays) -> list:
        """``fn(*blocks)`` for matching blocks of ``arrays`` (same length along axis 0); the list of results."""
        if not _is_numpy(self.xp):
            return [fn(*arrays)]
        if self.pool is None:
            return self._run_part(fn, arrays, self.parts[0])
        futures = [self.pool.submit(self._run_part, fn, arrays, part) for part in self.parts]
        return [result for future in futures for result in future.result()]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


class _Engine:
    """Deconvolve blocks of one padded shape: workspace, OTF and back projector made once, reused per block."""

    def __init__(
        self,
        psf: np.ndarray,
        padded_shape,
        xp,
        threads: int,
        method: str = "rl",
        acceleration: bool = False,
        wb_alpha: float = _WB_ALPHA,
        wb_beta: float | None = None,
        wb_order: int = _WB_ORDER,
        transforms: int | None = None,
    ):
        """``transforms``: the FFTs the caller will run with this engine (4 per iteration and block), for the
        choice of FFTW planning effort; None: unknown."""
        self.xp = xp
        self.method = method
        self.acceleration = bool(acceleration)
        if math.prod(padded_shape) < _MIN_VOXELS_FOR_THREADS:
            threads = 1  # thread start-up and barriers cost more than they save on tiny blocks
        if transforms is not None:
            transforms += 1 if method == "rl" else 2  # the OTF (and the WB back projector)
        self.ws = _Workspace(padded_shape, xp, threads, 5 if acceleration else 3, transforms)
        self.run_blocks = _Runner(xp, self.ws.shape, threads)
        self.otf_bp = self.ws.empty(self.ws.spec_shape, xp.complex64)
        # H applied to a constant is that constant times the kernel's sum (the flat start's first step)
        self._psf, self._otf, self.kernel_sum = psf, None, float(np.sum(psf, dtype=np.float64))
        if method == "rl":

            def adjoint(bp, otf):
                xp.conjugate(otf, out=bp)

            self.run_blocks(adjoint, self.otf_bp, self.otf)
        else:
            # the WB back projector is a spatial kernel (like the PSF), so that every FFT window, whole volume
            # or chunk, applies the same filter
            self._spectrum(wb_back_projector(psf, wb_alpha, wb_beta, wb_order), self.otf_bp)

    def _spectrum(self, kernel, out, precise: bool = False) -> None:
        """Write into ``out`` (the half-spectrum's shape, complex64) the spectrum of ``kernel`` (centred at
        voxel 0 of the padded grid, wrapped around) times 1/N, N the grid's voxel count: the OTF, the WB back
        projector's spectrum. With pyFFTW a pruned transform of the small kernel (``fft._Workspace.
        kernel_spectrum``: no placement on the full grid and no full FFT of a mostly zero volume; 30 ms
        against 67 ms for 128x288x280); ``precise``: its first two stages in float64. Otherwise the kernel is
        placed on the grid in the last workspace array (free before the iterations start), transformed and
        scaled."""
        xp = self.xp
        scale = np.float32(1.0 / math.prod(self.ws.shape))
        targets, small = _folded(kernel, self.ws.shape, np.float64 if precise else np.float32)
        small *= small.dtype.type(scale)
        if _PRUNED_SPECTRUM and self.ws.kernel_spectrum(targets, small, out, precise=precise):
            return
        buffer = self.ws.reals[-1]
        _place_kernel(buffer, kernel, xp)
        spec = self.ws.forward(buffer)

        def scaled(o, s):
            xp.multiply(s, scale, out=o)

        self.run_blocks(scaled, out, spec)

    @property
    def otf(self):
        """The OTF (times 1/N), made on first use with the last workspace array as scratch (free before the
        iterations start): WB from a flat start needs it only from its second iteration on."""
        if self._otf is None:
            otf = self.ws.empty(self.ws.spec_shape, self.xp.complex64)
            # the pruned transform's first two stages in float64 ("precise"): then the OTF is as close to a
            # float64 FFT as the full float32 FFT's (1.4e-7 against 1.6e-7 of the maximum), and WB-3 from a
            # flat start stays as close to its general path (tests/test_decon.py) as before (1.6e-5 against
            # 1.4e-5 of the maximum; 2.8e-5 with the stages in float32)
            self._spectrum(self._psf, otf, precise=True)
            self._otf = otf
        return self._otf

    def close(self) -> None:
        self.run_blocks.close()

    # --------------------------------------------------------------------------------------------- blocks

    def load(self, volume, region, background: float, offset, check: bool = False, whole: bool = False) -> None:
        """Read ``volume[region]`` (a few planes at a time) into the data buffer at ``offset`` (ZYX voxels),
        background subtracted and clamped at 0, and fill the rest of the buffer with its reflection (numpy.pad
        'reflect'). ``check``: raise on NaN or infinite values. On a GPU, a volume already on the device is
        copied there in one piece, and so is a host volume when ``whole`` (one transfer through pinned memory,
        :mod:`llsmflow.decon.transfer`); otherwise slab by slab. The padding is done on the device."""
        xp = self.xp
        data = self.ws.reals[0]
        inner = tuple(slice(o, o + r.stop - r.start) for o, r in zip(offset, region, strict=True))
        if not _is_numpy(xp) and (whole or hasattr(volume, "__cuda_array_interface__")):
            # on the GPU: the block in one piece (already on the device, or one pinned transfer in its own
            # dtype, cast on the device), then the same steps as below on the whole block
            from llsmflow.decon.transfer import to_device

            block = volume[region]
            if not hasattr(block, "__cuda_array_interface__"):
                block = to_device(_read_block(volume, region, check), xp)
            elif check and block.dtype.kind == "f" and not bool(xp.isfinite(block).all()):
                raise LlsmflowError("volume contains NaN or infinite values; expected finite intensities")
            view = data[inner]
            view[...] = block
            if background:
                view -= xp.float32(background)
            xp.maximum(view, 0, out=view)
            _reflect_fill(data, inner, xp)
            return
        for a, b in _slabs(region, np.dtype(volume.dtype).itemsize):
            view = data[_sub_z(inner, a, b)]
            block = xp.asarray(_read_block(volume, _sub_z(region, a, b), check))
            if background and _is_numpy(xp) and np.can_cast(block.dtype, np.float32):
                # exact in float32 (uint16 …): the float32 subtraction of the two steps below, in one pass
                xp.subtract(block, xp.float32(background), out=view)
            else:
                view[...] = block
                if background:
                    view -= xp.float32(background)
            xp.maximum(view, 0, out=view)
        _reflect_fill(data, inner, xp)

    def data_max(self) -> float:
        return float(self.ws.reals[0].max())

    def iterate(self, iterations: int, eps: float, initial: str = "data", progress=None):
        """Run the iterations on the loaded block; return the padded estimate (a workspace buffer)."""
        xp, ws, run = self.xp, self.ws, self.run_blocks
        data = ws.reals[0]
        eps = xp.float32(eps)
        flat_step = initial == "flat" and _FLAT_FIRST_STEP and not self.acceleration
        otf = None if flat_step and iterations == 1 else self.otf  # not needed for one step from flat
        otf_bp = self.otf_bp

        def multiply(spec, h):
            xp.multiply(spec, h, out=spec)

        def ratio(t, d):  # t <- d / max(t, eps)
            xp.maximum(t, eps, out=t)
            xp.divide(d, t, out=t)

        def correction(y, t):  # H^T (d / H y), into t where the FFT library allows
            spec = ws.forward(y)
            run(multiply, spec, otf)
            t = ws.inverse(spec, t)
            run(ratio, t, data)
            spec = ws.forward(t)
            run(multiply, spec, otf_bp)
            return ws.inverse(spec, t)

        def times_clamped(t, y):  # t <- max(t * y, 0); FFT round-off (or the WB filter) can dip below 0
            xp.multiply(t, y, out=t)
            xp.maximum(t, 0, out=t)

        x = ws.reals[1]
        if initial == "flat":
            constant = float(data.mean(dtype=xp.float64))
            if not flat_step:
                x.fill(constant)
        else:
            x[...] = data
        if not self.acceleration:
            t = ws.reals[2]
            first = 1
            if flat_step and self.method == "wb":
                # as below, with B linear: x = max(B d · c / max(H c, eps), 0), one pass after the transforms
                gain = xp.float32(constant / max(constant * self.kernel_sum, float(eps)))

                def scaled_clamped(x, y):  # x <- max(y · gain, 0); y may be x
                    xp.multiply(y, gain, out=x)
                    xp.maximum(x, 0, out=x)

                spec = ws.forward(data)
                run(multiply, spec, otf_bp)
                run(scaled_clamped, x, ws.inverse(spec, x))
                if progress is not None:
                    progress(1)
                first = 2
            elif flat_step:
                # H applied to a constant is that constant times the kernel's sum (N times the OTF at zero
                # frequency): the first iteration needs no transform of the estimate, two transforms instead
                # of four; and x = max(c · B(d / max(H c, eps)), 0) takes one pass before and one after them
                # (RL's results are kept bit for bit: the benchmarks' baselines)
                inverse_hc = xp.float32(1.0 / max(constant * self.kernel_sum, float(eps)))
                c = xp.float32(constant)

                def first_ratio(t, d):  # t <- d / max(H c, eps)
                    xp.multiply(d, inverse_hc, out=t)

                def first_estimate(x, t):  # x <- max(c · t, 0)
                    xp.multiply(t, c, out=x)
                    xp.maximum(x, 0, out=x)

                run(first_ratio, t, data)
                spec = ws.forward(t)
                run(multiply, spec, otf_bp)
                t = ws.inverse(spec, t)
                run(first_estimate, x, t)
                if progress is not None:
                    progress(1)
                first = 2
            for k in range(first, iterations + 1):
                t = correction(x, t)
                run(times_clamped, x, t)
                if progress is not None:
                    progress(k)
            return x

        # Biggs–Andrews: y_k = max(x_k + λ_k (x_k − x_{k−1}), 0); x_{k+1} = ψ(y_k); g_k = x_{k+1} − y_k;
        # λ_{k+1} = Σ g_k g_{k−1} / Σ g_{k−1}², clamped to [0, 1]. Buffers rotate: x, d = x_k − x_{k−1},
        # g = g_{k−1}, f free (5 arrays with the data).
        def predict(y, x_, d_):
            xp.multiply(d_, xp.float32(lam), out=y)
            y += x_
            xp.maximum(y, 0, out=y)

        def subtract(out, a, b):
            xp.subtract(a, b, out=out)

        def dots(a, b):
            return float(xp.vdot(a.ravel(), b.ravel())), float(xp.vdot(b.ravel(), b.ravel()))

        d, g, f = ws.reals[2], ws.reals[3], ws.reals[4]
        lam, have_g = 0.0, False
        for k in range(1, iterations + 1):
            if lam > 0:
                run(predict, f, x, d)
                y = f
            else:
                y = x
            t = correction(y, d)
            run(times_clamped, t, y)  # t = x_{k+1}
            run(subtract, f, t, y)  # f = g_k (y may be f itself: element-wise in place is fine)
            if have_g:
                sums = run(dots, f, g)
                num, den = sum(s[0] for s in sums), sum(s[1] for s in sums)
                lam = min(max(num / den, 0.0), 1.0) if den > 0 else 0.0
            have_g = True
            run(subtract, x, t, x)  # x buffer <- x_{k+1} − x_k
            x, d, g, f = t, x, f, g
            if progress is not None:
                progress(k)
        return x


# ------------------------------------------------------------------------------------------ engine cache

# Engines kept per process (OTF, back projector, workspace and, through CuPy's plan cache, the cuFFT plans):
# a job that deconvolves many volumes of one shape with one PSF makes them once. Each holds a few padded
# float32 volumes (on the GPU with CuPy), so only a few are kept.
_ENGINE_CACHE_SIZE = 2
_engines: dict = {}


def _digest(array) -> str:
    import hashlib

    host = np.ascontiguousarray(array)
    return hashlib.blake2b(host.view(np.uint8).reshape(-1), digest_size=16).hexdigest() + str(host.shape)


def _cached_engine(psf, padded_shape, xp, threads: int, method: str, acceleration: bool, wb, transforms):
    """An :class:`_Engine` for these arguments, made on first use and kept (see ``_ENGINE_CACHE_SIZE``);
    ``clear_engine_cache`` closes and forgets them (after a GPU ran out of memory, or to free the memory)."""
    key = (
        xp.__name__, tuple(padded_shape), _digest(psf), str(np.asarray(psf).dtype), method, bool(acceleration),
        tuple(sorted((wb or {}).items())), threads,
    )  # fmt: skip
    engine = _engines.pop(key, None)
    if engine is None:
        while len(_engines) >= _ENGINE_CACHE_SIZE:
            _engines.pop(next(iter(_engines))).close()
        engine = _Engine(psf, padded_shape, xp, threads, method, acceleration, **(wb or {}), transforms=transforms)
    _engines[key] = engine  # most recently used last
    return engine


def clear_engine_cache() -> None:
    """Close and forget the kept engines (their GPU or host memory goes back to the memory pool)."""
    while _engines:
        _engines.pop(next(iter(_engines))).close()
