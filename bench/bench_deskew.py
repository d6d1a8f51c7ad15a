"""Deskew speed: llsmflow.geometry.deskew against scipy.ndimage.affine_transform(order=1) doing the same shear,
and effective bandwidth as a fraction of a plain np.copyto of the output.

Run: .venv/bin/python bench/bench_deskew.py [--shape 100 256 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, record  # noqa: E402

from llsmflow.geometry import deskew, shear_px_per_plane  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=(100, 256, 256))
    args = parser.parse_args()
    dz, dx, angle = 0.3, 0.104, 31.5
    raw = np.random.default_rng(0).integers(90, 400, args.shape, dtype=np.uint16)
    result = deskew(raw, dz, dx, angle)
    shear = shear_px_per_plane(dz, dx, angle)
    matrix = np.array([[1, 0, 0], [0, 1, 0], [-shear, 0, 1]], float)
    raw_f = raw.astype(np.float32)

    t_ours = best_of(lambda: deskew(raw, dz, dx, angle))
    t_affine = best_of(lambda: ndimage.affine_transform(raw_f, matrix, output_shape=result.data.shape, order=1),
                       repeats=1)
    out = np.empty_like(result.data)
    t_copy = best_of(lambda: np.copyto(out, result.data))
    moved = raw.nbytes + result.data.nbytes
    record(
        "Deskew vs scipy.ndimage.affine_transform (order 1)",
        f"python bench/bench_deskew.py --shape {' '.join(map(str, args.shape))}",
        [
            ("raw shape (ZYX, uint16)", str(tuple(args.shape))),
            ("deskewed shape (float32)", str(result.data.shape)),
            ("llsmflow deskew", f"{t_ours * 1e3:.0f} ms"),
            ("scipy affine_transform", f"{t_affine * 1e3:.0f} ms"),
            ("speed-up", f"{t_affine / t_ours:.1f}×"),
            ("effective bandwidth (in+out bytes / s)", f"{moved / t_ours / 1e9:.2f} GB/s"),
            ("np.copyto of the output", f"{result.data.nbytes / t_copy / 1e9:.2f} GB/s"),
            ("bandwidth fraction of copyto", f"{(moved / t_ours) / (2 * result.data.nbytes / t_copy):.2f}"),
        ],
    )


if __name__ == "__main__":
    main()
