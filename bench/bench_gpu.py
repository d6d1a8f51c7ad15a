"""GPU end to end (issue 18): correctness against the CPU engine and timings, in one script.

Cases (``--backend cupy``: the issue's shapes; ``--backend numpy``, or no GPU: the same code paths with NumPy
as the array module on small shapes, for CI and for checking this script):

1. RL, accelerated RL and Wiener–Butterworth per iteration at 64×256×256, 128×512×512, 256×1024×1024, each
   checked against the CPU engine (relative L2 after 3 iterations).
2. ``deconvolve(backend='cupy')`` host to host on a deskewed 201×1024×1280 uint16 stack, RL-10, with a given
   and with ``background='auto'``, first and second call, each in a fresh process (imports not timed); the
   result checked against the CPU engine; the transfer floors (pinned and pageable) beside it.
3. GPU deskew and deskew + rotation of a 201×1024×768 uint16 raw stack against the CPU kernels: equality and
   time (device-resident, and host to host).
4. Deskew → deconvolution of that raw stack, RL-10: device-resident (``deskew_deconvolve``) against the
   separate steps (CPU deskew, then ``deconvolve(backend='cupy')``), first and second call.

They run in the order 2, 3, 4, 1 (the issue's headline first). Prints a table; exits 1 when a correctness
check fails or a case raises. A case that raises is recorded (FAILED row, traceback on stderr), its GPU memory
freed, and the next case runs; the table is printed and ``--json`` rewritten after every row, so that a run
killed by the device tool's time limit still leaves what it measured. The CPU references (SciPy's FFT on the
host: the slow part on the GPU machine, about a minute for RL-10 at 201×1024×1280 on 16 cores) are skipped,
and said so, when their estimated time (from the first one, measured) exceeds what is left of ``--budget-s``.
Imports only NumPy, SciPy, CuPy and llsmflow's deskew/decon modules; zarr, dask, trackpy, snakemake and pyFFTW
are blocked (as on the GPU machine, which lacks them), so a run anywhere proves that this path does not need
them.

Run: python bench/bench_gpu.py [--backend auto|cupy|numpy] [--repeats 3] [--budget-s 320] [--write]
[--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

BLOCKED = ("zarr", "dask", "distributed", "trackpy", "snakemake", "pyfftw")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked by bench_gpu.py (the GPU machine does not have it)")
        return None


sys.meta_path.insert(0, _Blocker())
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from llsmflow.decon.api import deconvolve  # noqa: E402
from llsmflow.decon.chunks import plan_chunks  # noqa: E402
from llsmflow.decon.engine import _Engine, _resolve_threads, clear_engine_cache  # noqa: E402
from llsmflow.decon.execute import _run_plan  # noqa: E402
from llsmflow.decon.pipeline import deskew_deconvolve  # noqa: E402
from llsmflow.decon.transfer import pinned_empty, to_device, to_host  # noqa: E402
from llsmflow.deskew.device import deskew_rotate_xp, deskew_xp  # noqa: E402
from llsmflow.deskew.rotate import deskew_rotate  # noqa: E402
from llsmflow.deskew.shear import deskew  # noqa: E402

GEOMETRY = dict(dz_um=0.3, dx_um=0.104, angle_deg=31.5)
LIMITS = {"decon": 1e-5, "deskew": 1e-6, "rotate": 1e-5, "pipeline": 1e-5}
FAILURES: list[str] = []
ROWS: list[tuple[str, str, str]] = []
START = time.perf_counter()
CHILD_MIN_S = 60.0  # the least time a host-to-host child is given (one includes CuPy's first compilations)
STATE = {"budget_s": 320.0, "json": None, "device": "", "cpu_s_per_voxel_iteration": None}


def remaining_s() -> float:
    return STATE["budget_s"] - (time.perf_counter() - START)


def cpu_reference_fits(voxels: int, iterations: int) -> bool:
    """Whether a CPU reference of ``iterations`` on ``voxels`` padded voxels fits in the time left (estimated
    from the first CPU reference's measured rate; before that, assumed to fit)."""
    rate = STATE["cpu_s_per_voxel_iteration"]
    return rate is None or 1.5 * rate * voxels * iterations + 30.0 < remaining_s()


def _xp(backend: str):
    if backend == "numpy":
        return np
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
        error = "no CUDA device"
    except Exception as exc:  # no CuPy or no device
        error = exc
    if backend == "cupy":
        raise SystemExit(f"bench_gpu.py: error: --backend cupy, but CuPy has no GPU ({error})")
    return np


def sync(xp) -> None:
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def timed(func, xp, repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        sync(xp)
        start = time.perf_counter()
        result = func()
        sync(xp)
        best = min(best, time.perf_counter() - start)
    return best, result


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check(name: str, what: str, error: float, limit: float) -> str:
    ok = error <= limit
    if not ok:
        FAILURES.append(f"{name}: {what} {error:.2e} > {limit:.0e}")
    return f"{what} {error:.1e} {'ok' if ok else 'FAIL'}"


def row(case: str, time_text: str, check_text: str = "") -> None:
    ROWS.append((case, time_text, check_text))
    print(f"{case:58s} {time_text:42s} {check_text}", flush=True)
    save_json()


def save_json() -> None:
    if STATE["json"]:
        document = {"device": STATE["device"], "rows": ROWS, "failures": FAILURES}
        Path(STATE["json"]).write_text(json.dumps(document, indent=1))


def free_device_memory(xp) -> None:
    """Forget the kept engines and give the memory pool's blocks and the cuFFT plans back (between cases)."""
    clear_engine_cache()
    if xp is not np:
        xp.get_default_memory_pool().free_all_blocks()
        xp.fft.config.get_plan_cache().clear()


def run_case(name: str, xp, func, *args) -> None:
    """``func(*args)``; an exception is recorded as a failure (and a row), and the next case runs."""
    try:
        func(*args)
    except Exception as error:  # noqa: BLE001 - one broken case must not cost the others on a lent GPU
        traceback.print_exc()
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error) else ''}"
        FAILURES.append(f"{name}: {message}")
        row(f"{name}: FAILED", message)
    finally:
        try:
            free_device_memory(xp)
        except Exception:  # noqa: BLE001 - best effort
            traceback.print_exc()


def gaussian_psf(shape=(21, 25, 25), sigma=(2.0, 1.2, 1.2)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    psf = np.exp(-sum(g**2 / (2 * s**2) for g, s in zip(grids, sigma, strict=True))).astype(np.float32)
    return psf / psf.sum()


def bead_volume(shape, seed=0, dtype=np.float32) -> np.ndarray:
    """Beads on a noisy background, cheap at any size: a Poisson tile repeated, beads added."""
    rng = np.random.default_rng(seed)
    tile = rng.poisson(100, size=(shape[0], min(shape[1], 128), min(shape[2], 128))).astype(np.float32)
    volume = np.tile(tile, (1, -(-shape[1] // tile.shape[1]), -(-shape[2] // tile.shape[2])))
    volume = np.ascontiguousarray(volume[:, : shape[1], : shape[2]])
    n_beads = max(8, math.prod(shape) // 200_000)
    for z, y, x in zip(*(rng.integers(2, n - 2, n_beads) for n in shape), strict=True):
        volume[z - 1 : z + 2, y - 2 : y + 3, x - 2 : x + 3] += 3000
    return volume.astype(dtype)


# ------------------------------------------------------------------------------------------------ cases


def per_iteration(xp, shapes, repeats: int) -> None:
    kernel = gaussian_psf()
    for shape in shapes:
        volume = bead_volume(shape)
        plan = plan_chunks(shape, kernel.shape)
        window_start, region, _ = next(plan.boxes())
        offset = tuple(r.start - w for r, w in zip(region, window_start, strict=True))
        for method, acceleration, label in (
            ("rl", False, "RL"),
            ("rl", True, "RL accel."),
            ("wb", False, "WB"),
        ):
            name = f"{label} {'x'.join(map(str, shape))}"
            run_case(name, xp, one_method, xp, kernel, volume, plan, region, offset, method, acceleration,
                     name, repeats, shape == shapes[-1] and (method, acceleration) != ("rl", False))  # fmt: skip
        del volume


def one_method(xp, kernel, volume, plan, region, offset, method, acceleration, name, repeats, skip_cpu):
    """Time an iteration on the device; check 3 iterations against the CPU engine (``skip_cpu``: the largest
    shape's accelerated RL and WB, whose CPU references would take a few minutes of the device's time)."""
    engine = _Engine(kernel, plan.padded_shape, xp, _resolve_threads(None), method, acceleration)
    engine.load(volume, region, 0.0, offset, whole=True)
    eps = 1e-6 * engine.data_max()
    t12, _ = timed(lambda e=engine: e.iterate(12, eps), xp, repeats)
    t2, _ = timed(lambda e=engine: e.iterate(2, eps), xp, repeats)
    engine.close()
    del engine  # its device arrays: not kept while the next engine is made
    options = dict(xp=xp, method=method, acceleration=acceleration, cache=False)
    device = _run_plan(volume, kernel, plan, 100.0, 3, **options)
    per_iteration_ms = f"{(t12 - t2) / 10 * 1e3:.2f} ms"
    if skip_cpu or not cpu_reference_fits(math.prod(plan.padded_shape), 3):
        row(f"{name}: per iteration", per_iteration_ms, "vs CPU: skipped (time)")
        return
    cpu = _run_plan(volume, kernel, plan, 100.0, 3, method=method, acceleration=acceleration)
    row(f"{name}: per iteration", per_iteration_ms, check(name, "vs CPU", rel_l2(device, cpu), LIMITS["decon"]))


def host_to_host_child(args) -> dict:
    """In a fresh process: deconvolve(backend='cupy') twice on the stack; the first call pays the set-up."""
    xp = _xp(args.backend)
    shape = tuple(args.shape)
    volume = bead_volume(shape, dtype=np.uint16)
    psf = gaussian_psf()
    background = "auto" if args.background == "auto" else float(args.background)
    backend = "cupy" if xp is not np else "cpu"
    seconds, results = [], []
    for _ in range(2):
        start = time.perf_counter()
        result = deconvolve(volume, psf, (0.15, 0.104, 0.104), (0.15, 0.104, 0.104), iterations=10,
                            background=background, psf_background=0.0, backend=backend)  # fmt: skip
        seconds.append(time.perf_counter() - start)
        results.append(result)
    out = {"seconds": seconds, "backend": results[-1].backend, "background": results[-1].background}
    # transfer floors: the raw volume in, a float32 result out (pinned path, and CuPy's pageable copies)
    if xp is not np:
        result32 = np.empty(shape, np.float32)
        t_in, device = timed(lambda: to_device(volume, xp), xp, 3)
        device32 = device.astype(xp.float32)
        t_out, _ = timed(lambda: to_host(device32, out=result32), xp, 3)
        t_in_pageable, _ = timed(lambda: xp.asarray(volume), xp, 3)
        t_out_pageable, _ = timed(lambda: device32.get(), xp, 3)
        out["floors"] = [t_in, t_out, t_in_pageable, t_out_pageable]
        del device, device32
        free_device_memory(xp)
    # the device's figures first: a CPU reference cut short by the parent's timeout does not lose them
    print(json.dumps(out), flush=True)
    out = {}
    if xp is not np:  # as docs/gpu.md advises a job: the raw stack and the result in reused pinned buffers
        try:
            raw_pinned, result_pinned = pinned_empty(shape, np.uint16), pinned_empty(shape, np.float32)
            raw_pinned[...] = volume
            pinned_seconds = []
            for _ in range(2):
                start = time.perf_counter()
                deconvolve(raw_pinned, psf, (0.15, 0.104, 0.104), (0.15, 0.104, 0.104), iterations=10,
                           background=background, psf_background=0.0, backend=backend, out=result_pinned)  # fmt: skip
                pinned_seconds.append(time.perf_counter() - start)
            out["pinned_seconds"] = pinned_seconds
            out["pinned_rel_l2"] = rel_l2(result_pinned, results[-1].data)
        except Exception as error:  # noqa: BLE001 - reported by the parent; the other figures stand
            out["pinned_error"] = f"{type(error).__name__}: {str(error)[:200]}"
        print(json.dumps(out), flush=True)
        out = {}
        free_device_memory(xp)
    if args.reference:
        start = time.perf_counter()
        cpu = deconvolve(volume, psf, (0.15, 0.104, 0.104), (0.15, 0.104, 0.104), iterations=10,
                         background=background, psf_background=0.0, backend="cpu")  # fmt: skip
        out["cpu_seconds"] = time.perf_counter() - start
        out["padded_voxels"] = math.prod(plan_chunks(shape, psf.shape).padded_shape)
        out["rel_l2"] = rel_l2(results[-1].data, cpu.data)
    return out


def _child_lines(text) -> dict:
    """The child's JSON lines merged (a child killed by its timeout has printed its device figures)."""
    merged = {}
    for line in (text or "").splitlines():
        try:
            merged.update(json.loads(line))
        except ValueError:
            continue
    return merged


def host_to_host(args, shape) -> None:
    for background, reference in (("100", True), ("auto", False)):
        command = [sys.executable, __file__, "--child", "--backend", args.backend, "--background", background,
                   "--shape", *map(str, shape)] + (["--reference"] if reference else [])  # fmt: skip
        # the rest of the budget, less what the later cases need (about 80 s on a GPU node, estimated)
        limit = max(remaining_s() - (150.0 if reference else 100.0), CHILD_MIN_S)
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=limit)
            stdout, stderr, failed, timed_out = done.stdout, done.stderr, done.returncode != 0, False
        except subprocess.TimeoutExpired as expired:
            stdout, stderr, failed, timed_out = expired.stdout, expired.stderr, True, True
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = (stderr.decode() if isinstance(stderr, bytes) else stderr or "") + f"\n(timed out: {limit:.0f} s)"
        child = _child_lines(stdout)
        if failed and not (timed_out and "seconds" in child):  # a CPU reference cut short is no failure
            FAILURES.append(f"host-to-host child ({background}) failed: {(stderr or '').strip()[-500:]}")
            print(stderr, file=sys.stderr)
        if "seconds" not in child:
            continue
        name = f"deconvolve(backend='{child['backend']}') RL-10 {'x'.join(map(str, shape))} uint16"
        check_text = ""
        if "rel_l2" in child:
            check_text = check(name, "vs CPU", child["rel_l2"], LIMITS["decon"])
            STATE["cpu_s_per_voxel_iteration"] = child["cpu_seconds"] / (10 * child["padded_voxels"])
            check_text += f" (CPU reference {child['cpu_seconds']:.1f} s)"
        elif reference:
            check_text = "vs CPU: not reached (time)"
            # the reference did not finish within `limit`: at least this slow (the later ones are skipped)
            voxels = math.prod(plan_chunks(shape, gaussian_psf().shape).padded_shape)
            STATE["cpu_s_per_voxel_iteration"] = limit / (10 * voxels)
        first, second = child["seconds"]
        label = f"given background {background}" if background != "auto" else "background 'auto'"
        row(f"{name}, {label}", f"first {first:.3f} s, second {second:.3f} s (host to host)", check_text)
        if "pinned_seconds" in child:
            first, second = child["pinned_seconds"]
            row(f"{name}, {label}, raw and out in pinned buffers", f"first {first:.3f} s, second {second:.3f} s",
                check(f"{name} pinned", "vs pageable", child["pinned_rel_l2"], 1e-6))  # fmt: skip
        elif "pinned_error" in child:
            FAILURES.append(f"{name}, pinned buffers: {child['pinned_error']}")
            row(f"{name}, {label}, raw and out in pinned buffers: FAILED", child["pinned_error"])
        if "floors" in child and reference:
            t_in, t_out, p_in, p_out = child["floors"]
            row("transfer floor: uint16 in / float32 out, pinned path", f"{t_in:.3f} s / {t_out:.3f} s")
            row("transfer floor: uint16 in / float32 out, CuPy pageable", f"{p_in:.3f} s / {p_out:.3f} s")


def deskew_cases(xp, raw_shape, repeats: int) -> None:
    raw = bead_volume(raw_shape, seed=1, dtype=np.uint16)
    shape_text = "x".join(map(str, raw_shape))
    t_cpu, cpu = timed(lambda: deskew(raw, **GEOMETRY).data, np, repeats)
    device_raw = to_device(raw, xp)
    t_dev, dev = timed(lambda: deskew_xp(device_raw, **GEOMETRY, xp=xp)[0], xp, repeats)
    t_h2h, host = timed(lambda: to_host(deskew_xp(to_device(raw, xp), **GEOMETRY, xp=xp)[0]), xp, repeats)
    error = float(np.abs(to_host(dev) - cpu).max())
    row(f"deskew {shape_text}: CPU kernel", f"{t_cpu:.3f} s")
    row(f"deskew {shape_text}: device-resident / host to host",
        f"{t_dev * 1e3:.1f} ms / {t_h2h:.3f} s", check("deskew", "max abs diff vs CPU", error, 1e-3))  # fmt: skip
    del dev, host


def rotate_cases(xp, raw_shape, repeats: int) -> None:
    raw = bead_volume(raw_shape, seed=1, dtype=np.uint16)
    shape_text = "x".join(map(str, raw_shape))
    device_raw = to_device(raw, xp)
    t_cpu, cpu = timed(lambda: deskew_rotate(raw, **GEOMETRY)[0], np, 1)
    t_dev, dev = timed(lambda: deskew_rotate_xp(device_raw, **GEOMETRY, xp=xp)[0], xp, repeats)
    row(f"deskew+rotate {shape_text}: CPU kernel", f"{t_cpu:.3f} s")
    row(f"deskew+rotate {shape_text}: device-resident", f"{t_dev * 1e3:.1f} ms",
        check("rotate", "vs CPU", rel_l2(to_host(dev), cpu), LIMITS["rotate"]))  # fmt: skip


def pipeline_cases(xp, raw_shape) -> None:
    raw = bead_volume(raw_shape, seed=2, dtype=np.uint16)
    psf = gaussian_psf()
    backend = "cupy" if xp is not np else "cpu"
    voxel = deskew(raw[:2], **GEOMETRY).voxel_size_um
    clear_engine_cache()
    resident, times = None, []
    for _ in range(2):
        start = time.perf_counter()
        resident = deskew_deconvolve(raw, psf, voxel, **GEOMETRY, iterations=10, background=100.0,
                                     psf_background=0.0, backend=backend, xp=xp)  # fmt: skip
        times.append(time.perf_counter() - start)
    separate, times_separate = None, []
    for _ in range(2):
        start = time.perf_counter()
        deskewed = deskew(raw, **GEOMETRY)
        separate = deconvolve(deskewed.data, psf, voxel, voxel, iterations=10, background=100.0,
                              psf_background=0.0, backend=backend)  # fmt: skip
        times_separate.append(time.perf_counter() - start)
    name = f"deskew->RL-10 {'x'.join(map(str, raw_shape))}"
    steps = ", ".join(f"{k} {v:.3f}" for k, v in resident.seconds.items())
    row(f"{name}: device-resident (deskew_deconvolve)", f"first {times[0]:.3f} s, second {times[1]:.3f} s",
        check(name, "vs separate", rel_l2(resident.data, separate.data), LIMITS["pipeline"]))  # fmt: skip
    row(f"{name}: its steps, second call (s)", steps)
    row(f"{name}: CPU deskew + deconvolve({backend!r})",
        f"first {times_separate[0]:.3f} s, second {times_separate[1]:.3f} s")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("auto", "cupy", "numpy"), default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=320.0, help="wall-clock budget (s) of the whole run")
    parser.add_argument("--write", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--background", default="100", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(host_to_host_child(args)))
        return 0
    xp = _xp(args.backend)
    args.backend = "cupy" if xp is not np else "numpy"
    if xp is np:
        iteration_shapes, stack, raw_shape = [(32, 64, 64), (48, 96, 128)], (21, 96, 160), (21, 96, 96)
        device = "none: NumPy as the array module (the GPU code paths on the CPU)"
    else:
        iteration_shapes = [(64, 256, 256), (128, 512, 512), (256, 1024, 1024)]
        stack, raw_shape = (201, 1024, 1280), (201, 1024, 768)
        props = xp.cuda.runtime.getDeviceProperties(0)
        model = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        device = f"{model} ({props['totalGlobalMem'] / 2**30:.0f} GiB), CuPy {xp.__version__}"
    STATE.update(budget_s=args.budget_s, json=args.json, device=device)
    # `timeout` sends SIGTERM: leave through the finally below, which prints the table
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    print(
        f"bench_gpu.py: array module {xp.__name__}; device {device}; {os.cpu_count()} CPU cores", flush=True
    )
    try:
        run_case("host to host", xp, host_to_host, args, stack)
        run_case("deskew", xp, deskew_cases, xp, raw_shape, args.repeats)
        run_case("deskew+rotate", xp, rotate_cases, xp, raw_shape, args.repeats)
        run_case("deskew->RL-10", xp, pipeline_cases, xp, raw_shape)
        per_iteration(xp, iteration_shapes, args.repeats)
    finally:  # also on Ctrl-C: the table of what was measured
        imported = [m for m in BLOCKED if m in sys.modules]
        if imported:
            FAILURES.append(f"imported {imported}")
        print(f"\n(bench_gpu.py: {time.perf_counter() - START:.0f} s)")
        print("\n| case | time | check |\n|---|---|---|")
        for case, time_text, check_text in ROWS:
            print(f"| {case} | {time_text} | {check_text} |")
        save_json()
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from common import record

        record(f"GPU end to end ({device})", f"python bench/bench_gpu.py --backend {args.backend}",
               [(case, f"{t} {c}".strip()) for case, t, c in ROWS])  # fmt: skip
    for failure in FAILURES:
        print(f"bench_gpu.py: FAILED: {failure}", file=sys.stderr)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
