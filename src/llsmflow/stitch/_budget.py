"""The memory model of fusion: an upper estimate of one output chunk's working set, and how many chunks a
memory budget lets :func:`llsmflow.stitch.fusion.fuse_to_zarr` compute at once.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llsmflow.errors import LlsmflowError

if TYPE_CHECKING:
    from llsmflow.stitch.tiles import Tile

# Working-set model of one block (see _block_bytes), in bytes per voxel; checked against tracemalloc peaks in
# tests/test_stitch.py. Block voxels: the two float32 accumulators, the tile's weight, its weighted values,
# the result cast to the output dtype. Window voxels (the block plus the one voxel linear interpolation reads
# beyond it): the window as read, its float32 copy and the temporaries of interpolation along each axis.
# Mask voxels (the window plus the blending halo, on one plane along axes where the mask is constant): the
# Euclidean distance transform's feature transform and distances, and the ramp's float64 temporaries.
_BLOCK_BYTES_PER_VOXEL = 20
_WINDOW_BYTES_PER_VOXEL = 16
_MASK_BYTES_PER_VOXEL = 52
# Resident memory per byte allocated at the peak: the allocator keeps freed blocks and one arena per thread, so
# a process's resident memory runs above what numpy allocates (measured: 1.2-1.3x, bench/bench_fusion.py).
_RESIDENT_PER_ALLOCATED = 1.5
# Share of the budget left after what the process holds that chunks may take; the rest is for the task
# bookkeeping, the Zarr store's buffers and open files.
_BUDGET_SAFETY = 0.8


def _current_rss_bytes() -> int:
    """Resident memory of this process now, in bytes (/proc on Linux; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _read_bytes(tile: Tile, window: Sequence[int]) -> int:
    """Bytes decoded to read a window of ``window`` voxels from a tile on disk: every chunk (TIFF strip or
    tile, Zarr chunk) the window touches, counting one chunk more per axis for an unaligned window."""
    if tile.data is not None:
        return 0
    array = tile.array()
    chunks = getattr(array, "chunks", None)
    itemsize = np.dtype(getattr(array, "dtype", np.float32)).itemsize
    if not chunks or len(chunks) != 3:
        return 0  # read whole into memory by _open_lazy: already resident
    extent = [min(n, (math.ceil(w / c) + 1) * c) for w, c, n in zip(window, chunks, tile.shape, strict=True)]
    return math.prod(extent) * itemsize


def _block_bytes(
    tiles: Sequence[Tile], chunks: Sequence[int], voxel: np.ndarray, blend_width_um: float, dtype
) -> int:
    """Upper estimate (bytes) of the resident memory that computing and storing one output chunk takes.

    The allocations at the chunk's peak (see the ``_*_BYTES_PER_VOXEL`` constants for what each term holds)
    times ``_RESIDENT_PER_ALLOCATED``. Tiles are added into the block one after the other, so the tile term is
    the largest over the tiles, not their sum.
    """
    n = math.prod(chunks)
    itemsize = np.dtype(dtype).itemsize
    block = (_BLOCK_BYTES_PER_VOXEL + 2 * itemsize) * n  # + the chunk's encoded copy on its way to the store
    halo = [int(math.ceil(blend_width_um / v)) + 1 if blend_width_um > 0 else 0 for v in voxel]
    largest = 0
    for tile in tiles:
        window = [min(c + 1, s) for c, s in zip(chunks, tile.shape, strict=True)]
        source_itemsize = np.dtype(getattr(tile.array(), "dtype", np.float32)).itemsize
        cost = (_WINDOW_BYTES_PER_VOXEL + source_itemsize) * math.prod(window) + _read_bytes(tile, window)
        if tile.valid is not None:
            outer = [min(w + 2 * h, s) for w, h, s in zip(window, halo, tile.shape, strict=True)]
            strides = getattr(tile.valid, "strides", None)
            if strides is not None:  # a broadcast view: the mask is constant along its zero-stride axes
                outer = [1 if st == 0 else o for o, st in zip(outer, strides, strict=True)]
            cost += _MASK_BYTES_PER_VOXEL * math.prod(outer) + math.prod(window)
        largest = max(largest, cost)
    return int(_RESIDENT_PER_ALLOCATED * (block + largest))


# dask's names of its local schedulers that run in this process: a thread pool, or the calling thread (the only
# ones a memory budget of this process can bound)
THREADS = ("threads", "threading")
SYNCHRONOUS = ("synchronous", "sync", "single-threaded")


def _plan_workers(
    max_memory_gb: float | None, per_block: int, scheduler: str, requested: int
) -> tuple[int, dict[str, float]]:
    """Number of chunks to compute at once under a memory budget, and the figures it rests on."""
    if max_memory_gb is None:
        return requested, {}
    if scheduler not in THREADS + SYNCHRONOUS:
        raise LlsmflowError(
            f"max_memory_gb={max_memory_gb!r} bounds the memory of this process, but the {scheduler!r} scheduler "
            "may start others; expected scheduler='threads' or 'synchronous' with a memory budget"
        )
    budget = float(max_memory_gb) * 2**30
    in_use = _current_rss_bytes()
    available = _BUDGET_SAFETY * (budget - in_use)
    figures = {
        "budget_gb": budget / 2**30,
        "in_use_gb": in_use / 2**30,
        "per_chunk_gb": per_block / 2**30,
    }
    if available < per_block:
        raise LlsmflowError(
            f"max_memory_gb={max_memory_gb:g} leaves {max(available, 0) / 2**20:.0f} MiB for fusion after the "
            f"{in_use / 2**20:.0f} MiB this process already holds (and a {1 - _BUDGET_SAFETY:.0%} margin), "
            f"but one chunk needs about {per_block / 2**20:.0f} MiB; expected a larger budget or smaller chunks"
        )
    return max(1, min(requested, int(available // per_block))), figures
