"""`make demo`'s workflow: wall time of `llsmflow run` against the sum of its jobs' compute, and their start-up.

Generates the default demo acquisition (``llsmflow synth``: 2 tiles × 2 channels × 5 timepoints) once, then
runs the whole workflow from an empty run directory with ``llsmflow run --cores 2`` for this checkout and, with
``--baseline``, another one (e.g. ``git archive`` of the code before a change), alternating ``--pairs`` times.
From the step records of each run: the jobs' compute (the records' ``seconds``, the run summary's "total") and,
where the records have them, each job's start-up before its step (``startup_s``, ``startup_cpu_s``: the
interpreter, Snakemake's preamble and the script's imports). The issue's target: wall ≤ 1.6 × compute.

    python bench/bench_demo_startup.py [--baseline DIR] [--pairs 1] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"


def run(checkout: Path, run_dir: Path, cores: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    for name in ("work", "results", ".snakemake"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    shutil.copy(checkout / "config" / "config.yaml", run_dir / "config.yaml")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(
        [str(LLSMFLOW), "run", "--configfile", "config.yaml", "--workflow-dir", str(checkout)]
        + ["--cores", str(cores), "--display", "plain"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"llsmflow run ({checkout}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((run_dir / "work").rglob("steps/**/*.json"))]
    startups = [r["startup_s"] for r in records if r.get("startup_s") is not None]
    cpu = [r["startup_cpu_s"] for r in records if r.get("startup_cpu_s") is not None]
    per_step: dict[str, float] = {}
    for r in records:
        per_step[r["step"]] = per_step.get(r["step"], 0.0) + float(r.get("seconds") or 0)
    return {
        "per_step": per_step,
        "wall": wall,
        "jobs": len(records),
        "compute": sum(float(r.get("seconds") or 0) for r in records),
        "startup": (sum(startups) / len(startups), max(startups)) if startups else None,
        "startup_cpu": (sum(cpu) / len(cpu), max(cpu)) if cpu else None,
        "load": (load, os.getloadavg()[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, run alternately with this one")
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, help="default: a temporary folder, removed at the end")
    args = parser.parse_args()
    root = args.run_dir or Path(tempfile.mkdtemp(prefix="llsmflow-bench-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "data" / "demo" / "raw").is_dir():
        subprocess.run([str(LLSMFLOW), "synth", str(root / "data" / "demo")], check=True, capture_output=True)
    checkouts = ({"before": args.baseline.resolve()} if args.baseline else {}) | {"after": REPO}
    print("| run | jobs | wall (s) | compute (s) | wall / compute | start-up per job: mean / max wall (s) | "
          "start-up CPU per job: mean / max (s) | load average start → end |")
    print("|---|---|---|---|---|---|---|---|")
    for pair in range(args.pairs):
        for label, checkout in checkouts.items():
            r = run(checkout, root, args.cores)
            startup = "{:.2f} / {:.2f}".format(*r["startup"]) if r["startup"] else "–"
            cpu = "{:.2f} / {:.2f}".format(*r["startup_cpu"]) if r["startup_cpu"] else "–"
            print(
                f"| {label} {pair + 1} | {r['jobs']} | {r['wall']:.1f} | {r['compute']:.1f} | "
                f"{r['wall'] / r['compute']:.2f}× | {startup} | {cpu} | {r['load'][0]:.1f} → {r['load'][1]:.1f} |",
                flush=True,
            )
            steps = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["per_step"].items(), key=lambda kv: -kv[1]))
            print(f"|   compute per step ({label} {pair + 1}) | {steps} |||||||", flush=True)
    if args.run_dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
