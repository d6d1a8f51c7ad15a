"""Richardson–Lucy speed per iteration: llsmflow.decon (CPU) against skimage.restoration.richardson_lucy.

Run: .venv/bin/python bench/bench_decon.py [--shape 64 128 128] [--iterations 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from skimage.restoration import richardson_lucy as sk_rl

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, record  # noqa: E402

from llsmflow.decon import richardson_lucy  # noqa: E402


def gaussian_psf(shape=(21, 11, 11), sigma=(2.5, 1.2, 1.2)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    psf = np.exp(-0.5 * sum((g / s) ** 2 for g, s in zip(grids, sigma, strict=True)))
    return (psf / psf.sum()).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128))
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    volume = rng.poisson(5 + 200 * (rng.random(args.shape) > 0.999), args.shape).astype(np.float32)
    psf = gaussian_psf()
    n = args.iterations
    t_ours = best_of(lambda: richardson_lucy(volume, psf, iterations=n, background=0.0, initial="flat"), 2)
    t_sk = best_of(lambda: sk_rl(volume, psf, num_iter=n, clip=False), 1)
    ours = richardson_lucy(volume, psf, iterations=n, background=0.0, initial="flat")
    ref = sk_rl(volume, psf, num_iter=n, clip=False, filter_epsilon=1e-12)
    border = tuple(slice(s // 2, -(s // 2)) for s in psf.shape)
    rel = np.abs(ours[border] - ref[border]).max() / np.abs(ref[border]).max()
    record(
        "Richardson–Lucy (CPU) vs skimage.restoration.richardson_lucy",
        f"python bench/bench_decon.py --shape {' '.join(map(str, args.shape))} --iterations {n}",
        [
            ("volume (ZYX, float32)", str(tuple(args.shape))),
            ("PSF", str(psf.shape)),
            ("llsmflow, per iteration", f"{t_ours / n * 1e3:.1f} ms"),
            ("skimage, per iteration", f"{t_sk / n * 1e3:.1f} ms"),
            ("speed-up", f"{t_sk / t_ours:.1f}×"),
            ("max relative difference away from the border", f"{rel:.1e}"),
        ],
    )


if __name__ == "__main__":
    main()
