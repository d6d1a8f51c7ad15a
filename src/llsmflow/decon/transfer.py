"""Whole-array host ⇄ device transfers through pinned (page-locked) host memory, for the CuPy backend.

Why hand-written: CuPy's ``cupy.asarray(numpy_array)`` / ``ndarray.get()`` copy from/to pageable memory, which
the driver stages through its own small pinned buffer at a fraction of the bus's speed (on an H200 node: a
1 GB float32 volume took 0.33 s out, issue 18), and the deconvolution read and wrote volumes in 4 MB slabs on
top of that. Here an array is moved in pieces of ``_PIECE_BYTES`` through two pinned staging buffers kept
for the life of the process: while the GPU's copy engine moves piece ``i`` (asynchronously, on its own
stream), host threads copy piece ``i + 1`` between the caller's array and the other staging buffer, so the
host copy and the bus transfer overlap. An array that is itself in pinned memory (:func:`pinned_empty`,
e.g. a buffer a job reads every raw stack into) is moved in one asynchronous copy, without staging.

The piece bookkeeping is written against a small interface (``_CudaCopies``) so that the tests run it with
host copies standing in for the device (``_HostCopies``); with NumPy as the array module nothing is moved.
"""

from __future__ import annotations

import ctypes
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llsmflow.parallel import available_cpus

# Bytes per piece of a staged transfer (two pinned buffers of this size per direction are kept).
_PIECE_BYTES = 64 << 20
# Host threads that copy a piece between pageable and pinned memory.
_COPY_THREADS = 8

_pool: ThreadPoolExecutor | None = None


def _copy_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_copy_threads(), thread_name_prefix="llsmflow-copy")
    return _pool


def _copy_threads() -> int:
    return max(1, min(_COPY_THREADS, available_cpus()))


def _parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for flat uint8 arrays of equal size, split over the copy threads (NumPy's copy
    releases the GIL, so the pieces run at once)."""
    n = dst.size
    parts = max(1, min(_copy_threads(), n // (1 << 20)))
    if parts == 1:
        np.copyto(dst, src)
        return
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    futures = [_copy_pool().submit(np.copyto, dst[a:b], src[a:b]) for a, b in pairs]
    for future in futures:
        future.result()


def _flat_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


class _CudaCopies:
    """The device side of a staged transfer, with CuPy: pinned buffers, one stream, events."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        # a blocking stream: ordered after the work queued on the legacy default stream (where CuPy runs
        # unless told otherwise), and that work after it
        self.stream = cupy.cuda.Stream(non_blocking=False)
        self._stages: dict[int, list[np.ndarray]] = {}

    def stages(self, nbytes: int) -> list[np.ndarray]:
        """Two pinned uint8 buffers of ``nbytes`` (kept and reused)."""
        if nbytes not in self._stages:
            self._stages[nbytes] = [pinned_empty((nbytes,), np.uint8) for _ in range(2)]
        return self._stages[nbytes]

    def to_device_async(self, device, offset: int, host: np.ndarray) -> object:
        (device.data + offset).copy_from_host_async(
            ctypes.c_void_p(host.ctypes.data), host.nbytes, self.stream
        )
        event = self.cupy.cuda.Event()
        event.record(self.stream)
        return event

    def to_host_async(self, host: np.ndarray, device, offset: int) -> object:
        (device.data + offset).copy_to_host_async(ctypes.c_void_p(host.ctypes.data), host.nbytes, self.stream)
        event = self.cupy.cuda.Event()
        event.record(self.stream)
        return event

    @staticmethod
    def wait(event) -> None:
        event.synchronize()

    def synchronize(self) -> None:
        self.stream.synchronize()


class _HostCopies:
    """:class:`_CudaCopies` with the "device" a flat NumPy uint8 array and every copy done at once (tests)."""

    def __init__(self):
        self._stages: dict[int, list[np.ndarray]] = {}
        self.pieces = 0

    def stages(self, nbytes: int) -> list[np.ndarray]:
        return self._stages.setdefault(nbytes, [np.empty(nbytes, np.uint8) for _ in range(2)])

    def to_device_async(self, device, offset: int, host: np.ndarray):
        self.pieces += 1
        device[offset : offset + host.nbytes] = host
        return None

    def to_host_async(self, host: np.ndarray, device, offset: int):
        self.pieces += 1
        host[...] = device[offset : offset + host.nbytes]
        return None

    @staticmethod
    def wait(event) -> None:
        pass

    def synchronize(self) -> None:
        pass


_copies: _CudaCopies | None = None


def _cuda_copies() -> _CudaCopies:
    global _copies
    if _copies is None:
        _copies = _CudaCopies()
    return _copies


# Address ranges (start, stop) of the pinned buffers made by pinned_empty in this process. A stale range (its
# buffer freed, the addresses reused by ordinary memory) is harmless: CUDA copies from pageable memory too.
_PINNED: dict[int, int] = {}


def pinned_empty(shape, dtype) -> np.ndarray:
    """A NumPy array in pinned (page-locked) host memory when CuPy and a GPU are there, else ``numpy.empty``.

    Read each raw stack of a job into one such buffer (e.g. ``tifffile.imread(path, out=buffer)``) and
    :func:`to_device` moves it in one copy at the bus's speed. Pinned memory is not swappable: keep few.
    """
    dtype = np.dtype(dtype)
    count = math.prod(int(n) for n in shape)
    try:
        import cupy

        memory = cupy.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
    except Exception:  # no CuPy, no driver, no device: ordinary memory
        return np.empty(shape, dtype=dtype)
    array = np.frombuffer(memory, dtype, count).reshape(shape)
    _PINNED[array.ctypes.data] = array.ctypes.data + array.nbytes
    return array


def _is_pinned(array: np.ndarray) -> bool:
    """Whether ``array``'s memory lies in a buffer from :func:`pinned_empty` (or CUDA reports it page-locked)."""
    start = array.ctypes.data
    stop = start + array.nbytes
    if any(a <= start and stop <= b for a, b in _PINNED.items()):
        return True
    try:
        import cupy

        attributes = cupy.cuda.runtime.pointerGetAttributes(start)
    except Exception:
        return False
    kind = getattr(attributes, "type", getattr(attributes, "memoryType", None))
    return kind == 1  # cudaMemoryTypeHost


def _staged_to_device(host: np.ndarray, device_bytes, copies, piece: int | None = None) -> None:
    """Copy the C-contiguous ``host`` into ``device_bytes`` in pieces, overlapping host staging and DMA."""
    src = _flat_bytes(host)
    n = src.size
    piece = min(piece or _PIECE_BYTES, max(n, 1))
    stages = copies.stages(piece)
    events = [None, None]
    for index, start in enumerate(range(0, n, piece)):
        slot = index % 2
        if events[slot] is not None:
            copies.wait(events[slot])  # the DMA out of this staging buffer is done: it may be refilled
        size = min(piece, n - start)
        stage = stages[slot][:size]
        _parallel_copy(stage, src[start : start + size])
        events[slot] = copies.to_device_async(device_bytes, start, stage)
    copies.synchronize()


def _staged_to_host(device_bytes, host: np.ndarray, copies, piece: int | None = None) -> None:
    """Copy ``device_bytes`` into the C-contiguous ``host`` in pieces, overlapping DMA and host copies."""
    dst = _flat_bytes(host)
    n = dst.size
    piece = min(piece or _PIECE_BYTES, max(n, 1))
    stages = copies.stages(piece)
    pending: list = []  # (event, staging buffer, start): at most two in flight

    def drain() -> None:
        event, stage, at = pending.pop(0)
        copies.wait(event)
        _parallel_copy(dst[at : at + stage.size], stage)

    for index, start in enumerate(range(0, n, piece)):
        if len(pending) == 2:
            drain()  # the oldest used this staging buffer: copy it out before the next DMA refills it
        stage = stages[index % 2][: min(piece, n - start)]
        pending.append((copies.to_host_async(stage, device_bytes, start), stage, start))
    while pending:
        drain()
    copies.synchronize()


def to_device(host, xp, dtype=None):
    """``host`` (a NumPy array) as an array of ``xp``: with CuPy one whole-array transfer through pinned memory
    (:mod:`this module <llsmflow.decon.transfer>`); with NumPy ``host`` itself (no copy).

    ``dtype``: cast on the device after the transfer (moving uint16 camera counts, not float32, halves the
    bytes on the bus)."""
    if xp is np:
        array = np.asarray(host)
        return array if dtype is None else array.astype(dtype, copy=False)
    if not isinstance(host, np.ndarray):
        device = xp.asarray(host)  # already on the device (or a list): CuPy does what is needed
        return device if dtype is None else device.astype(dtype, copy=False)
    host = np.ascontiguousarray(host)
    device = xp.empty(host.shape, dtype=host.dtype)
    xp.cuda.get_current_stream().synchronize()  # the memory may have been freed by work still queued
    copies = _cuda_copies()
    if host.nbytes and _is_pinned(host):
        copies.to_device_async(device, 0, _flat_bytes(host))
        copies.synchronize()
    elif host.nbytes:
        _staged_to_device(host, device, copies)
    return device if dtype is None else device.astype(dtype, copy=False)


def to_host(device, out: np.ndarray | None = None) -> np.ndarray:
    """A device array (or a NumPy array) as a NumPy array, in one whole-array transfer through pinned memory;
    into ``out`` (a C-contiguous NumPy array of the same shape and dtype) when given."""
    if isinstance(device, np.ndarray):
        if out is None:
            return device
        np.copyto(out, device)
        return out
    import cupy

    device = cupy.ascontiguousarray(device)
    cupy.cuda.get_current_stream().synchronize()  # the kernels that computed it are done
    if out is None or not (
        out.flags.c_contiguous and out.dtype == device.dtype and out.shape == device.shape
    ):
        target = np.empty(device.shape, dtype=device.dtype)
    else:
        target = out
    copies = _cuda_copies()
    if target.nbytes and _is_pinned(target):
        copies.to_host_async(_flat_bytes(target), device, 0)
        copies.synchronize()
    elif target.nbytes:
        _staged_to_host(device, target, copies)
    if out is not None and target is not out:
        out[...] = target
        return out
    return target
