"""One volume from raw file to deconvolved volume on disk, as a deskew_deconvolve job runs it.

The job's own per-volume function (``llsmflow.run.batch.process_volume``: read the raw stack, deskew in memory,
deconvolve, write the deconvolved float32 volume uncompressed) on a synthetic raw stack, with its breakdown
(read, deskew, deconvolution, write) and the ratio per-volume time / deconvolution time (issue 18: at most 1.3×
on the 2-core machine). For comparison, the former two-job path on the same stack: deskew, write the deskewed
volume as zlib OME-TIFF, read it back, deconvolve, write the result as zlib OME-TIFF (process start-up of the
two jobs not counted).

    PYTHONPATH=$PWD/src .venv/bin/python bench/bench_pipeline.py [--shape 100 256 256] [--repeats 3]
    PYTHONPATH=$PWD/src python bench/bench_pipeline.py --backend cupy --shape 201 1024 768   # a GPU machine

Imports only NumPy, tifffile and llsmflow's deskew/decon/io (plus CuPy with ``--backend cupy``): it runs where
the workflow's other packages (Snakemake, zarr, dask) are not installed. Repeats run in one process, as the
volumes of one job do: the first pays FFT planning (and GPU set-up), the others reuse them; the table shows the
first and the median of the others.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

DZ_UM, DX_UM, ANGLE_DEG = 0.3, 0.104, 31.5


def synthetic_stack(shape, seed=0) -> np.ndarray:
    """A raw uint16 stage-scan stack: sparse beads on a camera offset with Poisson noise."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.float32)
    n = max(50, int(np.prod(shape) / 2e5))
    idx = tuple(rng.integers(2, s - 2, n) for s in shape)
    volume[idx] = rng.uniform(2e3, 2e4, n)
    from scipy import ndimage

    volume = ndimage.gaussian_filter(volume, (1.5, 1.0, 1.0))
    return (rng.poisson(volume + 100.0)).astype(np.uint16)


def gaussian_psf(voxel_um, sigma_um=(0.6, 0.15, 0.15), size=(31, 21, 21)) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - n // 2) * v for n, v in zip(size, voxel_um, strict=True)], indexing="ij")
    psf = np.exp(-sum(g**2 / (2 * s**2) for g, s in zip(grids, sigma_um, strict=True)))
    return (psf / psf.sum()).astype(np.float32)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def old_two_jobs(raw_path, deskewed_path, out_path, psf, geometry, decon) -> dict:
    """The former deskew job + deconvolve job on one volume (in one process: start-ups not counted)."""
    from llsmflow.decon.api import deconvolve
    from llsmflow.io import read_volume, read_volume_description, write_volume
    from llsmflow.run.batch import VolumeTask, deskew_raw, volume_metadata

    t = {}
    t0 = time.perf_counter()
    raw = read_volume(raw_path).data
    t["read"] = time.perf_counter() - t0
    deskewed = deskew_raw(raw, geometry, workers=decon.threads)
    t["deskew"] = deskewed.seconds
    t0 = time.perf_counter()
    meta = volume_metadata(VolumeTask("s", str(raw_path), str(out_path)), raw.shape, deskewed, geometry)
    write_volume(deskewed_path, deskewed.data, deskewed.voxel_size_um, meta)  # zlib, as the deskew job did
    volume = read_volume(deskewed_path)
    t["intermediate"] = time.perf_counter() - t0
    result = deconvolve(
        volume.data, psf.data, volume.voxel_size_um, psf.voxel_size_um, iterations=decon.iterations,
        background=decon.background, psf_background=0.0, backend=decon.backend, threads=decon.threads,
    )
    t["deconvolution"] = result.seconds
    t0 = time.perf_counter()
    write_volume(out_path, result.data, volume.voxel_size_um, read_volume_description(deskewed_path))
    t["write"] = time.perf_counter() - t0
    return t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[100, 256, 256], help="raw stack, ZYX voxels")
    parser.add_argument("--backend", default="cpu", help="deconvolution backend (cpu, cupy)")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="volumes processed in one process (≥ 2)")
    parser.add_argument("--no-old", action="store_true", help="skip the former two-job path")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    from llsmflow.io import write_volume
    from llsmflow.run.batch import DeconSettings, Geometry, Psf, VolumeTask, process_volume

    work = Path(args.workdir or tempfile.mkdtemp(prefix="llsmflow-bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LLSMFLOW_FFTW_WISDOM", str(work / "fftw-wisdom"))
    raw = synthetic_stack(tuple(args.shape))
    raw_path = work / "raw.tif"
    import tifffile

    tifffile.imwrite(raw_path, raw)
    geometry = Geometry(DZ_UM, DX_UM, DX_UM, ANGLE_DEG)
    from llsmflow.deskew.frames import deskewed_plane_spacing_um

    voxel = (deskewed_plane_spacing_um(DZ_UM, ANGLE_DEG), DX_UM, DX_UM)
    psf_path = work / "psf.ome.tif"
    write_volume(psf_path, gaussian_psf(voxel), voxel)
    psf = Psf.read(psf_path)
    decon = DeconSettings(iterations=args.iterations, background=100.0, backend=args.backend, threads=args.threads)
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"python {platform.python_version()}; commit {_commit()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"raw {tuple(args.shape)} uint16 ({raw.nbytes / 1e6:.0f} MB), backend {args.backend}, "
        f"{args.iterations} iterations, {args.threads} threads"
    )
    entries, totals = [], []
    for k in range(max(2, args.repeats)):
        task = VolumeTask(f"v{k}", str(raw_path), str(work / f"deconvolved_{k}.ome.tif"))
        t0 = time.perf_counter()
        entries.append(process_volume(task, psf, geometry, decon))
        totals.append(time.perf_counter() - t0)
    parts = ("read", "deskew", "deconvolution", "write")
    print(f"\n{'this job (per volume)':<28}" + "".join(f"{p:>15}" for p in parts) + f"{'total':>10}{'ratio':>8}")
    rows = [("first volume (plans made)", entries[0], totals[0])]
    warm = entries[1:]
    median = {p: statistics.median(e[f"seconds_{p}"] for e in warm) for p in parts}
    warm_total = statistics.median(totals[1:])
    rows.append((f"median of {len(warm)} more", {f"seconds_{p}": median[p] for p in parts}, warm_total))
    for name, entry, total in rows:
        ratio = total / entry["seconds_deconvolution"]
        print(
            f"{name:<28}" + "".join(f"{entry[f'seconds_{p}']:>14.3f}s" for p in parts) + f"{total:>9.3f}s{ratio:>7.2f}×"
        )
    shape = entries[0]["shape_deskewed"]
    gbps = raw.nbytes / 1e9 / statistics.median(totals[1:])
    print(f"deskewed {tuple(shape)} float32 ({4 * np.prod(shape) / 1e6:.0f} MB); {gbps:.3f} GB/s of raw data")
    if not args.no_old:
        old = [
            old_two_jobs(raw_path, work / "deskewed.ome.tif", work / "old.ome.tif", psf, geometry, decon)
            for _ in range(2)
        ][-1]
        total = sum(old.values())
        print(
            "former two jobs (warm): "
            + ", ".join(f"{k} {v:.3f} s" for k, v in old.items())
            + f"; total {total:.3f} s = {total / old['deconvolution']:.2f}× the deconvolution"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
