"""Running a chunk plan: block by block in this process, or on the workers of a dask ``distributed``
client (this process reads each chunk and writes its core)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from llsmflow.decon.chunks import ChunkPlan
from llsmflow.decon.engine import _cached_engine, _Engine, _resolve_threads
from llsmflow.decon.fft import _is_numpy
from llsmflow.decon.transfer import to_host
from llsmflow.decon.volumes import _read_block, _slabs, _sub_z, _to_host

# Relative floor of the denominator in the RL ratio (times the largest data value).
_RATIO_EPS = 1e-6


def _run_plan(
    volume,
    psf: np.ndarray,
    plan: ChunkPlan,
    background: float,
    iterations: int,
    *,
    xp=np,
    threads=None,
    method: str = "rl",
    acceleration: bool = False,
    initial: str = "data",
    progress: Callable[[int, int], None] | None = None,
    out=None,
    wb=None,
    checked: bool = True,
    client=None,
    cache: bool | None = None,
):
    """Deconvolve ``volume`` chunk by chunk following ``plan``; write into ``out`` (default: a new array).

    ``checked``: the caller has already verified that every value is finite (``_check_volume``); otherwise
    each block is checked as it is read. ``cache``: take the engine from (and leave it in) the per-process
    engine cache; default: for a whole volume on a GPU. ``client``: a ``distributed.Client`` whose workers
    deconvolve the chunks (:func:`_run_plan_on`) when there is more than one.
    """
    threads = _resolve_threads(threads)
    total = iterations * plan.count
    if plan.count > 1:
        # the RL floor eps = 1e-6 * max(data - background) must be the whole volume's, as without chunks
        if checked:
            vmax = float(volume.max())
        else:  # one streaming pass, which also checks the values before any output is written
            vmax = -math.inf
            itemsize = np.dtype(volume.dtype).itemsize
            for _, _, core in plan.boxes():
                for a, b in _slabs(core, itemsize):
                    vmax = max(vmax, float(_read_block(volume, _sub_z(core, a, b)).max()))
            checked = True
        dmax = max(vmax - background, 0.0)
    # one whole volume on the host: the result goes to the start of the engine's data buffer, free after the
    # last iteration (no new 4-byte-per-voxel array, whose first touch alone cost 50-60 ms for 96x256x256)
    into_data_buffer = out is None and plan.count == 1 and _is_numpy(xp) and not cache and client is None
    if out is None and not into_data_buffer:
        out = np.empty(plan.shape, dtype=np.float32)
    if client is not None and plan.count > 1:
        eps = _RATIO_EPS * dmax if dmax > 0 else float(np.finfo(np.float32).tiny)
        engine_args = (psf, plan.padded_shape, xp.__name__, None, method, acceleration, wb)
        run = (background, iterations, eps, initial)
        return _run_plan_on(client, volume, plan, engine_args, run, out, checked, progress)
    transforms = 4 * iterations * plan.count
    # on a GPU, a whole volume moves in one transfer each way and its engine is kept for the next volume
    whole = plan.count == 1 and not _is_numpy(xp)
    if cache is None:
        cache = whole
    if cache:
        engine = _cached_engine(psf, plan.padded_shape, xp, threads, method, acceleration, wb, transforms)
    else:
        engine = _Engine(
            psf, plan.padded_shape, xp, threads, method, acceleration, **(wb or {}), transforms=transforms
        )
    try:
        for index, (window_start, region, core) in enumerate(plan.boxes()):
            offset = tuple(r.start - w for r, w in zip(region, window_start, strict=True))
            engine.load(volume, region, background, offset, check=not checked, whole=whole)
            if plan.count == 1:
                dmax = engine.data_max()
            eps = _RATIO_EPS * dmax if dmax > 0 else float(np.finfo(np.float32).tiny)

            def step(k, index=index):
                if progress is not None:
                    progress(index * iterations + k, total)

            estimate = engine.iterate(iterations, eps, initial, step)
            within = tuple(slice(c.start - w, c.stop - w) for c, w in zip(core, window_start, strict=True))
            if into_data_buffer:
                data = engine.ws.reals[0]
                if estimate is data or not data.flags.c_contiguous:  # never so (iterate keeps the data)
                    out = np.empty(plan.shape, dtype=np.float32)
                else:
                    out = data.reshape(-1)[: math.prod(plan.shape)].reshape(plan.shape)
            if whole:
                host = to_host(estimate[within], out=out if isinstance(out, np.ndarray) else None)
                if host is not out:
                    out[core] = host
                continue
            for a, b in _slabs(core, 4):
                out[_sub_z(core, a, b)] = _to_host(estimate[_sub_z(within, a, b)])
    finally:
        if not cache:
            engine.close()
    return out


def _deconvolve_chunk(block, offset, within, engine_args, run) -> np.ndarray:
    """On a dask worker: deconvolve one chunk's ``block`` (placed at ``offset`` in its FFT window) and return
    the core ``within`` the window, as a NumPy array. The worker's cores are its threads (``threads=None``)."""
    import importlib

    psf, padded_shape, xp_name, threads, method, acceleration, wb = engine_args
    background, iterations, eps, initial = run
    xp = importlib.import_module(xp_name)
    # the planning effort follows the work of one chunk: a worker that gets more reuses its plans in memory
    engine = _Engine(
        psf, padded_shape, xp, _resolve_threads(threads), method, acceleration, **(wb or {}),
        transforms=4 * iterations,
    )  # fmt: skip
    try:
        region = tuple(slice(0, n) for n in block.shape)
        engine.load(block, region, background, offset)
        estimate = engine.iterate(iterations, eps, initial)
        return np.array(_to_host(estimate[within]), dtype=np.float32, copy=True)
    finally:
        engine.close()


def _run_plan_on(client, volume, plan: ChunkPlan, engine_args, run, out, checked: bool, progress):
    """:func:`_run_plan` on a distributed client: this process reads each chunk's block and writes its core;
    the workers deconvolve, at most two chunks per worker thread in flight (bounded memory here)."""
    from distributed import as_completed

    from llsmflow.parallel import client_threads

    iterations = run[1]
    boxes = iter(enumerate(plan.boxes()))
    remote_args = client.scatter(engine_args, broadcast=True, hash=False)
    cores = {}

    def submit():
        item = next(boxes, None)
        if item is None:
            return None
        index, (window_start, region, core) = item
        block = _read_block(volume, region, check=not checked)
        offset = tuple(r.start - w for r, w in zip(region, window_start, strict=True))
        within = tuple(slice(c.start - w, c.stop - w) for c, w in zip(core, window_start, strict=True))
        future = client.submit(_deconvolve_chunk, block, offset, within, remote_args, run, pure=False)
        cores[future.key] = core
        return future

    first = [f for f in (submit() for _ in range(2 * client_threads(client))) if f is not None]
    in_flight = {f.key: f for f in first}
    done = 0
    pending = as_completed(first)
    try:
        for future in pending:
            in_flight.pop(future.key, None)
            out[cores.pop(future.key)] = future.result()
            done += 1
            if progress is not None:
                progress(done * iterations, plan.count * iterations)
            nxt = submit()
            if nxt is not None:
                in_flight[nxt.key] = nxt
                pending.add(nxt)
    except BaseException:
        # a failed chunk (e.g. out of GPU memory) must not leave its siblings holding the workers' memory
        # while deconvolve() retries in smaller chunks
        client.cancel(list(in_flight.values()))
        raise
    return out
