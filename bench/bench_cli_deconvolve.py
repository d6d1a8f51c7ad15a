"""`llsmflow deconvolve` end to end, as a user waits for it, against skimage.restoration.richardson_lucy run as
a script on the same files.

Every contender is a fresh process (imports, reading, computing, writing included), timed by its wall time and
its CPU time (user + system, from ``getrusage`` of the children). The stack is 96x256x256 uint16 (beads and a
smooth texture blurred with the real LLSM bead PSF, offset 100, Poisson noise), the PSF file is that PSF
prepared at the data voxel size (llsmflow's own kernel, cropped to the bead: skimage's best case), both as
OME-TIFF; 10 RL iterations everywhere.

Contenders, run in interleaved rounds (so that load from other processes falls on all alike):

* ``llsmflow cold``: an empty per-user cache (``XDG_CACHE_HOME`` a new empty directory each round);
* ``llsmflow warm``: a cache holding measured plans for this shape (made once, untimed, by a run with
  ``LLSMFLOW_FFTW_PLANNING=measure``); since issue 18 (session 7) that run also leaves the prepared PSF
  kernels there (``llsmflow.decon.kernel_cache``), as any first call with a PSF does;
* ``llsmflow before`` (with ``--baseline SRC``): the same command from another checkout's ``src``, with the
  same warm cache (session 8: before, it used the user's own cache, warm or not);
* ``skimage (uint16 as read)``: ``tifffile.imread`` both files, ``richardson_lucy(data, psf, num_iter=10,
  clip=False)`` (skimage computes uint16 input in float64), ``tifffile.imwrite`` the float32 result;
* ``skimage (float32)``: the same with ``data.astype(np.float32)`` (skimage's fastest path).

Run: python bench/bench_cli_deconvolve.py [--rounds 3] [--baseline /path/to/other/checkout/src] [--no-skimage]
(``--no-skimage``: llsmflow alone, for many quick rounds of a before/after comparison)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_decon import DESKEWED_VOXEL_UM, REAL_PSF, REAL_PSF_VOXEL_UM, gaussian_psf  # noqa: E402
from common import record  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
SHAPE = (96, 256, 256)
ITERATIONS = 10

SKIMAGE_SCRIPT = """
import sys
import numpy as np
import tifffile
from skimage.restoration import richardson_lucy
data = tifffile.imread(sys.argv[1])
if sys.argv[4] == "float32":
    data = data.astype(np.float32)
psf = tifffile.imread(sys.argv[2]).astype(np.float32)
psf /= psf.sum()
out = richardson_lucy(data, psf, num_iter=int(sys.argv[5]), clip=False)
tifffile.imwrite(sys.argv[3], out.astype(np.float32, copy=False))
"""


def make_files(folder: Path) -> tuple[Path, Path]:
    """The data stack and the PSF file (see the module docstring); returns their paths."""
    from scipy import ndimage

    from llsmflow import decon
    from llsmflow.io import write_volume

    if REAL_PSF.is_file():
        import tifffile

        kernel = decon.prepare_psf(tifffile.imread(REAL_PSF), REAL_PSF_VOXEL_UM, DESKEWED_VOXEL_UM)
    else:
        kernel = gaussian_psf()
    rng = np.random.default_rng(0)
    obj = ndimage.gaussian_filter(rng.random(SHAPE), 3) * 20
    points = rng.integers(0, np.array(SHAPE)[:, None], (3, 300))
    obj[tuple(points)] += 2000
    otf = decon.psf_to_otf(kernel, SHAPE).astype(np.complex128)
    blurred = np.fft.irfftn(np.fft.rfftn(obj) * otf, s=SHAPE, axes=(0, 1, 2))
    data = rng.poisson(np.clip(blurred, 0, None) + 100).astype(np.uint16)
    data_path, psf_path = folder / "data.ome.tif", folder / "psf.ome.tif"
    write_volume(data_path, data, DESKEWED_VOXEL_UM, compression=None)
    write_volume(psf_path, kernel, DESKEWED_VOXEL_UM, compression=None)
    return data_path, psf_path


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its stderr) of one run; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stderr + done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout's src (the code before), also timed")
    parser.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    parser.add_argument("--no-skimage", action="store_true", help="time llsmflow only (before/after)")
    args = parser.parse_args()
    python = sys.executable
    llsmflow = [python, "-c", "import sys; from llsmflow.cli import main; sys.exit(main())"]
    with tempfile.TemporaryDirectory(prefix="bench-cli-decon-") as tmp:
        tmp = Path(tmp)
        data, psf = make_files(tmp)
        base = {k: v for k, v in os.environ.items() if not k.startswith("LLSMFLOW_FFTW")}
        env = dict(base, PYTHONPATH=str(SRC))
        command = [
            "-v", "deconvolve", str(data), str(tmp / "out.tif"), "--psf", str(psf), "--psf-geometry",
            "objective", "--iterations", str(ITERATIONS),
        ]  # fmt: skip
        warm_cache = tmp / "warm-cache"
        # the warm cache: one run that measures the plans and saves them (untimed)
        _, _, log = timed([*llsmflow, *command], dict(env, XDG_CACHE_HOME=str(warm_cache),
                                                      LLSMFLOW_FFTW_PLANNING="measure"))  # fmt: skip
        planned = next((line.split("INFO ", 1)[1] for line in log.splitlines() if "FFTW planned" in line), "")
        runs = {
            "llsmflow cold (empty cache)": lambda r: timed(
                [*llsmflow, *command], dict(env, XDG_CACHE_HOME=str(tmp / f"cold-{r}"))
            ),
            "llsmflow warm (measured plans in the cache)": lambda r: timed(
                [*llsmflow, *command], dict(env, XDG_CACHE_HOME=str(warm_cache))
            ),
        }
        if args.baseline is not None:
            old = dict(base, PYTHONPATH=str(args.baseline.resolve()), XDG_CACHE_HOME=str(warm_cache))
            runs["llsmflow before (--baseline, the same warm cache)"] = lambda r: timed([*llsmflow, *command], old)
        for kind in () if args.no_skimage else ("uint16", "float32"):
            label = f"skimage script ({'uint16 as read' if kind == 'uint16' else 'cast to float32'})"
            runs[label] = lambda r, kind=kind: timed(
                [python, "-c", SKIMAGE_SCRIPT, str(data), str(psf), str(tmp / "sk.tif"), kind, str(ITERATIONS)],
                base,
            )
        walls = {k: [] for k in runs}
        cpus = {k: [] for k in runs}
        logs = {}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for key, run in runs.items():
                wall, cpu, log = run(r)
                walls[key].append(wall)
                cpus[key].append(cpu)
                logs[key] = log
        load_after = os.getloadavg()

    def deconvolution_seconds(log: str) -> str:
        line = next((x for x in log.splitlines() if "iterations on backend" in x), "")
        return line.split(" in ", 1)[1].split(" s", 1)[0] + " s" if " in " in line else "?"

    rows = []
    for key in runs:
        rows.append(
            (
                f"{key}: wall best / median; CPU (user+sys) median",
                f"{min(walls[key]):.2f} s / {statistics.median(walls[key]):.2f} s; "
                f"{statistics.median(cpus[key]):.2f} s",
            )
        )
    for ours in [k for k in runs if k.startswith("llsmflow")]:
        for sk in [k for k in runs if k.startswith("skimage")]:
            per_round = statistics.median(np.array(walls[sk]) / np.array(walls[ours]))
            rows.append(
                (
                    f"speed-up of {ours.split(' (')[0]} over {sk}: wall (best; median of rounds); CPU",
                    f"{min(walls[sk]) / min(walls[ours]):.1f}× ({per_round:.1f}×); "
                    f"{statistics.median(cpus[sk]) / statistics.median(cpus[ours]):.1f}×",
                )
            )
    before = next((k for k in runs if "before" in k), None)
    if before is not None:
        warm = next(k for k in runs if k.startswith("llsmflow warm"))
        rows.append(
            (
                "llsmflow warm, before − after: wall best; median of rounds; CPU best; CPU median of rounds",
                f"{min(walls[before]) - min(walls[warm]):+.3f} s; "
                f"{statistics.median(np.array(walls[before]) - np.array(walls[warm])):+.3f} s; "
                f"{min(cpus[before]) - min(cpus[warm]):+.3f} s; "
                f"{statistics.median(np.array(cpus[before]) - np.array(cpus[warm])):+.3f} s",
            )
        )
    for key in [k for k in runs if k.startswith("llsmflow") and "before" not in k]:
        own = deconvolution_seconds(logs[key])
        rows.append((f"{key}: the command's own 'in … s' (deconvolution, last round)", own))
        plan_line = next((x.split("INFO ", 1)[1] for x in logs[key].splitlines() if "FFTW" in x), "")
        rows.append((f"{key}: planning (-v log)", plan_line))
    rows += [
        ("the measured plans of the warm cache (made once, untimed)", planned),
        ("cores this process may use; load average (1 min) before / after", f"{len(os.sched_getaffinity(0))}; "
         f"{load_before[0]:.1f} / {load_after[0]:.1f}"),
    ]  # fmt: skip
    record(
        f"`llsmflow deconvolve` end to end vs a skimage script, {'×'.join(map(str, SHAPE))} uint16, RL-{ITERATIONS}",
        "python bench/bench_cli_deconvolve.py" + (" --baseline <src>" if args.baseline else ""),
        rows,
        notes=(
            f"{args.rounds} interleaved rounds, each contender a fresh process (imports, reads, writes included). "
            "Output: llsmflow writes float32 OME-TIFF uncompressed (its default; `--compression zlib` asks for "
            "zlib), skimage's script float32 TIFF uncompressed. The CPU time is less disturbed by other load "
            "than the wall time on a shared machine."
        ),
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
