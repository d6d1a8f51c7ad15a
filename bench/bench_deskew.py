"""Deskew speed, two comparisons on the same raw stack (uint16, as a camera writes it):

1. llsmflow.geometry.deskew against scipy.ndimage.affine_transform(order=1) doing the same shear to the same
   float32 output, and its effective bandwidth (raw bytes read + output bytes written per second) as a fraction
   of a plain np.copyto of the output (bytes read + written per second);
2. llsmflow.geometry.deskew_rotate (deskew + rotation to the coverslip frame, isotropic voxels, one
   interpolation) against pyclesperanto.deskew_x (the engine napari-lattice uses) on an OpenCL CPU device
   (pocl), per output voxel since the two output boxes differ slightly; scipy's affine_transform doing the same
   transform as deskew_rotate is timed too, and the two are compared voxel by voxel.

Run: .venv/bin/python bench/bench_deskew.py [--shape 100 256 256] [--repeats 7] [--no-cle]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, record  # noqa: E402

from llsmflow import deskew as geometry  # noqa: E402
from llsmflow.deskew import deskew, deskew_rotate, rotate, shear_px_per_plane  # noqa: E402

DZ, DX, ANGLE = 0.3, 0.104, 31.5


def bench_deskew(raw: np.ndarray, repeats: int, command: str) -> None:
    result = deskew(raw, DZ, DX, ANGLE)
    shear = shear_px_per_plane(DZ, DX, ANGLE)
    matrix = np.array([[1, 0, 0], [0, 1, 0], [-shear, 0, 1]], float)
    raw_f = raw.astype(np.float32)
    reference = ndimage.affine_transform(raw_f, matrix, output_shape=result.data.shape, order=1)
    mask = geometry.deskewed_valid_mask(raw.shape, DZ, DX, ANGLE, margin_px=1)
    max_diff = float(np.abs(result.data[mask] - reference[mask]).max())

    # interleave the two so that other load on the machine hits both alike
    t_ours, t_affine = [], []
    for _ in range(2):
        t_ours.append(best_of(lambda: deskew(raw, DZ, DX, ANGLE), repeats=repeats))
        t_affine.append(
            best_of(
                lambda: ndimage.affine_transform(raw_f, matrix, output_shape=result.data.shape, order=1), 1
            )
        )
    t_ours, t_affine = min(t_ours), min(t_affine)
    t_single = best_of(lambda: deskew(raw, DZ, DX, ANGLE, workers=1), repeats=repeats)
    buffer = np.empty_like(result.data)
    t_reuse = best_of(lambda: deskew(raw, DZ, DX, ANGLE, out=buffer), repeats=repeats)
    t_copy = best_of(lambda: np.copyto(buffer, result.data), repeats=repeats)
    t_new_copy = best_of(lambda: result.data.copy(), repeats=repeats)  # allocates and page-faults, as deskew
    moved = raw.nbytes + result.data.nbytes
    copy_rate = 2 * result.data.nbytes / t_copy
    fresh_rate = 2 * result.data.nbytes / t_new_copy
    record(
        "Deskew vs scipy.ndimage.affine_transform (order 1)",
        command,
        [
            ("raw shape (ZYX, uint16)", str(raw.shape)),
            ("deskewed shape (float32)", str(result.data.shape)),
            ("threads (llsmflow)", str(geometry.default_workers())),
            ("llsmflow deskew", f"{t_ours * 1e3:.1f} ms"),
            ("llsmflow deskew, 1 thread", f"{t_single * 1e3:.1f} ms"),
            ("llsmflow deskew into a reused `out` buffer", f"{t_reuse * 1e3:.1f} ms"),
            ("scipy affine_transform", f"{t_affine * 1e3:.0f} ms"),
            ("speed-up", f"{t_affine / t_ours:.1f}×"),
            ("max |difference| inside the data (1 px margin)", f"{max_diff:.1e}"),
            ("effective bandwidth (in+out bytes / s)", f"{moved / t_ours / 1e9:.2f} GB/s"),
            ("np.copyto of the output (read+write bytes / s)", f"{copy_rate / 1e9:.2f} GB/s"),
            ("bandwidth fraction of copyto", f"{moved / t_ours / copy_rate:.2f}"),
            ("bandwidth fraction of copyto, reused `out`", f"{moved / t_reuse / copy_rate:.2f}"),
            (
                "bandwidth fraction of a fresh copy (`.copy()`, page faults)",
                f"{moved / t_ours / fresh_rate:.2f}",
            ),
            ("load average (1 min) at the end, shared machine", f"{os.getloadavg()[0]:.1f}"),
        ],
        notes=(
            "Best of several calls each, deskew and affine_transform interleaved. A new output array is "
            "page-faulted on first touch, which np.copyto into an existing buffer does not pay; the last two "
            "rows separate that cost (the fresh-copy rate is that of `output.copy()`, which allocates a new array too)."
        ),
    )


def bench_rotate(raw: np.ndarray, repeats: int, command: str, with_cle: bool) -> None:
    rotate._rotation_plan.cache_clear()
    start = time.perf_counter()
    volume, _, _ = deskew_rotate(raw, DZ, DX, ANGLE)
    t_cold = time.perf_counter() - start
    t_ours = best_of(lambda: deskew_rotate(raw, DZ, DX, ANGLE), repeats=repeats)
    t_single = best_of(lambda: deskew_rotate(raw, DZ, DX, ANGLE, workers=1), repeats=repeats)
    start = time.perf_counter()
    reference, _, _ = rotate._deskew_rotate_reference(raw, DZ, DX, ANGLE, fill_value=-1.0)
    t_scipy = time.perf_counter() - start
    inside = reference != -1.0
    max_rel = float(np.abs(volume[inside] - reference[inside]).max() / np.abs(reference[inside]).max())
    ns_ours = t_ours / volume.size * 1e9
    rows = [
        ("raw shape (ZYX, uint16)", str(raw.shape)),
        ("llsmflow output (coverslip frame, float32, 0.104 µm isotropic)", str(volume.shape)),
        ("threads (llsmflow)", str(geometry.default_workers())),
        ("llsmflow deskew_rotate", f"{t_ours * 1e3:.1f} ms = {ns_ours:.2f} ns / output voxel"),
        ("llsmflow, first call (builds and caches the 2-D plan)", f"{t_cold * 1e3:.1f} ms"),
        ("llsmflow, 1 thread", f"{t_single * 1e3:.1f} ms"),
        ("scipy affine_transform (same transform, 1 run)", f"{t_scipy * 1e3:.0f} ms"),
        ("speed-up vs scipy", f"{t_scipy / t_ours:.1f}×"),
        ("max |llsmflow − scipy| / max |scipy| inside the volume", f"{max_rel:.1e}"),
    ]
    notes = ""
    if with_cle:
        import pyclesperanto as cle

        device = cle.select_device("", "cpu")
        kind = next(
            (line.split(":", 1)[1].strip() for line in device.info.splitlines() if "Device Type" in line), "?"
        )
        platform = device.info.splitlines()[0].rsplit("(", 1)[-1].rstrip(")").split(" HSTR")[0]
        kind = f"{kind} device, {platform}"
        kwargs = {"angle": ANGLE, "voxel_size_x": DX, "voxel_size_y": DX, "voxel_size_z": DZ}
        cle_out = cle.pull(cle.deskew_x(cle.push(raw), **kwargs))  # also compiles the kernel
        t_cle = best_of(lambda: cle.pull(cle.deskew_x(cle.push(raw), **kwargs)), repeats=repeats)
        raw_f = raw.astype(np.float32)
        cle_out_f = cle.pull(cle.deskew_x(cle.push(raw_f), **kwargs))
        t_cle_f = best_of(lambda: cle.pull(cle.deskew_x(cle.push(raw_f), **kwargs)), repeats=3)
        ns_cle = t_cle / cle_out.size * 1e9
        ns_cle_f = t_cle_f / cle_out_f.size * 1e9
        rows += [
            ("pyclesperanto version / OpenCL device", f"{cle.__version__} / {device.name} ({kind})"),
            (
                "pyclesperanto deskew_x, uint16 in → uint16 out (push + kernel + pull)",
                f"{t_cle * 1e3:.1f} ms = {ns_cle:.2f} ns / output voxel, output {cle_out.shape}",
            ),
            (
                "pyclesperanto deskew_x, float32 in → float32 out",
                f"{t_cle_f * 1e3:.1f} ms = {ns_cle_f:.2f} ns / output voxel",
            ),
            ("llsmflow speed-up per output voxel vs pyclesperanto uint16", f"{ns_cle / ns_ours:.1f}×"),
            ("llsmflow speed-up per output voxel vs pyclesperanto float32", f"{ns_cle_f / ns_ours:.1f}×"),
        ]
        notes = (
            "pyclesperanto timed from a NumPy array to a NumPy array (push, deskew_x, pull), as napari-lattice "
            "uses it, after a first call that compiles the kernel; its uint16 path returns uint16, llsmflow "
            "returns float32 from uint16 input. Its output box is slightly larger, hence the per-voxel ratio."
        )
    rows.append(("load average (1 min) at the end, shared machine", f"{os.getloadavg()[0]:.1f}"))
    record("Deskew + rotate (coverslip frame) vs pyclesperanto deskew_x on CPU OpenCL", command, rows, notes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=(100, 256, 256))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-cle", action="store_true", help="skip the pyclesperanto comparison")
    args = parser.parse_args()
    raw = np.random.default_rng(0).integers(90, 400, args.shape, dtype=np.uint16)
    command = (
        f"python bench/bench_deskew.py --shape {' '.join(map(str, args.shape))} --repeats {args.repeats}"
    )
    bench_deskew(raw, args.repeats, command)
    with_cle = not args.no_cle
    if with_cle:
        try:
            import pyclesperanto  # noqa: F401
        except ImportError:
            print("pyclesperanto is not installed: skipping the comparison with deskew_x")
            with_cle = False
    bench_rotate(raw, args.repeats, command + (" --no-cle" if args.no_cle else ""), with_cle)


if __name__ == "__main__":
    main()
