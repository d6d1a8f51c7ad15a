"""Deconvolution benchmarks: CPU Richardson–Lucy against skimage.restoration.richardson_lucy, where the time
goes, and Wiener–Butterworth against RL in iterations to equal quality.

1. Speed per iteration at the same iteration count, llsmflow.decon.richardson_lucy (pyFFTW planned real
   FFTs on all cores and on one core; also the scipy.fft fallback) against
   skimage.restoration.richardson_lucy (which recomputes both FFT convolutions, kernel FFT included, every
   iteration, on a transform size of volume + kernel − 1 per axis), on a 64x256x256 volume with a 21x11x11
   Gaussian PSF, and on the demo's deskewed 40x96x226 volume and a 64x256x256 volume with the real LLSM bead
   PSF at the deskewed voxel size. skimage gets two PSFs there: llsmflow's prepared kernel (cropped to the
   bead's support, skimage's best case) and the PSF as a user has it (the measured stack resampled to the
   data voxel size, background-subtracted and normalised, not cropped). All contenders are timed in one run,
   in interleaved rounds, and compared as ratios; the load average is recorded. All start from a constant
   and subtract no background, so outputs with the same kernel must agree away from the border (skimage
   extends the volume with zeros, llsmflow with its reflection); the relative difference is reported a PSF
   half-size and a whole PSF size away from every face. Where the time goes: the four FFTs of one iteration
   timed alone (plans executed back to back), the rest is the element-wise work.
2. Iterations to equal quality: correlation with the ground truth of RL after 1..30 iterations and of WB
   after 1..3, on three synthetic objects (isolated beads, many beads, a dense cell-like texture).

Run: .venv/bin/python bench/bench_decon.py [--iterations 10] [--repeats 3] [--skip-quality]
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
from common import best_of, record  # noqa: E402

from llsmflow import decon  # noqa: E402
from llsmflow.decon import engine as decon_engine  # noqa: E402
from llsmflow.decon import fft as decon_fft  # noqa: E402
from llsmflow.decon import psf as decon_psf  # noqa: E402


def _real_psf_path() -> Path:
    """The shared real bead PSF: $LLSMFLOW_REAL_DATA, else ../shared/data/real beside the checkout."""
    for candidate in (
        os.environ.get("LLSMFLOW_REAL_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "data" / "real",
        "/work/shared/data/real",
    ):
        if candidate and (Path(candidate) / "pycudadecon_psf.tif").is_file():
            return Path(candidate) / "pycudadecon_psf.tif"
    return Path("pycudadecon_psf.tif")


REAL_PSF = _real_psf_path()
REAL_PSF_VOXEL_UM = (0.1, 0.1, 0.1)  # pycudadecon_psf.tif: dzpsf = dxpsf = 0.1 µm
DESKEWED_VOXEL_UM = (0.3 * np.sin(np.deg2rad(31.5)), 0.104, 0.104)  # demo: dz 0.3 µm, 31.5°, dx 0.104 µm


def gaussian_psf(shape=(21, 11, 11), sigma=(2.5, 1.2, 1.2)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    psf = np.exp(-0.5 * sum((g / s) ** 2 for g, s in zip(grids, sigma, strict=True)))
    return (psf / psf.sum()).astype(np.float32)


def scene(shape, psf, seed=0, clear_border=False) -> np.ndarray:
    """Beads and a smooth texture blurred by ``psf``, with Poisson noise (float32 counts, background 0);
    ``clear_border``: no object within one PSF size of any face (the data are then ~0 there)."""
    rng = np.random.default_rng(seed)
    obj = ndimage.gaussian_filter(rng.random(shape), 3) * 20
    points = rng.integers(0, np.array(shape)[:, None], (3, max(20, int(np.prod(shape) // 20000))))
    obj[tuple(points)] += 2000
    if clear_border:
        keep = np.zeros(shape, bool)
        keep[tuple(slice(k, n - k) for n, k in zip(shape, psf.shape, strict=True))] = True
        obj[~keep] = 0
    otf = decon.psf_to_otf(psf, shape).astype(np.complex128)  # the PSF centred on the origin
    blurred = np.fft.irfftn(np.fft.rfftn(obj) * otf, s=shape, axes=(0, 1, 2))
    return rng.poisson(np.clip(blurred, 0, None)).astype(np.float32)


def fft_seconds(shape, psf, threads) -> float:
    """Seconds of the four FFTs of one RL iteration alone (planned, executed back to back)."""
    ws = decon_fft._Workspace(
        decon.padded_shape(shape, psf.shape), np, decon_engine._resolve_threads(threads), 3
    )
    ws.reals[1][...] = 1.0

    def four():
        for _ in range(2):
            ws.inverse(ws.forward(ws.reals[1]), ws.reals[2])

    return best_of(four, 5)


def psf_as_measured(raw: np.ndarray, psf_voxel_um, data_voxel_um) -> np.ndarray:
    """The PSF as a skimage user has it: the bead stack minus its background (median of the border voxels),
    clamped at 0, resampled to the data voxel size (``scipy.ndimage.zoom``, linear), normalised to sum 1:
    the whole resampled stack, not cropped to the bead's support (float32)."""
    arr = raw.astype(np.float64)
    background = float(np.median(decon_psf._border_voxels(arr)))
    arr = np.clip(arr - background, 0, None)
    arr = ndimage.zoom(arr, np.array(psf_voxel_um) / np.array(data_voxel_um), order=1)
    return (arr / arr.sum()).astype(np.float32)


def embed_centred(kernel: np.ndarray, shape) -> np.ndarray:
    """``kernel`` (odd-sized, centred) zero-padded to the odd ``shape``, centres aligned: the same kernel, the
    array size skimage is given."""
    out = np.zeros(shape, dtype=kernel.dtype)
    out[
        tuple(slice(n // 2 - k // 2, n // 2 - k // 2 + k) for n, k in zip(shape, kernel.shape, strict=True))
    ] = kernel
    return out


def relative_difference(result, reference, margin) -> float:
    """max |result − reference| / max |reference| at least ``margin`` voxels (per axis) from every face."""
    inner = tuple(slice(int(m), n - int(m)) for m, n in zip(margin, reference.shape, strict=True))
    return float(np.abs(result[inner] - reference[inner]).max() / np.abs(reference[inner]).max())


def _timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def speed(shape, psf, label, iterations, repeats, measured=None) -> None:
    """RL per iteration against skimage at the same iteration count, timed in one run, rounds interleaved.

    ``psf``: llsmflow's prepared kernel (both llsmflow and the 'best case' skimage get it); ``measured``: the
    PSF as a user has it (see ``psf_as_measured``), given to skimage as a second baseline.
    """
    volume = scene(shape, psf)
    n = iterations
    load_before = os.getloadavg()

    def ours(threads=None):
        return decon.richardson_lucy(
            volume, psf, iterations=n, background=0.0, initial="flat", threads=threads
        )

    start = time.perf_counter()
    ours()  # plans (FFTW_MEASURE) for this shape: once per shape, thread count and process
    t_plan = time.perf_counter() - start
    ours(1)  # the one-thread plan, outside the timings too
    runs = {
        "ours": ours,
        "ours_1": lambda: ours(1),
        "sk": lambda: sk_rl(volume, psf, num_iter=n, clip=False),
    }
    # the camera's counts as a user reads them from a TIFF: skimage computes uint16 input in float64
    # (the Poisson counts are integers below 65536, so this is the same volume, exactly)
    volume_u16 = volume.astype(np.uint16)
    assert np.array_equal(volume_u16, volume)
    runs["sk_u16"] = lambda: sk_rl(volume_u16, psf, num_iter=n, clip=False)
    if measured is not None:
        embedded = embed_centred(psf, measured.shape)
        runs["sk_measured"] = lambda: sk_rl(volume, measured, num_iter=n, clip=False)
        runs["sk_embedded"] = lambda: sk_rl(volume, embedded, num_iter=n, clip=False)
    # rounds interleaved, so that load from other processes falls on every contender alike; the ratio of the
    # best times and the median of the per-round ratios are both reported
    times = {key: [] for key in runs}
    for _ in range(repeats):
        for key, func in runs.items():
            times[key].append(_timed(func))
    best = {key: min(values) for key, values in times.items()}

    def ratio(key, base="ours") -> str:
        per_round = np.median(np.array(times[key]) / np.array(times[base]))
        return f"{best[key] / best[base]:.1f}× (median of rounds {per_round:.1f}×)"

    t_fft = fft_seconds(shape, psf, None)
    decon_fft.USE_PYFFTW = False
    t_scipy = best_of(ours, repeats)
    decon_fft.USE_PYFFTW = True
    load_after = os.getloadavg()

    result = ours()
    reference = sk_rl(volume, psf, num_iter=n, clip=False)
    half, whole = np.array(psf.shape) // 2, np.array(psf.shape)
    diffs = [relative_difference(result, reference, m) for m in (half, whole)]
    # the same with no object near the border: only the arithmetic differs (float32 FFTs of two libraries)
    clear = scene(shape, psf, clear_border=True)
    result_clear = decon.richardson_lucy(clear, psf, iterations=n, background=0.0, initial="flat")
    reference_clear = sk_rl(clear, psf, num_iter=n, clip=False, filter_epsilon=1e-12)
    diff_clear = relative_difference(result_clear, reference_clear, half)
    per = best["ours"] / n
    padded = decon.padded_shape(shape, psf.shape)
    rows = [
        ("volume (ZYX, float32) / PSF (llsmflow's prepared kernel)", f"{tuple(shape)} / {psf.shape}"),
        ("padded FFT shape (llsmflow)", str(padded)),
        ("llsmflow (pyFFTW, all cores), per iteration", f"{per * 1e3:.1f} ms"),
        ("  of which the 4 FFTs / element-wise", f"{t_fft * 1e3:.1f} ms / {(per - t_fft) * 1e3:.1f} ms"),
        ("llsmflow (pyFFTW, 1 core), per iteration", f"{best['ours_1'] / n * 1e3:.1f} ms"),
        ("llsmflow (scipy.fft fallback, all cores), per iteration", f"{t_scipy / n * 1e3:.1f} ms"),
        (
            f"skimage given llsmflow's kernel {psf.shape} (its best case), per iteration; dtype",
            f"{best['sk'] / n * 1e3:.1f} ms; {reference.dtype}",
        ),
    ]
    if measured is not None:
        rows.append(
            (
                f"skimage given the PSF as measured, {measured.shape} (resampled, not cropped), per iteration",
                f"{best['sk_measured'] / n * 1e3:.1f} ms",
            )
        )
    rows += [
        (
            "skimage given the same volume as uint16 counts (computed in float64), same kernel, per iteration",
            f"{best['sk_u16'] / n * 1e3:.1f} ms",
        ),
        ("speed-up per iteration vs skimage best case: pyFFTW all cores", ratio("sk")),
        ("speed-up per iteration vs skimage best case: pyFFTW 1 core", ratio("sk", "ours_1")),
        (
            "ceiling of that speed-up if llsmflow's element-wise work were free (skimage best case / the 4 FFTs)",
            f"{best['sk'] / n / t_fft:.1f}×",
        ),
        ("speed-up per iteration vs skimage given uint16 counts: pyFFTW all cores", ratio("sk_u16")),
    ]
    if measured is not None:
        rows += [
            ("speed-up per iteration vs skimage given the PSF as measured: all cores", ratio("sk_measured")),
            (
                "speed-up per iteration vs skimage given the PSF as measured: 1 core",
                ratio("sk_measured", "ours_1"),
            ),
        ]
    rows += [
        ("speed-up per iteration: scipy.fft fallback vs skimage best case", f"{best['sk'] / t_scipy:.1f}×"),
        ("FFTW_MEASURE planning of this shape (first call, once per process)", f"{t_plan:.1f} s"),
        (
            "max relative difference vs skimage best case (same kernel), PSF half-size / PSF size from the border",
            f"{diffs[0]:.1e} / {diffs[1]:.1e}",
        ),
        ("max relative difference, no object within a PSF size of the border", f"{diff_clear:.1e}"),
    ]
    reference_u16 = sk_rl(volume_u16, psf, num_iter=n, clip=False)
    rows.append(
        (
            "max relative difference vs skimage given uint16 counts (float64), PSF size from the border",
            f"{relative_difference(result, reference_u16, whole):.1e}",
        )
    )
    if measured is not None:
        # the same kernel in an array of the measured PSF's size: skimage's cost of the measured PSF, our output
        reference_big = runs["sk_embedded"]()
        big = [relative_difference(result, reference_big, m) for m in (half, whole)]
        other = sk_rl(volume, measured, num_iter=n, clip=False)
        rows += [
            (
                f"skimage given llsmflow's kernel zero-padded to {measured.shape} (the same kernel, the measured "
                "stack's array size), per iteration; max relative difference, PSF half-size / PSF size from the "
                "border",
                f"{best['sk_embedded'] / n * 1e3:.1f} ms; {big[0]:.1e} / {big[1]:.1e}",
            ),
            (
                "speed-up per iteration vs that (same kernel, same output): pyFFTW all cores",
                ratio("sk_embedded"),
            ),
            (
                "skimage given the PSF as measured: max relative difference to llsmflow, PSF size from the border "
                "(a different kernel)",
                f"{relative_difference(result, other, whole):.1e}",
            ),
        ]
    rows += [
        ("cores this process may use (os.sched_getaffinity)", str(len(os.sched_getaffinity(0)))),
        (
            "load average (1/5/15 min) before / after the timings",
            f"{'/'.join(f'{v:.1f}' for v in load_before)} / {'/'.join(f'{v:.1f}' for v in load_after)}",
        ),
    ]
    notes = (
        f"{n} iterations, all from a constant estimate, background 0, float32 input (skimage keeps float32 "
        "input in float32, its fastest path; the uint16 row gives it the same counts as a camera TIFF holds them, "
        "which it computes in float64). Timings: "
        f"{repeats} rounds, each running every contender once in turn (interleaved, so load from other "
        "processes falls on all alike); best of the rounds, and the median of the per-round ratios. 'all cores' = "
        "every core this process may use. The FFT share is the four planned transforms of one iteration run "
        "alone; skimage computes six full-size transforms per iteration (two of them of the zero-padded kernel) "
        "on one core, on a 5-smooth size >= volume + kernel − 1 per axis, so its cost grows with the size of the "
        "array it is given, ours does not (the OTF is computed once, the padding follows the prepared kernel). "
        "Relative difference = max |ours − skimage| / max |skimage| over the region named; near the border the two "
        "differ by design (zero vs reflected extension), and RL carries that difference inwards by about a PSF "
        "size over 10 iterations."
    )
    if measured is not None:
        notes += (
            " 'PSF as measured': the real bead stack (0.1 µm voxels) minus the median of its border voxels, "
            "clamped at 0, resampled to the data voxel size with scipy.ndimage.zoom (linear), normalised, not "
            "cropped. Its output differs from ours because its kernel differs (the clamped noise floor outside the "
            "bead carries much of its sum, and the bead is not centred in the stack); the zero-padded row shows "
            "that at the measured PSF's array size skimage costs the same and, given the same kernel, matches ours."
        )
    record(
        f"Richardson–Lucy (CPU) vs skimage.restoration.richardson_lucy, {label}",
        f"python bench/bench_decon.py --iterations {n} --repeats {repeats}",
        rows,
        notes=notes,
    )


def quality() -> None:
    """RL iterations (1..30) against WB iterations (1..3), correlation with the truth, three objects."""
    shape = (32, 64, 64)
    grids = np.indices((25, 11, 11)) - np.array([12, 5, 5])[:, None, None, None]
    psf = np.exp(-0.5 * ((grids[0] / 3.6) ** 2 + (grids[1] / 1.2) ** 2 + (grids[2] / 1.2) ** 2))
    psf /= psf.sum()
    kernel = decon.prepare_psf(psf, (0.3, 0.1, 0.1), (0.3, 0.1, 0.1))
    rng = np.random.default_rng(0)
    objects = {}
    beads = np.zeros(shape)
    for pos in [(16, 20, 20), (16, 44, 40), (12, 30, 46), (20, 46, 18)]:
        beads[pos] = 1
    objects["4 isolated beads"] = (beads * 2e5, ndimage.gaussian_filter(beads, 1.0))
    many = np.zeros(shape)
    many[tuple(rng.integers([4, 8, 8], [28, 56, 56], (60, 3)).T)] = rng.random(60) + 0.5
    many = ndimage.gaussian_filter(many, 0.7)
    objects["60 beads"] = (many / many.max() * 3e3, many)
    cells = ndimage.gaussian_filter(rng.random(shape), 2.0)
    cells = np.clip(cells - np.percentile(cells, 70), 0, None)
    objects["dense texture"] = (cells / cells.max() * 500, cells)
    rows = []
    for name, (obj, truth) in objects.items():
        raw = rng.poisson(ndimage.convolve(obj, psf, mode="constant") + 100).astype(np.uint16)

        def corr(a, truth=truth):
            return float(np.corrcoef(a.ravel(), truth.ravel())[0, 1])

        rl = [corr(decon.richardson_lucy(raw, kernel, iterations=k, background=100.0)) for k in range(1, 31)]
        wb = [corr(decon.wiener_butterworth(raw, kernel, iterations=k, background=100.0)) for k in (1, 2, 3)]
        reach = next((k + 1 for k, v in enumerate(wb) if v >= rl[9]), None)
        # RL iterations needed to match each WB iteration's quality
        equal = [next((str(m + 1) for m, v in enumerate(rl) if v >= w), ">30") for w in wb]
        rows.append(
            (
                name,
                f"RL 1/3/10/30: {rl[0]:.3f}/{rl[2]:.3f}/{rl[9]:.3f}/{rl[29]:.3f} (best {max(rl):.3f} at "
                f"{int(np.argmax(rl)) + 1}); WB 1/2/3: {wb[0]:.3f}/{wb[1]:.3f}/{wb[2]:.3f} = RL {'/'.join(equal)}; "
                f"WB reaches RL-10 at {reach if reach else 'no (within 3)'}",
            )
        )
    record(
        "Wiener–Butterworth vs Richardson–Lucy: iterations to equal quality",
        "python bench/bench_decon.py",
        rows,
        notes=(
            "Correlation with the ground truth (objects smoothed by a 1-voxel Gaussian), 32x64x64, Gaussian PSF "
            "sigma 3.6/1.2/1.2 voxels, offset 100 + Poisson noise; WB with the defaults of Guo et al. 2020 "
            "(alpha 0.001, beta = the PSF's gain at the cutoff 1/FWHM, order 10). One WB iteration costs the same "
            "four FFTs as one RL iteration."
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    # per-iteration speed of measured plans (a one-off call with the default 'auto' would estimate its plans)
    decon_fft.FFTW_PLANNER_EFFORT = "FFTW_MEASURE"
    speed((64, 256, 256), gaussian_psf(), "64×256×256, Gaussian PSF", args.iterations, args.repeats)
    if REAL_PSF.is_file():
        import tifffile

        raw = tifffile.imread(REAL_PSF)
        psf = decon.prepare_psf(raw, REAL_PSF_VOXEL_UM, DESKEWED_VOXEL_UM)
        measured = psf_as_measured(raw, REAL_PSF_VOXEL_UM, DESKEWED_VOXEL_UM)
        for shape in ((40, 96, 226), (64, 256, 256)):
            what = "demo deskewed" if shape == (40, 96, 226) else "deskewed"
            label = f"{what} {'×'.join(map(str, shape))}, real LLSM PSF"
            speed(shape, psf, label, args.iterations, args.repeats, measured=measured)
    else:
        psf, label = gaussian_psf(), "demo deskewed 40×96×226, Gaussian PSF (real PSF not found)"
        speed((40, 96, 226), psf, label, args.iterations, args.repeats)
    if not args.skip_quality:
        quality()


if __name__ == "__main__":
    main()
