"""Fusion in this process without dask (issue 18): the thread pool and the synchronous path give the very volume
that ``dask.compute`` gives, report progress for every chunk, and on a failure leave nothing behind; the fuse
job's imports stay free of dask.

The reference is dask's own threaded and synchronous schedulers, reached through ``fuse_to_zarr``'s dask path
(a dask ``get`` function as ``scheduler``), on a 2 x 2 mosaic of deskewed-looking tiles (validity wedges, so
the blend weights' distance transform runs) at sub-voxel positions. The client path against this one:
``tests/test_hpc.py::test_fusion_on_a_client_equals_in_process``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from dask import get as dask_synchronous_get
from dask.threaded import get as dask_threaded_get

from llsmflow.errors import LlsmflowError
from llsmflow.stitch import Tile, fuse_to_zarr, fusion, read_fused

VOXEL = (0.5, 0.25, 0.25)  # (dz, dy, dx) µm
SHAPE = (12, 40, 48)
CHUNKS = (8, 16, 16)


def _wedge_mosaic() -> list[Tile]:
    rng = np.random.default_rng(3)
    nz, _, nx = SHAPE
    z, x = np.arange(nz)[:, None], np.arange(nx)[None, :]
    plane = ((x >= 1.5 * z) & (x < nx - int(1.5 * (nz - 1)) + 1.5 * z))[:, None, :]
    step = [0.85 * (n - 1) * v for n, v in zip(SHAPE[1:], VOXEL[1:], strict=True)]
    return [
        Tile(
            f"m{i}",
            (0.11 * i, iy * step[0] + 0.07 * i, ix * step[1] - 0.05 * i),
            None,
            data=(rng.poisson(120.0, SHAPE) * plane).astype(np.uint16),
            valid=np.broadcast_to(plane, SHAPE),
        )
        for i, (iy, ix) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])
    ]


@pytest.fixture(scope="module")
def mosaic():
    tiles = _wedge_mosaic()
    return tiles, {t.key: t.origin_um for t in tiles}


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_local_paths_match_dask_bit_for_bit(mosaic, tmp_path, dtype, monkeypatch):
    monkeypatch.setattr(fusion, "available_cpus", lambda: 4)  # the thread pool, however many CPUs CI has
    tiles, positions = mosaic
    results, progress = {}, {}
    for name, scheduler in [
        ("dask-threads", dask_threaded_get),
        ("dask-sync", dask_synchronous_get),
        ("threads", "threads"),
        ("synchronous", "synchronous"),
        ("budget", "threads"),
    ]:
        calls = []
        out = fuse_to_zarr(
            tiles,
            positions,
            VOXEL,
            tmp_path / f"{name}.zarr",
            chunks=CHUNKS,
            dtype=dtype,
            scheduler=scheduler,
            progress=lambda done, total, calls=calls: calls.append((done, total, threading.get_ident())),
            max_memory_gb=64.0 if name == "budget" else None,
        )
        results[name], progress[name] = read_fused(out), calls
    reference, origin, voxel = results["dask-threads"]
    assert reference.dtype == dtype and reference.max() > 0 and np.any(reference == 0)  # data and wedges
    for name, (data, o, v) in results.items():
        assert data.dtype == reference.dtype and o == origin and v == voxel, name
        np.testing.assert_array_equal(data, reference, err_msg=name)
        total = progress[name][0][1]
        assert [c[:2] for c in progress[name]] == [(i, total) for i in range(1, total + 1)], name
    # every chunk of the fused grid reported once
    assert total == math.prod(-(-n // c) for n, c in zip(reference.shape, CHUNKS, strict=True)) > 8
    main = threading.get_ident()
    assert all(c[2] == main for c in progress["threads"] + progress["synchronous"])  # in the calling thread


def test_a_failing_chunk_stops_fusion_and_leaves_nothing(mosaic, tmp_path, monkeypatch):
    monkeypatch.setattr(fusion, "available_cpus", lambda: 4)  # chunks running on several threads at once
    tiles, positions = mosaic
    running, calls, lock = [0], [0], threading.Lock()

    def failing_tile(tile):
        """The tile whose data's fifth window read (counted over all tiles) fails, others still running."""
        data = tile.data

        class Reader:
            shape, dtype, ndim = data.shape, data.dtype, data.ndim

            def __getitem__(self, index):
                with lock:
                    calls[0] += 1
                    running[0] += 1
                    n = calls[0]
                try:
                    if n == 5:
                        raise OSError("disk gone")
                    return data[index]
                finally:
                    with lock:
                        running[0] -= 1

        return Tile(tile.key, tile.origin_um, None, data=Reader(), valid=tile.valid)

    broken = [failing_tile(t) for t in tiles]
    out = tmp_path / "broken.zarr"
    with pytest.raises(OSError, match="disk gone"):
        fuse_to_zarr(broken, positions, VOXEL, out, chunks=CHUNKS, scheduler="threads")
    assert running[0] == 0  # no chunk still reading when the error reached the caller
    assert not out.exists() and not list(tmp_path.iterdir())  # nor a partial store, nor its temporary name
    with pytest.raises(LlsmflowError, match="'processes' scheduler"):
        fuse_to_zarr(tiles, positions, VOXEL, out, scheduler="processes", max_memory_gb=64)


def test_threads_bound_the_chunks_in_flight(mosaic, tmp_path, monkeypatch):
    """``threads`` (the fuse rule's threads in a job) bounds the threads whatever the CPU count: one runs every
    chunk in the calling thread, three on pool threads; the result is the same."""
    monkeypatch.setattr(fusion, "available_cpus", lambda: 64)  # a large node that does not confine the job
    tiles, positions = mosaic
    results = {}
    for threads in (1, 3):
        seen = set()

        def reading(tile, seen=seen):
            data = tile.data

            class Reader:
                shape, dtype, ndim = data.shape, data.dtype, data.ndim

                def __getitem__(self, index):
                    seen.add(threading.get_ident())
                    return data[index]

            return Tile(tile.key, tile.origin_um, None, data=Reader(), valid=tile.valid)

        out = fuse_to_zarr(
            [reading(t) for t in tiles], positions, VOXEL, tmp_path / f"t{threads}.zarr", chunks=CHUNKS,
            threads=threads,
        )  # fmt: skip
        results[threads] = (read_fused(out)[0], seen)
    np.testing.assert_array_equal(results[1][0], results[3][0])
    assert results[1][1] == {threading.get_ident()}
    assert threading.get_ident() not in results[3][1] and 1 <= len(results[3][1]) <= 3
    with pytest.raises(LlsmflowError, match="threads=0 is invalid"):
        fuse_to_zarr(tiles, positions, VOXEL, tmp_path / "bad.zarr", threads=0)


def test_fuse_job_imports_no_dask():
    """The fuse script's imports and a fusion of deskewed tiles import neither dask nor distributed."""
    code = textwrap.dedent(
        """
        import sys, tempfile
        from llsmflow.hpc.cluster import dask_cluster
        from llsmflow.stitch.fusion import fuse_to_zarr
        from llsmflow.stitch.tiles import tile_from_deskewed
        from llsmflow.stitch.transforms import positions_from_transforms, read_transforms
        assert 'scipy.ndimage' not in sys.modules, 'imported before a blend weight needs it'
        import numpy as np
        from llsmflow.stitch import Tile
        plane = np.zeros((4, 1, 16), bool)
        plane[:, :, 2:14] = True
        valid = np.broadcast_to(plane, (4, 16, 16))
        tiles = [Tile(k, (0.0, 0.0, x), None, data=np.ones((4, 16, 16), np.float32), valid=valid)
                 for k, x in (("a", 0.0), ("b", 1.0))]
        with dask_cluster({"cluster": "local"}) as client, tempfile.TemporaryDirectory() as tmp:
            assert client is None
            fuse_to_zarr(tiles, {"a": (0, 0, 0), "b": (0, 0, 1.0)}, (0.2, 0.1, 0.1), tmp + "/f.zarr")
        bad = sorted(m for m in ("dask", "distributed", "dask_jobqueue", "pandas", "matplotlib") if m in sys.modules)
        assert not bad, bad
        assert 'scipy.ndimage' in sys.modules  # the wedges' blend weights did need it
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)

