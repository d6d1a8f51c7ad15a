"""Wall time of each one-off ``llsmflow <command>`` as a user types it, in a fresh process, and what it imports.

A command a user runs by hand (``verify``, ``status``, ``estimate``, ``convert``, ``export …``) pays its imports
every time; an import the command does not use is waiting for nothing. This benchmark builds one real run of the
workflow on ``llsmflow synth --tiny`` data (or reuses ``--run-dir``), a few inputs for the one-step commands
(two deskewed tiles, a fused volume), then runs every command ``--repeats`` times in a fresh process
(the venv's ``llsmflow`` script, ``PYTHONPATH`` = the checkout's ``src``) and keeps the best wall time (other
load on the machine only adds time). With ``--baseline DIR`` another checkout's ``src`` (e.g. ``git archive``
of the code before a change) is measured in the same rounds, each round running every version in turn.

One more run of each command under ``python -X importtime`` gives the time spent importing (the level-0
cumulative times, less what a bare interpreter imports) and the heaviest third-party packages (the cumulative
times of the imports of a package's modules from outside it, nested packages included).

    python bench/bench_cli_startup.py [--repeats 5] [--baseline DIR] [--run-dir DIR] [--only verify,status]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_imports import bare_interpreter_modules, parse_importtime  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the REMBI filled as the FAIR tests fill it
from tests.rembi_filled import fill_in  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"
RAW_T0 = "Scan_Iter_0000_CamA_ch0_CAM1_stack0000_488nm_0000000msec_0000000000msecAbs_000x_{y}y_000z_0000t.tif"
DESKEW = ["--dx", "0.104", "--dz", "0.3", "--angle", "31.5"]

# name → arguments, run in the run directory; {tmp} is a fresh directory per call (outputs go there)
COMMANDS = {
    "verify": ["verify", "results/demo/demo.ome.zarr"],
    "status (results dir)": ["status", "results/demo"],
    "status --configfile (after the run)": ["status", "--configfile", "config.yaml"],
    "status --configfile (before a run)": ["status", "--configfile", "config2.yaml"],
    "estimate RAW": ["estimate", "demo/raw"],
    "estimate --configfile": ["estimate", "--configfile", "config.yaml"],
    "init": ["init", "demo/raw", "--dataset", "demo", "-o", "{tmp}/config.yaml"],
    "convert (to 0.4)": ["convert", "results/demo/demo.ome.zarr", "--ngff-version", "0.4", "-o",
                         "{tmp}/v04.ome.zarr"],  # fmt: skip
    # a full re-run is the workflow's time: the command up to its check of the raw inputs (none in empty/)
    "reproduce (to its input check)": ["reproduce", "results/demo/provenance", "-o", "{tmp}/rerun", "--raw-dir",
                                       "empty"],  # fmt: skip
    "container info": ["container", "info"],
    "container recipe cpu": ["container", "recipe", "cpu"],
    "profile init": ["profile", "init", "{tmp}/profile", "--partition", "cpu", "--no-input"],
    "export bia (local folder)": ["export", "bia", "results/demo", "-o", "{tmp}/bia"],
    "export workflowhub": ["export", "workflowhub", "results/demo", "-o", "{tmp}/demo.crate.zip"],
    "export omero --dry-run": ["export", "omero", "results/demo", "--configfile", "config-omero.yaml", "--dry-run"],
    "track": ["track", "results/demo/demo.ome.zarr", "--output", "{tmp}/tracks.csv"],
    "archive": ["archive", "in/fused.zarr", "--output", "{tmp}/a.ome.zarr", "--channels", "1", "--timepoints", "1",
                "--time-interval-s", "2"],  # fmt: skip
    "stitch": ["stitch", "--tiles", "in/tiles.csv", "--output", "{tmp}/fused.zarr"],
    "deskew": ["deskew", f"demo/raw/{RAW_T0.format(y='000')}", "{tmp}/d.ome.tif", *DESKEW],
    "deconvolve --help": ["deconvolve", "--help"],
    "synth --tiny": ["synth", "--tiny", "{tmp}/synth"],
}


def _env(checkout: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(checkout / "src")}


def prepare(run_dir: Path, checkout: Path) -> None:
    """A real run of the tiny demo in ``run_dir`` and the inputs of the one-step commands (skipped if there)."""
    env = _env(checkout)

    def llsmflow(*words: str) -> None:
        done = subprocess.run([str(LLSMFLOW), *words], cwd=run_dir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"llsmflow {' '.join(words)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    if not (run_dir / "results" / "demo" / "provenance").is_dir():
        llsmflow("synth", "--tiny", "demo")
        llsmflow("init", "demo/raw", "--dataset", "demo", "-o", "config.yaml")
        llsmflow("run", "--configfile", "config.yaml", "--workflow-dir", str(checkout), "--cores", "2",
                 "--display", "plain")  # fmt: skip
    if not (run_dir / "config2.yaml").exists():  # a dataset never run: status --configfile plans it
        llsmflow("init", "demo/raw", "--dataset", "demo2", "-o", "config2.yaml")
    if not (run_dir / "config-omero.yaml").exists():  # export omero --dry-run needs a server named
        text = (run_dir / "config.yaml").read_text(encoding="utf-8") + "omero:\n  host: omero.example.org\n"
        (run_dir / "config-omero.yaml").write_text(text + "  dataset_id: 1\n", encoding="utf-8")
    fill_in(run_dir / "rembi.yaml", run_dir / "rembi.yaml")  # export refuses a template still holding "FILL IN" values
    (run_dir / "empty").mkdir(exist_ok=True)
    inputs = run_dir / "in"
    if not (inputs / "fused.zarr").exists():
        inputs.mkdir(exist_ok=True)
        rows = ["path,x_um,y_um,z_um,tile"]
        for y, y_um in (("000", 0.0), ("001", 5.6576)):
            llsmflow("deskew", f"demo/raw/{RAW_T0.format(y=y)}", f"in/{y}.ome.tif", *DESKEW)
            rows.append(f"{inputs / y}.ome.tif,0.0,{y_um},0.0,t{y}")
        (inputs / "tiles.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        llsmflow("stitch", "--tiles", "in/tiles.csv", "--output", "in/fused.zarr")


def run_once(words: list[str], checkout: Path, run_dir: Path, importtime: bool = False):
    """Wall and CPU time (user + system, s) of one fresh ``llsmflow`` process, and its ``-X importtime`` rows
    if asked."""
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        argv = [w.replace("{tmp}", tmp) for w in words]
        command = [str(LLSMFLOW), *argv]
        if importtime:
            command = [sys.executable, "-X", "importtime", str(LLSMFLOW), *argv]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=run_dir, env=_env(checkout), capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode not in (0, 2) or (done.returncode == 2 and "reproduce" not in words):
        sys.exit(f"llsmflow {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, cpu, (parse_importtime(done.stderr) if importtime else None)


def by_package(rows) -> dict[str, float]:
    """Seconds of each top-level package's imports: the cumulative time of every import of one of its modules
    made from outside the package (``scipy.signal`` imported by a function after ``scipy`` counts too)."""
    out: dict[str, float] = {}
    for i, (level, name, us) in enumerate(rows):
        parent = next((n for lv, n, _ in rows[i + 1 :] if lv == level - 1), None) if level else None
        package = name.split(".")[0]
        if parent is None or parent.split(".")[0] != package:
            out[package] = out.get(package, 0.0) + us / 1e6
    return out


def import_summary(rows, bare: set[str]) -> tuple[float, str]:
    total = sum(us for level, name, us in rows if level == 0 and name not in bare) / 1e6
    skip = {"llsmflow", "__main__", *bare}
    heavy = sorted(((k, v) for k, v in by_package(rows).items() if k not in skip and v >= 0.02), key=lambda kv: -kv[1])
    return total, ", ".join(f"{k} {v:.2f}" for k, v in heavy[:4]) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout measured alongside (its src/)")
    parser.add_argument("--run-dir", type=Path, help="a directory with (or to hold) the demo run; kept")
    parser.add_argument("--only", help="comma-separated command names (the table's first column) to measure")
    args = parser.parse_args()

    root = args.run_dir or Path(tempfile.mkdtemp(prefix="bench-cli-"))
    root.mkdir(parents=True, exist_ok=True)
    prepare(root, REPO)
    versions = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    names = [n for n in COMMANDS if not args.only or any(n.startswith(o) for o in args.only.split(","))]
    bare = bare_interpreter_modules()
    best = {(n, v): float("inf") for n in names for v in versions}
    cpu = dict(best)
    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    for round_ in range(args.repeats):
        for name in names:
            order = list(versions.items())
            for version, checkout in order if round_ % 2 == 0 else order[::-1]:  # neither always goes first
                wall, used, _ = run_once(COMMANDS[name], checkout, root)
                best[name, version] = min(best[name, version], wall)
                cpu[name, version] = min(cpu[name, version], used)
    print(f"load average {os.getloadavg()[0]:.2f}; best of {args.repeats}, seconds")
    header = "| command | " + " | ".join(f"wall {v} | CPU {v} | imports {v} | heaviest imports {v}" for v in versions)
    header += " |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for name in names:
        cells = []
        for version, checkout in versions.items():
            *_, rows = run_once(COMMANDS[name], checkout, root, importtime=True)
            imports, heavy = import_summary(rows, bare)
            cells += [f"{best[name, version]:.2f}", f"{cpu[name, version]:.2f}", f"{imports:.2f}", heavy]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.run_dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
