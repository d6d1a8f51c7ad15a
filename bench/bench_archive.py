"""Archive writing speed: llsmflow.archive.write_ome_zarr against a plain Zarr v3 write of the same array.

For each TCZYX array (by default the demo's fused size, 5×2×40×175×230 float32, and a larger
3×2×64×512×512 uint16 one), held in memory and wrapped as a dask array so that only writing is timed:

- write_ome_zarr with its defaults (NGFF 0.5 / zarr v3, chunks (1, 1, 32, 256, 256), Blosc-zstd level 5 with
  bit-shuffle, a block-mean pyramid down to < 64 px laterally, contrast windows from the written data,
  OME metadata; written to a temporary directory renamed into place);
- write_ome_zarr with ``n_levels=1``: the same without the pyramid;
- a plain zarr v3 write of level 0 only (``zarr.create_array`` + ``dask.array.store``), same chunks and
  compressor, on the same number of threads;
- the same plain write uncompressed.

The ratio archive / plain says what the archive's extras cost: the pyramid (its levels are computed and
compressed too), the contrast windows (a read-back of one level) and the metadata. Sizes on disk are
reported too. Each time is the best of ``--repeats`` (common.best_of); each write goes to a fresh directory
under a temporary directory that is removed at the end.

Data: Poisson-noise background with bright Gaussian spots (the float array is scaled like deconvolved
data), so that it compresses about as real data do, unlike uniform random numbers.

Run: .venv/bin/python bench/bench_archive.py [--demo-shape 5 2 40 175 230] [--large-shape 3 2 64 512 512]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, record  # noqa: E402

import llsmflow.archive.ome_zarr as la  # noqa: E402
from llsmflow.archive import pyramid_factors, write_ome_zarr  # noqa: E402

VOXEL_UM = (0.157, 0.104, 0.104)
CHUNKS_ZYX = (32, 256, 256)  # write_ome_zarr's default


def synthetic(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    """Poisson background (mean 100 counts) plus 20 bright spots per volume, as ``dtype``."""
    rng = np.random.default_rng(seed)
    data = rng.poisson(100.0, shape).astype(np.float32)
    n_t, n_c, n_z, n_y, n_x = shape
    zz, yy, xx = (np.arange(s, dtype=np.float32) for s in (n_z, n_y, n_x))
    for t, c in itertools.product(range(n_t), range(n_c)):
        for _ in range(20):
            z0, y0, x0 = rng.uniform(0, n_z), rng.uniform(0, n_y), rng.uniform(0, n_x)
            z = np.exp(-0.5 * ((zz - z0) / 1.5) ** 2)[:, None, None]
            y = np.exp(-0.5 * ((yy - y0) / 1.5) ** 2)[None, :, None]
            x = np.exp(-0.5 * ((xx - x0) / 1.5) ** 2)[None, None, :]
            data[t, c] += 2000.0 * z * y * x
    if np.dtype(dtype).kind == "f":
        return (data / 1000.0).astype(dtype)  # deconvolved-like float scale
    return np.clip(np.rint(data), 0, np.iinfo(dtype).max).astype(dtype)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def plain_write(path: Path, image: da.Array, chunks: tuple[int, ...], compressed: bool) -> None:
    """Level 0 only, zarr v3, same chunks and compressor as the archive, on the same thread count."""
    compressors = [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")] if compressed else None
    target = zarr.create_array(
        store=str(path),
        shape=image.shape,
        chunks=chunks,
        dtype=image.dtype,
        compressors=compressors,
        zarr_format=3,
    )
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    da.store(image.rechunk(chunks), target, lock=False, scheduler="threads", num_workers=workers)


def bench_one(
    label: str, shape: tuple[int, ...], dtype: str, tmp: Path, repeats: int
) -> list[tuple[str, str]]:
    array = synthetic(shape, dtype)
    chunks = (1, 1, *(min(c, s) for c, s in zip(CHUNKS_ZYX, shape[2:], strict=True)))
    image = da.from_array(array, chunks=chunks)
    counter = itertools.count()
    paths: dict[str, Path] = {}

    def fresh(kind: str) -> Path:
        paths[kind] = tmp / f"{label}-{kind}-{next(counter)}.ome.zarr"
        return paths[kind]

    names = [f"ch{c}" for c in range(shape[1])]

    contrast: list[tuple[float, float]] = []  # (whole write, contrast windows inside it), per archive write

    def archive_full():
        # Time the contrast-window read-back inside the write (skipped if the helper is renamed).
        original = getattr(la, "_contrast_windows", None)
        spent = [0.0]

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        if original is not None:
            la._contrast_windows = timed
        try:
            start = time.perf_counter()
            write_ome_zarr(fresh("archive"), image, VOXEL_UM, 2.0, names)
            contrast.append((time.perf_counter() - start, spent[0]))
        finally:
            if original is not None:
                la._contrast_windows = original

    def archive_level0():
        write_ome_zarr(fresh("archive1"), image, VOXEL_UM, 2.0, names, n_levels=1)

    def plain():
        plain_write(fresh("plain"), image, chunks, compressed=True)

    def plain_raw():
        plain_write(fresh("raw"), image, chunks, compressed=False)

    archive_full()  # warm-up: imports, thread pools
    shutil.rmtree(paths["archive"])
    contrast.clear()
    times = {}
    for kind, func in (
        ("archive", archive_full),
        ("archive1", archive_level0),
        ("plain", plain),
        ("raw", plain_raw),
    ):
        times[kind] = best_of(func, repeats)
    sizes = {kind: du(path) for kind, path in paths.items()}
    for path in tmp.iterdir():
        shutil.rmtree(path, ignore_errors=True)

    t_contrast = min(contrast)[1]  # in the fastest archive write
    levels = pyramid_factors(shape[2:], VOXEL_UM)
    mb = array.nbytes / 1e6
    name = f"{label} {tuple(shape)} {dtype}"
    return [
        (f"**{name}**", f"{mb:.0f} MB in memory, {len(levels)} pyramid levels"),
        (
            "write_ome_zarr (pyramid, contrast, metadata)",
            f"{times['archive']:.2f} s ({mb / times['archive']:.0f} MB/s)",
        ),
        ("↳ of which contrast windows (read-back of one level)", f"{t_contrast:.2f} s"),
        ("write_ome_zarr, n_levels=1", f"{times['archive1']:.2f} s"),
        ("plain zarr v3, level 0, blosc-zstd", f"{times['plain']:.2f} s ({mb / times['plain']:.0f} MB/s)"),
        ("plain zarr v3, level 0, uncompressed", f"{times['raw']:.2f} s ({mb / times['raw']:.0f} MB/s)"),
        ("ratio archive / plain compressed", f"{times['archive'] / times['plain']:.2f}"),
        ("ratio archive (n_levels=1) / plain compressed", f"{times['archive1'] / times['plain']:.2f}"),
        ("ratio archive / plain uncompressed", f"{times['archive'] / times['raw']:.2f}"),
        (
            "on disk: archive / level 0 compressed / uncompressed",
            f"{sizes['archive'] / 1e6:.1f} / {sizes['plain'] / 1e6:.1f} / {sizes['raw'] / 1e6:.1f} MB",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-shape", type=int, nargs=5, default=(5, 2, 40, 175, 230), metavar="N")
    parser.add_argument("--demo-dtype", default="float32")
    parser.add_argument("--large-shape", type=int, nargs=5, default=(3, 2, 64, 512, 512), metavar="N")
    parser.add_argument("--large-dtype", default="uint16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llsmflow-bench-archive-"))
    try:
        rows = bench_one("demo", tuple(args.demo_shape), args.demo_dtype, tmp, args.repeats)
        rows += bench_one("large", tuple(args.large_shape), args.large_dtype, tmp, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    threads = dask.config.get("num_workers", None) or os.cpu_count()
    notes = (
        f"Best of {args.repeats}; dask threaded scheduler with {threads} threads for every variant. The archive "
        "also computes and writes every pyramid level (block means), reads back one level for the contrast "
        "windows and writes the OME metadata; n_levels=1 isolates the pyramid's share. Edge chunks are stored "
        "whole, so uncompressed size on disk exceeds the array's when a size is not a multiple of the chunk."
    )
    command = (
        "python bench/bench_archive.py "
        f"--demo-shape {' '.join(map(str, args.demo_shape))} --large-shape {' '.join(map(str, args.large_shape))}"
    )
    title = "Archive writing: write_ome_zarr vs plain zarr v3"
    record(title, command, rows, notes, write=not args.no_record)


if __name__ == "__main__":
    main()
