"""Quality per second on the CPU: the time llsmflow's Wiener–Butterworth deconvolution takes to reach the
quality of 10 Richardson–Lucy iterations, against skimage.restoration.richardson_lucy's 10 iterations.

Ground truth: two synthetic objects of 64x256x256 voxels, (a) beads (600 points of random brightness) and (b)
beads on a dense cell-like texture (smoothed noise, thresholded), blurred with the real LLSM bead PSF
prepared at the deskewed voxel size (a Gaussian PSF if the real one is not found), plus a background of 100
counts and Poisson noise, as uint16.

Metric: Pearson correlation of the result with the *resolvable* truth, the object smoothed by a Gaussian of
sigma 1 voxel (points are not recoverable beyond the sampling), over the whole volume; the normalised RMS error
(after the least-squares scale, since WB does not keep the total intensity) is reported too.

Contenders, timed in the same process in interleaved rounds (best of the rounds):

* skimage RL-10: ``richardson_lucy((raw - 100).clip(0).astype(float32), psf, num_iter=10, clip=False)``
  (its fastest path: float32, the background removed as llsmflow does, the cropped kernel);
* llsmflow ``wiener_butterworth`` with 1, 2, 3 iterations and ``richardson_lucy`` with 6, 8, 10 (all cores),
  from a flat first estimate (``initial='flat'``, as skimage starts): the fastest of them whose correlation
  is at least skimage RL-10's gives "time to RL-10 quality" (for WB alone and for the fastest of all);
* for the record, WB-3 and RL-10 from the data (``initial='data'``, ``llsmflow deconvolve``'s default, as
  cudaDecon): quality only.

The llsmflow calls plan as a one-off call does (``FFTW_PLANNER_EFFORT='auto'``: FFTW_ESTIMATE for so few
transforms); the first call's time (planning and workspace set-up included) is reported apart.

Run: python bench/bench_decon_quality.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.restoration import richardson_lucy as sk_rl

sys.path.insert(0, str(Path(__file__).parent))
from bench_decon import DESKEWED_VOXEL_UM, REAL_PSF, REAL_PSF_VOXEL_UM, gaussian_psf  # noqa: E402
from common import record  # noqa: E402

from llsmflow import decon  # noqa: E402

SHAPE = (64, 256, 256)
BACKGROUND = 100.0


def kernel() -> tuple[np.ndarray, str]:
    if REAL_PSF.is_file():
        import tifffile

        raw = tifffile.imread(REAL_PSF)
        return decon.prepare_psf(raw, REAL_PSF_VOXEL_UM, DESKEWED_VOXEL_UM), "real LLSM bead PSF"
    return gaussian_psf(), "Gaussian PSF (real PSF not found)"


def objects(psf: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (raw uint16 data, resolvable truth)."""
    rng = np.random.default_rng(0)
    beads = np.zeros(SHAPE)
    points = rng.integers([4, 8, 8], [SHAPE[0] - 4, SHAPE[1] - 8, SHAPE[2] - 8], (600, 3)).T
    beads[tuple(points)] = rng.uniform(0.3, 1.0, points.shape[1])
    texture = ndimage.gaussian_filter(rng.random(SHAPE), 2.0)
    texture = np.clip(texture - np.percentile(texture, 70), 0, None)
    texture /= texture.max()
    found = {
        "beads": beads * 3000,
        "beads on a dense texture": beads * 3000 + texture * 300,
    }
    otf = decon.psf_to_otf(psf, SHAPE).astype(np.complex128)
    out = {}
    for name, obj in found.items():
        blurred = np.fft.irfftn(np.fft.rfftn(obj) * otf, s=SHAPE, axes=(0, 1, 2))
        raw = rng.poisson(np.clip(blurred, 0, None) + BACKGROUND).astype(np.uint16)
        out[name] = (raw, ndimage.gaussian_filter(obj, 1.0))
    return out


def correlation(a, truth) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(truth))[0, 1])


def nrmse(a, truth) -> float:
    a, t = np.ravel(a).astype(np.float64), np.ravel(truth).astype(np.float64)
    scale = float(a @ t / (a @ a)) if a.any() else 0.0
    return float(np.sqrt(np.mean((scale * a - t) ** 2)) / (t.max() - t.min()))


def timed(func) -> tuple[float, float, np.ndarray]:
    """(wall s, CPU s of all this process's threads, result) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    out = func()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    psf, psf_name = kernel()
    rows = []
    ratios = []
    load_before = os.getloadavg()
    for name, (raw, truth) in objects(psf).items():
        data = np.clip(raw.astype(np.float32) - BACKGROUND, 0, None)
        runs = {"skimage RL-10": lambda data=data: sk_rl(data, psf, num_iter=10, clip=False)}
        candidates = [("wb", k) for k in (1, 2, 3)] + [("rl", k) for k in (6, 8, 10)]
        for method, k in candidates:
            func = decon.wiener_butterworth if method == "wb" else decon.richardson_lucy
            runs[f"llsmflow {method.upper()}-{k}"] = lambda raw=raw, k=k, func=func: func(
                raw, psf, k, background=BACKGROUND, initial="flat"
            )
        for method, k in (("wb", 3), ("rl", 10)):  # `llsmflow deconvolve`'s defaults start from the data
            func = decon.wiener_butterworth if method == "wb" else decon.richardson_lucy
            runs[f"llsmflow {method.upper()}-{k}, initial='data'"] = lambda raw=raw, k=k, func=func: func(
                raw, psf, k, background=BACKGROUND, initial="data"
            )
        first = {}
        times = {key: [] for key in runs}
        cpus = {key: [] for key in runs}
        results = {}
        for r in range(args.repeats):
            for key, run in runs.items():
                seconds, cpu, results[key] = timed(run)
                if r == 0:
                    first[key] = seconds
                times[key].append(seconds)
                cpus[key].append(cpu)
        best = {key: min(v) for key, v in times.items()}
        median = {key: float(np.median(v)) for key, v in times.items()}
        cpu = {key: min(v) for key, v in cpus.items()}
        quality = {key: (correlation(v, truth), nrmse(v, truth)) for key, v in results.items()}
        target = quality["skimage RL-10"][0]
        for key in runs:
            c, e = quality[key]
            rows.append(
                (
                    f"{name}: {key}",
                    f"correlation {c:.4f}, NRMSE {e:.4f}; {best[key]:.2f} s (median {median[key]:.2f} s, first "
                    f"call {first[key]:.2f} s); CPU {cpu[key]:.2f} s",
                )
            )
        reached = {
            key: best[key]
            for key in (f"llsmflow {m.upper()}-{k}" for m, k in candidates)
            if quality[key][0] >= target
        }
        wb = [key for key in reached if "WB" in key]
        for label, keys in (("Wiener–Butterworth", wb), ("fastest llsmflow (WB or RL)", list(reached))):
            if not keys:
                rows.append((f"{name}: time to skimage RL-10 quality, {label}", "not reached"))
                continue
            key = min(keys, key=reached.get)
            ratio, ratio_first = best["skimage RL-10"] / best[key], best["skimage RL-10"] / first[key]
            ratio_median = median["skimage RL-10"] / median[key]
            ratios.append(ratio)
            rows.append(
                (
                    f"{name}: time to skimage RL-10 quality, {label} ({key.split()[1]}); speed-up over skimage RL-10",
                    f"{best[key]:.2f} s vs {best['skimage RL-10']:.2f} s: **{ratio:.1f}×** (medians: "
                    f"{ratio_median:.1f}×; first call, FFTW planning and set-up included: {ratio_first:.1f}×); "
                    "CPU time "
                    f"{cpu[key]:.2f} s vs {cpu['skimage RL-10']:.2f} s: **{cpu['skimage RL-10'] / cpu[key]:.1f}×**",
                )
            )
    load_after = os.getloadavg()
    rows.append(
        (
            "cores; load average (1 min) before / after",
            f"{len(os.sched_getaffinity(0))}; {load_before[0]:.1f} / {load_after[0]:.1f}",
        )
    )
    record(
        f"CPU quality per second: Wiener–Butterworth to RL-10 quality vs skimage RL-10, "
        f"{'×'.join(map(str, SHAPE))}, {psf_name}",
        f"python bench/bench_decon_quality.py --repeats {args.repeats}",
        rows,
        notes=(
            "Quality = Pearson correlation with the truth smoothed by a 1-voxel Gaussian (NRMSE after the "
            "least-squares scale also shown); 'time to RL-10 quality' = the fastest llsmflow call (WB 1–3 or RL "
            "6–10 iterations, flat start) whose correlation is at least skimage RL-10's, timed as a call (padding, "
            f"OTF, back projector, iterations). Best of {args.repeats} interleaved rounds; llsmflow on all cores "
            "this process may use, skimage on one (it has no threads). CPU = the process's CPU time over all its "
            "threads (less disturbed by other load than the wall time on a shared machine)."
        ),
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
