"""Fusion benchmarks for llsmflow.stitch.fuse_to_zarr.

1. Throughput: the time to fuse a mosaic into Zarr, as a ratio of the time to write the same output volume
   (same shape, chunks, dtype and codecs) to Zarr from memory with dask (``da.store``, threads). Target: >= 0.5.
   Measured for tiles held in memory (with and without validity masks) and for tiles read lazily from disk.
2. Memory: the peak resident memory (VmHWM) of a child process that fuses, with ``max_memory_gb``, a
   mosaic of tiles stored on disk whose fused volume is at least 4x the budget. Target: peak <= budget.
3. Optionally (``--compare-multiview-stitcher``), the same two measures for ``multiview_stitcher.fusion.fuse``
   writing to Zarr (``output_zarr_url``, chunks fused by a pool of threads), for the evaluation in
   docs/stitching.md.

The tiles look like deskewed light-sheet volumes: float32 Poisson counts on a smooth background inside a
parallelogram in (z, x), zeros in the two wedges beside it (validity masks: one (z, x) plane broadcast along y).
Tile positions have sub-voxel offsets, so every tile is interpolated.

Run: .venv/bin/python bench/bench_fusion.py [--budget-gb 0.5] [--tile-format tiff|zarr]
     [--compare-multiview-stitcher] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402

VOXEL = (0.2, 0.104, 0.104)  # (dz, dy, dx) µm, close to a deskewed LLSM tile
SHEAR_PX = 2.0  # wedge width grows by this many voxels along x per plane
CHUNKS = (32, 128, 128)
BLEND_UM = 2.0


# ------------------------------------------------------------------------------------------------ mosaic


def mask_plane(shape: tuple[int, int, int]) -> np.ndarray:
    """The (z, 1, x) validity plane of a deskewed-looking tile: a parallelogram, wedges either side."""
    nz, _, nx = shape
    wedge = int(SHEAR_PX * (nz - 1))
    x = np.arange(nx)[None, :]
    z = np.arange(nz)[:, None]
    plane = (x >= SHEAR_PX * z) & (x < nx - wedge + SHEAR_PX * z)
    return plane[:, None, :]


def tile_data(shape, seed: int) -> np.ndarray:
    """float32 Poisson counts (mean ~100-160) over a smooth pattern, 0 outside the parallelogram."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z = np.sin(np.arange(nz) / 7.0 + seed)[:, None, None]
    y = np.sin(np.arange(ny) / 23.0 + 2 * seed)[None, :, None]
    x = np.cos(np.arange(nx) / 31.0 + 3 * seed)[None, None, :]
    expected = (100.0 + 20.0 * (z + y * x + 1.0)).astype(np.float32)
    data = rng.poisson(expected).astype(np.float32)
    data *= mask_plane(shape)
    return data


def write_mosaic(directory: Path, grid, shape, overlap: float, fmt: str, seed: int = 0) -> list[dict]:
    """Write ``grid[0] x grid[1]`` tiles (y, x) to ``directory``; return their descriptions."""
    from llsmflow.io import write_volume

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    step = [(1.0 - overlap) * (n - 1) * v for n, v in zip(shape[1:], VOXEL[1:], strict=True)]
    tiles = []
    for iy in range(grid[0]):
        for ix in range(grid[1]):
            index = iy * grid[1] + ix
            jitter = rng.uniform(-0.5, 0.5, 3) * np.array(VOXEL)  # sub-voxel offsets: interpolation
            origin = np.array([0.0, iy * step[0], ix * step[1]]) + jitter
            data = tile_data(shape, seed + index)
            if fmt == "tiff":
                path = write_volume(directory / f"tile{index}.ome.tif", data, VOXEL, compression=None)
            else:
                import zarr

                path = directory / f"tile{index}.zarr"
                array = zarr.create_array(store=str(path), shape=shape, chunks=CHUNKS, dtype=np.float32)
                array[...] = data
            del data
            tiles.append({"key": f"tile{index}", "path": str(path), "origin_um": origin.tolist()})
    return tiles


def fused_shape(tiles: list[dict], shape) -> tuple[int, ...]:
    from llsmflow.stitch import fused_extent

    positions = {t["key"]: t["origin_um"] for t in tiles}
    return fused_extent(positions, {k: shape for k in positions}, VOXEL)[1]


def make_tiles(descriptions, shape, in_memory: bool, masks: bool):
    from llsmflow.stitch import Tile

    valid = np.broadcast_to(mask_plane(shape), shape) if masks else None
    tiles = []
    for d in descriptions:
        if in_memory:
            tile = Tile(
                d["key"],
                d["origin_um"],
                None,
                data=Tile(d["key"], (0, 0, 0), shape, path=d["path"]).read((slice(None),) * 3),
                valid=valid,
            )
        else:
            tile = Tile(d["key"], d["origin_um"], shape, path=d["path"], valid=valid)
        tiles.append(tile)
    return tiles


# ------------------------------------------------------------------------------------ child: one fusion


def rss_now() -> int:
    """Resident memory of this process now (bytes)."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def rss_peak() -> int:
    """Peak resident memory of this process (bytes): VmHWM, the high-water mark of its address space since
    exec. (``ru_maxrss`` would not do: Linux carries the parent's resident memory at fork into it.)"""
    with open("/proc/self/status", encoding="ascii") as fh:
        line = next(line for line in fh if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def child(spec: dict) -> dict:
    """Fuse as ``spec`` says in this (fresh) process; return time and memory figures."""
    import logging

    from llsmflow.stitch import fuse_to_zarr  # imported before measuring: libraries belong to the baseline

    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logging.getLogger("llsmflow.stitch").addHandler(Keep())
    logging.getLogger("llsmflow.stitch").setLevel(logging.INFO)
    if spec["tool"] == "multiview-stitcher":
        import multiview_stitcher.fusion  # noqa: F401
    shape = tuple(spec["shape"])
    before = rss_now()
    start = time.perf_counter()
    if spec["tool"] == "llsmflow":
        tiles = make_tiles(spec["tiles"], shape, in_memory=False, masks=True)
        positions = {t.key: t.origin_um for t in tiles}
        fuse_to_zarr(
            tiles,
            positions,
            VOXEL,
            spec["out"],
            blend_width_um=BLEND_UM,
            chunks=CHUNKS,
            max_memory_gb=spec["budget_gb"],
        )
    else:
        mvs_fuse(spec["tiles"], shape, spec["out"], spec["workers"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before_bytes": before, "peak_rss_bytes": rss_peak(), "log": messages}


def run_child(spec: dict, workdir: Path) -> dict:
    path = workdir / "spec.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child fusion failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- multiview-stitcher


def mvs_fuse(descriptions, shape, out: str, workers: int) -> None:
    """Fuse with multiview-stitcher into Zarr, wedges as NaN (its way of saying 'no data'), chunks by a thread
    pool of ``workers``."""
    from concurrent.futures import ThreadPoolExecutor

    import dask.array as da
    import tifffile
    import zarr
    from multiview_stitcher import fusion, msi_utils
    from multiview_stitcher import spatial_image_utils as si_utils

    plane = da.from_array(mask_plane(shape))
    msims = []
    for d in descriptions:
        store = d["path"] if d["path"].endswith(".zarr") else tifffile.imread(d["path"], aszarr=True)
        data = da.from_zarr(zarr.open_array(store, mode="r"), chunks=CHUNKS)
        data = da.where(plane, data, np.float32(np.nan)).astype(np.float32)
        sim = si_utils.get_sim_from_array(
            data,
            dims=["z", "y", "x"],
            scale=dict(zip("zyx", VOXEL, strict=True)),
            translation=dict(zip("zyx", d["origin_um"], strict=True)),
            transform_key="registered",
        )
        msims.append(msi_utils.get_msim_from_sim(sim, scale_factors=[]))

    def batch(func, block_ids):
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(func, block_ids))

    fusion.fuse(
        msims,
        transform_key="registered",
        output_chunksize=dict(zip("zyx", CHUNKS, strict=True)),
        blending_widths={"z": BLEND_UM, "y": BLEND_UM, "x": BLEND_UM},
        output_zarr_url=out,
        batch_options={"batch_func": batch, "n_batch": 8 * workers},
    )


# ------------------------------------------------------------------------------------------- measures


def plain_write_seconds(fused_path: Path, scratch: Path, repeats: int) -> float:
    """Best time to write the fused volume (read into memory first) to a new Zarr array of the same shape,
    chunks, dtype and codecs, with dask's threaded scheduler."""
    import dask.array as da
    import zarr

    source = zarr.open_array(str(fused_path), mode="r")
    data = source[...]
    best = math.inf
    for _ in range(repeats):
        target = zarr.create_array(
            store=str(scratch),
            shape=source.shape,
            chunks=source.chunks,
            dtype=source.dtype,
            fill_value=0,
            compressors=source.compressors,
            overwrite=True,
        )
        start = time.perf_counter()
        da.store(da.from_array(data, chunks=source.chunks), target, lock=False, scheduler="threads")
        best = min(best, time.perf_counter() - start)
    shutil.rmtree(scratch, ignore_errors=True)
    return best


def fuse_seconds(tiles, out: Path, repeats: int) -> float:
    from llsmflow.stitch import fuse_to_zarr

    positions = {t.key: t.origin_um for t in tiles}
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fuse_to_zarr(tiles, positions, VOXEL, out, blend_width_um=BLEND_UM, chunks=CHUNKS)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget-gb",
        type=float,
        nargs="+",
        default=[0.25, 0.5],
        help="memory budgets (GiB) of the memory test",
    )
    parser.add_argument(
        "--tile-format",
        choices=("tiff", "zarr"),
        default="tiff",
        help="how tiles are stored on disk: OME-TIFF (llsmflow.io.write_volume) or Zarr",
    )
    parser.add_argument("--throughput-tile", type=int, nargs=3, default=(64, 512, 512))
    parser.add_argument("--memory-tile", type=int, nargs=3, default=(72, 1024, 1024))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-multiview-stitcher", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)"
    )
    parser.add_argument("--no-record", action="store_true", help="print the results, do not append them")
    parser.add_argument("--note", default="", help="a sentence appended to the recorded notes")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child.read_text()))))
        return

    from dask.system import CPU_COUNT

    workdir = Path(tempfile.mkdtemp(prefix="bench_fusion.", dir=args.workdir))
    try:
        rows = []
        # ---- throughput: a 2 x 2 mosaic whose fused volume fits in memory (for the plain write)
        shape = tuple(args.throughput_tile)
        small = write_mosaic(workdir / "small", (2, 2), shape, 0.1, args.tile_format, seed=1)
        fshape = fused_shape(small, shape)
        rows.append(
            (
                "throughput mosaic",
                f"2 x 2 tiles of {shape}, fused {fshape} float32 "
                f"({math.prod(fshape) * 4 / 2**30:.2f} GiB), chunks {CHUNKS}",
            )
        )
        out = workdir / "fused.zarr"
        ratios = {}
        for label, in_memory, masks in (
            ("tiles in memory, no masks", True, False),
            ("tiles in memory, masks", True, True),
            (f"tiles read from {args.tile_format}, masks", False, True),
        ):
            tiles = make_tiles(small, shape, in_memory, masks)
            t_fuse = fuse_seconds(tiles, out, args.repeats)
            del tiles
            t_plain = plain_write_seconds(out, workdir / "plain.zarr", args.repeats)
            ratios[label] = t_plain / t_fuse
            rows.append(
                (
                    f"fuse, {label}",
                    f"{t_fuse:.2f} s ({math.prod(fshape) * 4 / t_fuse / 2**20:.0f} MiB/s); "
                    f"plain write {t_plain:.2f} s; ratio {t_plain / t_fuse:.2f}",
                )
            )
        if args.compare_multiview_stitcher:
            spec = {
                "tool": "multiview-stitcher",
                "tiles": small,
                "shape": shape,
                "out": str(workdir / "mvs.zarr"),
                "workers": CPU_COUNT,
            }
            mvs = run_child(spec, workdir)
            rows.append(
                (
                    f"multiview-stitcher fuse, tiles read from {args.tile_format}, NaN wedges",
                    f"{mvs['seconds']:.2f} s; ratio to plain write "
                    f"{t_plain / mvs['seconds']:.2f}; peak RSS {mvs['peak_rss_bytes'] / 2**30:.2f} GiB",
                )
            )
        shutil.rmtree(workdir / "small")

        # ---- memory: a mosaic whose fused volume is >= 4x the largest budget, tiles on disk, fused in a child
        shape = tuple(args.memory_tile)
        largest = max(args.budget_gb) * 2**30
        n = 1
        while 4 * shape[0] * math.prod(int(0.9 * (s - 1) * (n - 1) + s) for s in shape[1:]) < 4.2 * largest:
            n += 1
        big = write_mosaic(workdir / "big", (n, n), shape, 0.1, args.tile_format, seed=2)
        fshape = fused_shape(big, shape)
        fused_gib = math.prod(fshape) * 4 / 2**30
        tiles_gib = len(big) * math.prod(shape) * 4 / 2**30
        rows.append(
            (
                "memory mosaic",
                f"{n} x {n} tiles of {shape} on disk ({args.tile_format}, {tiles_gib:.2f} GiB), "
                f"fused {fshape} float32 ({fused_gib:.2f} GiB), chunks {CHUNKS}",
            )
        )
        fractions = []
        for budget_gb in sorted(args.budget_gb):
            spec = {
                "tool": "llsmflow",
                "tiles": big,
                "shape": shape,
                "out": str(workdir / "big.zarr"),
                "budget_gb": budget_gb,
            }
            result = run_child(spec, workdir)
            shutil.rmtree(workdir / "big.zarr", ignore_errors=True)
            peak = result["peak_rss_bytes"]
            fractions.append(peak / (budget_gb * 2**30))
            plan = next((m for m in result["log"] if m.startswith("fusing")), "")
            found = re.search(r"(\d+) at once", plan)
            in_flight = f"{found.group(1) if found else '?'} chunks in flight"
            rows.append(
                (
                    f"budget {budget_gb:.2f} GiB (fused volume = {fused_gib / budget_gb:.1f}x the budget)",
                    f"peak RSS {peak / 2**30:.3f} GiB = {peak / (budget_gb * 2**30):.0%} of the budget "
                    f"(RSS with libraries loaded, before fusing: {result['rss_before_bytes'] / 2**30:.3f} GiB); "
                    f"{in_flight}; {result['seconds']:.1f} s "
                    f"({fused_gib * 1024 / result['seconds']:.0f} MiB/s)",
                )
            )
        if args.compare_multiview_stitcher:
            spec = {
                "tool": "multiview-stitcher",
                "tiles": big,
                "shape": shape,
                "out": str(workdir / "mvs-big.zarr"),
                "workers": CPU_COUNT,
            }
            mvs = run_child(spec, workdir)
            rows.append(
                (
                    "multiview-stitcher on the memory mosaic (it has no memory budget)",
                    f"{mvs['seconds']:.1f} s ({fused_gib * 1024 / mvs['seconds']:.0f} MiB/s), "
                    f"peak RSS {mvs['peak_rss_bytes'] / 2**30:.3f} GiB",
                )
            )
        record(
            "Fusion: throughput vs a plain Zarr write, peak memory under a budget",
            "python bench/bench_fusion.py " + " ".join(sys.argv[1:]),
            rows,
            notes=f"Throughput ratio (plain write time / fusion time), lowest of the three: "
            f"{min(ratios.values()):.2f} (target >= 0.5). Peak RSS at most {max(fractions):.0%} of the budget "
            f"(target <= 100 %) with a fused volume at least {fused_gib / max(args.budget_gb):.1f}x the budget. "
            f"Chunks in flight: as many as the budget allows, at most one per core ({CPU_COUNT}). {args.note}",
            write=not args.no_record,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
