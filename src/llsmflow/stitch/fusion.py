"""Fusion: every tile resampled onto the common grid and blended, chunk by chunk, into a Zarr v3 array
(:func:`fuse_to_zarr`), within a memory budget if one is given (:mod:`._budget`).

The chunks run on a :class:`concurrent.futures.ThreadPoolExecutor` of this process (or in the calling
thread, ``scheduler="synchronous"``), on a dask ``distributed`` client's workers (``client=``), or on
another dask scheduler (``"processes"``). The thread pool stands in for ``dask.compute(...,
scheduler="threads")``: each chunk is one independent call that writes its own part of the output, with no
graph to schedule, and the fuse job runs once per timepoint (thousands of jobs in a large run), so importing
dask (about 0.1 s per job) bought nothing there. dask is imported only on the client and ``"processes"``
paths, SciPy's ``ndimage`` only where a tile's validity mask needs a distance transform.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import zarr

from llsmflow.errors import LlsmflowError
from llsmflow.io import atomic_output
from llsmflow.parallel import available_cpus
from llsmflow.progress import progress_logger
from llsmflow.stitch._budget import SYNCHRONOUS as _SYNCHRONOUS
from llsmflow.stitch._budget import THREADS as _THREADS
from llsmflow.stitch._budget import _block_bytes, _plan_workers
from llsmflow.stitch.grid import _sample, _sample_window, _tile_range, _voxel3, fused_extent
from llsmflow.stitch.tiles import Tile, _check_tiles

__all__ = ["fuse_to_zarr"]

log = logging.getLogger("llsmflow.stitch")  # the stage's logger, as before the package was split


def _ramp(distance_um: np.ndarray, width_um: float) -> np.ndarray:
    """Blending weight (> 0) from the distance (µm) to the tile border: cosine ramp to 1 over ``width_um``."""
    if width_um <= 0:
        return np.ones_like(distance_um)
    x = np.clip(distance_um / width_um, 0.0, 1.0)
    return 1e-3 + (1.0 - 1e-3) * (0.5 - 0.5 * np.cos(np.pi * x))


def _constant_axes(valid: np.ndarray) -> tuple[int, ...]:
    """Axes along which a boolean block does not change (broadcast views are recognised by a zero stride)."""
    axes = []
    for axis in range(valid.ndim):
        if valid.shape[axis] <= 1:
            continue
        if valid.strides[axis] == 0 or np.array_equal(
            np.logical_and.reduce(valid, axis=axis), np.logical_or.reduce(valid, axis=axis)
        ):
            axes.append(axis)
    return tuple(axes)


def _validity_weight(
    tile: Tile, offset: np.ndarray, ranges: Sequence[tuple[int, int]], voxel: np.ndarray, width_um: float
) -> np.ndarray | None:
    """Blending weight from a tile's validity mask at grid ``ranges``; None where the tile is all valid.

    On the tile's own grid the weight is the cosine ramp (:func:`_ramp`) of the distance (µm) from each valid
    voxel to the nearest invalid one, and 0 on invalid voxels; it is then interpolated like the data, and set
    to 0 wherever the interpolation would read an invalid voxel. The distance transform is computed on the
    block plus a halo of ``width_um``, enough for every distance below the ramp width to be exact, so
    blocks agree where they meet. Tile borders are not invalid here: the border ramp handles them.

    Along axes where the mask does not change (a deskewed tile's mask is constant across the scan axis) the
    distance transform, the ramp and the interpolation are computed on one plane and the result has length 1
    there (it broadcasts against the block): the same numbers, at a fraction of the time and memory.
    """
    window, _, _ = _sample_window(tile.shape, offset, ranges)
    halo = [int(math.ceil(width_um / v)) + 1 if width_um > 0 else 0 for v in voxel]
    outer = tuple(
        slice(max(0, s.start - h), min(n, s.stop + h))
        for s, h, n in zip(window, halo, tile.shape, strict=True)
    )
    valid = tile.read_valid(outer)
    # broadcast views (zero strides) first: free to recognise, and they shrink every test that follows
    constant = tuple(axis for axis in range(3) if valid.strides[axis] == 0 and valid.shape[axis] > 1)
    valid = valid[tuple(slice(0, 1) if axis in constant else slice(None) for axis in range(3))]
    if valid.all():
        return None
    if not valid.any():
        return np.zeros((1, 1, 1), np.float32)
    constant = constant + _constant_axes(valid)
    valid = valid[tuple(slice(0, 1) if axis in constant else slice(None) for axis in range(3))]
    if width_um > 0:
        from scipy import ndimage as ndi  # here: only tiles with a validity mask need it (see fuse_to_zarr)

        distance = ndi.distance_transform_edt(valid, sampling=voxel)
        weight = np.where(valid, _ramp(distance, width_um), 0.0).astype(np.float32)
        del distance
    else:
        weight = valid.astype(np.float32)

    def crop(volume):
        def read(slices):
            return volume[
                tuple(
                    slice(0, 1) if axis in constant else slice(s.start - o.start, s.stop - o.start)
                    for axis, (s, o) in enumerate(zip(slices, outer, strict=True))
                )
            ]

        return read

    # sample one grid plane along the constant axes: any plane gives the same values there
    sampled_ranges = [(a, a + 1) if axis in constant else (a, b) for axis, (a, b) in enumerate(ranges)]
    sampled = _sample(tile, offset, sampled_ranges, read=crop(weight))
    inside = _sample(tile, offset, sampled_ranges, read=crop(valid.astype(np.float32))) > 1.0 - 1e-3
    return np.where(inside, sampled, 0.0).astype(np.float32)


class _Fuser:
    """Computes one block of the fused volume from the tiles that cover it, and stores it."""

    def __init__(self, tiles, offsets, voxel, blend_width_um, dtype):
        self.tiles = tiles
        self.offsets = offsets  # key -> voxel offset of the tile's voxel 0 in the fused grid
        self.voxel = voxel
        self.blend_width_um = blend_width_um
        self.dtype = np.dtype(dtype)
        self.lock = threading.Lock()
        self.store_path: str | None = None  # the Zarr array that store() writes to
        self._array = None

    # for the "processes" scheduler: locks and open arrays do not pickle
    def __getstate__(self):
        state = dict(self.__dict__)
        del state["lock"]
        state["_array"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def _contributions(self, lo: Sequence[int], hi: Sequence[int]) -> list[tuple]:
        """The tiles whose valid data reach the block ``[lo, hi)``: (tile, offset, grid ranges, validity weight
        or None)."""
        found = []
        for tile in self.tiles:
            off = self.offsets[tile.key]
            ranges = [_tile_range(o, n, a, b) for o, n, a, b in zip(off, tile.shape, lo, hi, strict=True)]
            if any(b <= a for a, b in ranges):
                continue
            valid_weight = None
            if tile.valid is not None:
                valid_weight = _validity_weight(tile, off, ranges, self.voxel, self.blend_width_um)
                if valid_weight is not None and not valid_weight.any():
                    continue  # only the tile's empty wedges reach this block
            found.append((tile, off, ranges, valid_weight))
        return found

    def _border_weight(self, tile: Tile, off: np.ndarray, ranges) -> np.ndarray:
        """The product over axes of the cosine ramps from the tile's borders, on grid ``ranges``."""
        w = None
        for axis, ((a, b), o, n, v) in enumerate(zip(ranges, off, tile.shape, self.voxel, strict=True)):
            u = np.arange(a, b) - o
            dist = np.clip(np.minimum(u, n - 1 - u), 0.0, None) * v
            shape_axis = [1, 1, 1]
            shape_axis[axis] = b - a
            ramp = _ramp(dist, self.blend_width_um).astype(np.float32).reshape(shape_axis)
            w = ramp if w is None else w * ramp
        return w

    def block(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """The fused block ``[lo, hi)`` (grid voxels), in the output dtype."""
        shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
        out = np.zeros(shape, np.float32)
        parts = self._contributions(lo, hi)
        if len(parts) == 1:  # one tile: the weighted mean is its value wherever its weight is > 0
            tile, off, ranges, valid_weight = parts[0]
            inner = tuple(slice(a - l0, b - l0) for (a, b), l0 in zip(ranges, lo, strict=True))
            values = _sample(tile, off, ranges)
            if valid_weight is None:
                out[inner] = values
            else:
                np.multiply(values, valid_weight > 0, out=out[inner])
            del values
        elif parts:
            weight = np.zeros(shape, np.float32)
            for tile, off, ranges, valid_weight in parts:
                w = self._border_weight(tile, off, ranges)
                if valid_weight is not None:
                    w = w * valid_weight
                inner = tuple(slice(a - l0, b - l0) for (a, b), l0 in zip(ranges, lo, strict=True))
                # not in place: a sample without interpolation may be a view of the tile's data
                out[inner] += _sample(tile, off, ranges) * w
                weight[inner] += w
                del w
            np.divide(out, weight, out=out, where=weight > 0)  # elsewhere out is 0: nothing was added there
            del weight
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            np.rint(out, out=out)
            np.clip(out, info.min, info.max, out=out)
        return out.astype(self.dtype, copy=False)

    def store(self, lo: Sequence[int], hi: Sequence[int]) -> None:
        """Compute the block ``[lo, hi)`` (one chunk of the output) and write it to the Zarr array."""
        block = self.block(lo, hi)
        if self._array is None:
            with self.lock:
                if self._array is None:
                    self._array = zarr.open_array(self.store_path, mode="r+")
        self._array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = block


def fuse_to_zarr(
    tiles: Sequence[Tile],
    positions_um: Mapping[str, Sequence[float]],
    voxel_size_um,
    out_path: str | Path,
    blend_width_um: float = 2.0,
    chunks: tuple[int, int, int] = (32, 128, 128),
    dtype=np.float32,
    scheduler: str = "threads",
    progress: Callable[[int, int], None] | bool | None = None,
    max_memory_gb: float | None = None,
    client=None,
    threads: int | None = None,
) -> Path:
    """Fuse tiles at given positions into one ZYX Zarr v3 array, chunk by chunk.

    Every tile is resampled onto the common grid (:func:`fused_extent`) by linear interpolation (sub-voxel
    offsets) and overlaps are blended by a weighted mean: a tile's weight is the product over axes of a cosine
    ramp rising from (almost) 0 at its border to 1 at ``blend_width_um`` inside, so seams are smooth and never
    darker than the tiles. A tile with a validity mask (``Tile.valid``) has weight 0 on its invalid voxels
    (and wherever interpolation would read one), times a cosine ramp of the distance to the nearest invalid
    voxel over ``blend_width_um``, so that the empty wedges of a deskewed tile never darken another tile's
    data. Voxels covered by no tile's valid data are 0.

    The fused volume is never held in memory: each task computes one output chunk from the tile windows that
    cover it and writes it to the store; tasks are submitted in batches, so the list of tasks (or the dask
    graph) stays small too. With ``max_memory_gb`` the number of chunks computed at once is bounded so that
    this process stays within the budget: the memory it holds when fusion starts (interpreter, libraries,
    tiles held in memory) plus, per chunk in flight, an upper estimate of one chunk's working set
    (accumulators, the tile windows read, as decoded from disk, and the validity mask's distance transform
    over the chunk plus the blending halo), with a 20 % margin. Tiles given by ``path`` (``data=None``) are
    read window by window, so the tiles need not fit in memory; tiles given as arrays count as already held.

    Parameters
    ----------
    tiles:
        The tiles (their ``origin_um`` is ignored; ``positions_um`` is used).
    positions_um:
        Tile key -> origin ``(z, y, x)`` µm, e.g. from :func:`positions_from_transforms`.
    voxel_size_um:
        ``(dz, dy, dx)`` µm, shared by all tiles and the output.
    out_path:
        Directory of the Zarr store to write (replaced atomically when complete).
    blend_width_um:
        Width (µm) of the blending ramp at each tile border; 0 gives a plain mean in overlaps.
    chunks:
        Chunk shape (voxels) of the output array, also the unit of work.
    dtype:
        Output dtype; integer dtypes are rounded and clipped.
    scheduler:
        Where the chunks run without ``client``: ``"threads"`` (a thread pool of this process, one thread per
        CPU or as many as the memory budget allows), ``"synchronous"`` (one after the other in the calling
        thread); any other dask scheduler name or ``get`` function runs them through ``dask.compute``, without
        a memory budget (``"processes"`` copies tile data per task).
    progress:
        ``callable(done, total)`` called in this process after each chunk is stored (any local scheduler),
        or True for progress lines on the ``llsmflow.stitch`` logger (level INFO, at most one every 10 s, with
        the time left; :func:`llsmflow.progress.progress_logger`).
    max_memory_gb:
        Memory budget (GiB) of this process while fusing, or None for no bound (one chunk per core in
        flight). The threads or synchronous scheduler is then required. Ignored with ``client`` (the workers
        have their own memory limits).
    client:
        A ``distributed.Client`` (e.g. from :func:`llsmflow.cluster.dask_cluster`): chunks are computed on its
        workers, which must see the tiles' files and ``out_path`` (a shared file system). Default: ``scheduler``
        in this process.
    threads:
        Chunks computed at once in this process (``"threads"`` or another local dask scheduler), at most; None:
        one per CPU the process may run on (:func:`llsmflow.parallel.available_cpus`). A workflow job passes
        the rule's ``threads``, which its memory request and a local run's core accounting assume (a SLURM
        node that does not confine a job to its CPUs would otherwise see one thread per node CPU).

    Returns
    -------
    Path
        ``out_path``. The array's attributes hold ``origin_um`` and ``voxel_size_um`` (z, y, x, µm).

    Raises
    ------
    LlsmflowError
        On missing or invalid positions, chunks or blending width, or a budget too small for one chunk (the
        message gives the figures).
    """
    tiles = _check_tiles(tiles)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise LlsmflowError(f"threads={threads!r} is invalid; expected a whole number >= 1 or None (every CPU)")
    voxel = np.array(_voxel3(voxel_size_um))
    missing = [t.key for t in tiles if t.key not in positions_um]
    if missing:
        raise LlsmflowError(f"no position for tile(s) {', '.join(missing)}; expected one per tile")
    positions = {t.key: np.asarray(positions_um[t.key], dtype=float) for t in tiles}
    for key, p in positions.items():
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise LlsmflowError(
                f"tile {key!r}: position {positions_um[key]!r} invalid; expected finite (z, y, x) µm"
            )
    if not (blend_width_um >= 0):
        raise LlsmflowError(
            f"blend_width_um={blend_width_um!r} is invalid; expected a non-negative number of µm"
        )
    if max_memory_gb is not None and not (max_memory_gb > 0 and math.isfinite(max_memory_gb)):
        raise LlsmflowError(f"max_memory_gb={max_memory_gb!r} is invalid; expected a positive number of GiB")
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise LlsmflowError(f"chunks {chunks} invalid; expected three positive voxel counts")
    dtype = np.dtype(dtype)
    origin, shape = fused_extent(positions, {t.key: t.shape for t in tiles}, voxel)
    offsets = {k: (p - np.array(origin)) / voxel for k, p in positions.items()}
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
    grid = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    n_blocks = math.prod(len(g) for g in grid)
    if client is not None:
        from llsmflow.parallel import client_threads

        workers, figures = client_threads(client), {}
    else:
        if blend_width_um > 0 and any(t.valid is not None for t in tiles):
            # the blend weights of masked tiles need SciPy's distance transform: imported before the memory in
            # use is measured for the budget (about 18 MiB resident), not by the first chunk that needs it
            import scipy.ndimage  # noqa: F401
        workers, figures = _plan_workers(
            max_memory_gb,
            _block_bytes(tiles, chunks, voxel, float(blend_width_um), dtype) if max_memory_gb else 0,
            scheduler,
            1 if scheduler in _SYNCHRONOUS else threads or available_cpus(),
        )
    detail = ""
    if figures:
        detail = " (budget {budget_gb:.2f} GiB, {in_use_gb:.2f} GiB in use, about {per_chunk_gb:.3f} GiB per chunk)"
        detail = detail.format(**figures)
    log.info(
        "fusing %d tiles into %s voxels, %d chunks of %s, %d at once%s",
        len(tiles),
        shape,
        n_blocks,
        chunks,
        workers,
        detail,
    )
    fuser = _Fuser(tiles, offsets, voxel, float(blend_width_um), dtype)
    if progress is True:
        progress = progress_logger(log, "fused chunk")
    elif not callable(progress):
        progress = None
    attrs = {
        "origin_um": list(origin),
        "voxel_size_um": [float(v) for v in voxel],
        "axes": ["z", "y", "x"],
        "unit": "micrometer",
        "tiles": {k: list(map(float, p)) for k, p in positions.items()},
    }
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        zarr.create_array(
            store=str(tmp),
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            attributes=attrs,
            zarr_format=3,
        )
        fuser.store_path = str(tmp)
        if client is not None:
            _fuse_on(client, fuser, grid, chunks, shape, n_blocks, max(64, 8 * workers), progress)
            return out_path
        # C order: neighbouring chunks read neighbouring tile windows; batches keep the chunks in flight (and
        # the list of them) small however large the volume
        blocks = (
            (lo, tuple(min(a + c, n) for a, c, n in zip(lo, chunks, shape, strict=True)))
            for lo in itertools.product(*grid)
        )
        batch = max(64, 8 * workers)
        if scheduler in _THREADS or scheduler in _SYNCHRONOUS:  # workers: 1 for "synchronous"
            _fuse_here(fuser, blocks, n_blocks, workers, batch, progress)
        else:
            _fuse_with_dask(fuser, blocks, n_blocks, scheduler, workers, batch, progress)
    return out_path


def _fuse_here(fuser, blocks: Iterator, n_blocks: int, threads: int, batch: int, progress) -> None:
    """Compute and store every chunk in this process: on ``threads`` threads, at most ``batch`` chunks submitted
    at once, or in the calling thread for one thread. ``progress`` is called in the calling thread.

    On a failure the chunks not started are cancelled and those running are waited for before the error is
    raised, so that none writes into the temporary store after :func:`atomic_output` has removed it.
    """
    done = 0
    if threads == 1:
        for lo, hi in blocks:
            fuser.store(lo, hi)
            done += 1
            if progress is not None:
                progress(done, n_blocks)
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="llsmflow-fuse")
    try:
        pending = {pool.submit(fuser.store, lo, hi) for lo, hi in itertools.islice(blocks, batch)}
        while pending:
            finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                future.result()  # re-raises a chunk's error here
                done += 1
                if progress is not None:
                    progress(done, n_blocks)
            pending |= {pool.submit(fuser.store, lo, hi) for lo, hi in itertools.islice(blocks, len(finished))}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fuse_with_dask(
    fuser, blocks: Iterator, n_blocks: int, scheduler, workers: int, batch: int, progress
) -> None:
    """Compute and store every chunk with ``dask.compute`` on a local dask ``scheduler`` (a name or a ``get``
    function), ``batch`` chunks per graph; ``progress`` is called in this process after each stored chunk."""
    import dask
    from dask.base import named_schedulers
    from dask.callbacks import Callback

    class ChunkCounter(Callback):
        def __init__(self, prefix: str):
            super().__init__()
            self.prefix, self.done = prefix, 0

        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(key, str) and key.startswith(self.prefix):
                self.done += 1
                progress(self.done, n_blocks)

    store = dask.delayed(fuser.store, pure=False)
    prefix = f"llsmflow-fuse-{uuid.uuid4().hex}-"
    # the scheduler's function rather than its name: given a name, dask imports distributed (0.1-0.2 s) only to
    # look for a client, and there is none here
    local_scheduler = named_schedulers.get(scheduler, scheduler)
    with contextlib.ExitStack() as stack:
        if progress is not None:
            stack.enter_context(ChunkCounter(prefix))
        for first in range(0, n_blocks, batch):
            tasks = [
                store(lo, hi, dask_key_name=f"{prefix}{first + i}")
                for i, (lo, hi) in enumerate(itertools.islice(blocks, batch))
            ]
            dask.compute(*tasks, scheduler=local_scheduler, num_workers=workers)


def _fuse_on(client, fuser, grid, chunks, shape, n_blocks: int, batch: int, progress) -> None:
    """Compute and store every chunk on a distributed client, ``batch`` chunks in flight at most."""
    from distributed import as_completed

    remote = client.scatter(fuser, broadcast=True, hash=False)  # sent to each worker once, not per task
    prefix = f"llsmflow-fuse-{uuid.uuid4().hex}-"
    starts = itertools.product(*grid)
    done = 0

    def submit(index, lo):
        hi = tuple(min(a + c, n) for a, c, n in zip(lo, chunks, shape, strict=True))
        return client.submit(_Fuser.store, remote, lo, hi, key=f"{prefix}{index}", pure=False)

    pending = as_completed([submit(i, lo) for i, lo in enumerate(itertools.islice(starts, batch))])
    submitted = min(batch, n_blocks)
    for future in pending:
        future.result()  # re-raises a worker's error here
        done += 1
        if progress is not None:
            progress(done, n_blocks)
        nxt = next(starts, None)
        if nxt is not None:
            pending.add(submit(submitted, nxt))
            submitted += 1
