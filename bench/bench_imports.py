"""Per-job start-up of each workflow script, as a real job pays it: Snakemake's preamble, the script's imports
and the imports its step performs while it runs.

Each workflow job runs its script in a fresh Python process: Snakemake writes the script with a *preamble*
(``sys.path``, ``pickle.loads`` of the job's ``snakemake`` object, which imports ``snakemake.io`` and
``snakemake.iocontainers``), then the script's own imports run, then the step, which may import more (a
module imported inside a function the step always calls is paid by every job just the same). Measuring the
script's top-level imports alone misses both, so this benchmark measures real jobs:

1. One real run of the workflow on ``llsmflow synth --tiny`` data (``llsmflow run -- --skip-script-cleanup
   --notemp``): Snakemake keeps each job's generated script (preamble + source) under ``.snakemake/scripts``
   and the intermediate files they read.
2. For each script, one kept job is run again, ``--repeats`` times, as Snakemake ran it (same file, same
   directory, the same ``PYTHONPATH``), under ``python -X importtime``, with two marker imports inserted:
   one after the preamble, one after the script's top-level import block. The cumulative times of the
   imports at nesting level 0 are summed per segment: *preamble*, *script imports*, and *during the step*
   (imports made while the step runs). Modules a bare interpreter imports (``python -X importtime -c pass``:
   ``site``, ``encodings``) are left out: every process pays them, with the interpreter's own start-up
   (reported once).
3. *start-up* = preamble + script imports + imports during the step, of the least disturbed rerun (best of
   the repeats: other load on the machine only adds time); the heaviest third-party packages come from the
   same rerun (largest cumulative time of a package's first
   import, any level). The old figure (the script's top-level imports alone, in a fresh interpreter) is
   kept as a column.

``-X importtime`` adds a little overhead per import; the step's own compute is not counted. With
``--baseline`` another checkout (e.g. ``git archive`` of the code before a change) gets its own real run and
its jobs are measured in the same rounds, each round running a job of every version in turn.

    python bench/bench_imports.py [--repeats 5] [--baseline DIR] [--run-dir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import record

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
LLSMFLOW = Path(sys.executable).parent / "llsmflow"
TARGET_S = 0.35
PREAMBLE_END = "######## snakemake preamble end #########"
MARKERS = ("_bench_mark_preamble_end", "_bench_mark_imports_end")


def script_imports(path: Path) -> str:
    """The script's top-level import statements, as source (``from __future__`` left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = [
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    ]
    return "\n".join(lines)


def parse_importtime(stderr: str) -> list[tuple[int, str, int]]:
    """``(level, module, cumulative µs)`` of each line ``-X importtime`` wrote, in the order written."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, column = line.split(":", 1)[1].split("|")
        name = column[1:]  # one space, then two more per level of nesting
        level = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((level, name.strip(), int(cumulative)))
    return rows


def importtime(code: str, checkout: Path = REPO) -> tuple[float, dict[str, float]]:
    """Seconds spent importing ``code``'s modules in a fresh interpreter (the old measure), per package too."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(checkout / "src")},
    )
    rows = parse_importtime(done.stderr)
    return sum(us for level, _, us in rows if level == 0) / 1e6, packages(rows)


def packages(rows) -> dict[str, float]:
    """Seconds of each top-level package's first import (at whatever level it happened)."""
    out: dict[str, float] = {}
    for _, name, us in rows:
        if "." not in name:
            out[name] = max(out.get(name, 0.0), us / 1e6)
    return out


def bare_interpreter_modules() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    return {name for _, name, _ in parse_importtime(done.stderr)}


def real_run(checkout: Path, run_dir: Path) -> None:
    """One real workflow run of ``checkout`` in ``run_dir`` that keeps the jobs' scripts and temp files."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    if not (run_dir / "data" / "raw").is_dir():
        subprocess.run(
            [str(LLSMFLOW), "synth", "--tiny", str(run_dir / "data")], check=True, capture_output=True, env=env
        )
    config = [
        "raw_dir: data/raw" if line.startswith("raw_dir:") else "dataset: bench" if line.startswith("dataset:")
        else line
        for line in (checkout / "config" / "config.yaml").read_text(encoding="utf-8").splitlines()
    ]
    (run_dir / "config.yaml").write_text("\n".join(config) + "\n", encoding="utf-8")
    for name in ("work", "results", ".snakemake"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    done = subprocess.run(
        [str(LLSMFLOW), "run", "--configfile", "config.yaml", "--workflow-dir", str(checkout), "--cores", "2"]
        + ["--display", "plain", "--", "--skip-script-cleanup", "--notemp"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        sys.exit(f"llsmflow run in {run_dir} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def marked_jobs(checkout: Path, run_dir: Path, marks: Path) -> dict[str, Path]:
    """Per script name, one kept job script with the two marker imports inserted (written under ``marks``)."""
    jobs: dict[str, Path] = {}
    for kept in sorted((run_dir / ".snakemake" / "scripts").glob("tmp*.py")):
        name = re.sub(r"^tmp[^.]*\.", "", kept.name)
        if name in jobs or not (checkout / "workflow" / "scripts" / name).is_file():
            continue
        text = kept.read_text(encoding="utf-8")
        preamble, _, source = text.partition(PREAMBLE_END + "\n")
        tree = ast.parse(source)
        last_import = 0
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # the docstring
            ):
                last_import = node.end_lineno
            else:
                break
        lines = source.splitlines(keepends=True)
        marked = (
            preamble + PREAMBLE_END + "\n" + f"import {MARKERS[0]}\n"
            + "".join(lines[:last_import]) + f"import {MARKERS[1]}\n" + "".join(lines[last_import:])
        )
        # the marker line shifts the script's lines by one after the preamble: tracebacks only
        path = marks / f"{checkout.name}-{name}"
        path.write_text(marked, encoding="utf-8")
        jobs[name] = path
    return jobs


def measure_job(job: Path, checkout: Path, run_dir: Path, marks: Path, bare: set[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{checkout / 'src'}{os.pathsep}{marks}"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(job)], cwd=run_dir, capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        sys.exit(f"{job} failed:\n{done.stderr[-3000:]}")
    rows = parse_importtime(done.stderr)
    segment, seconds = 0, [0.0, 0.0, 0.0]
    for level, name, us in rows:
        if level != 0:
            continue
        if name in MARKERS:
            segment = MARKERS.index(name) + 1
        elif name not in bare:
            seconds[segment if segment < 3 else 2] += us / 1e6
    # segment 0: the preamble; 1: the script's imports; 2: imports made while the step ran
    return {"preamble": seconds[0], "script": seconds[1], "step": seconds[2], "packages": packages(rows)}


def heaviest(pkgs: dict[str, float], n: int = 3) -> str:
    skip = {"llsmflow", "__main__", "snakemake", *MARKERS}
    heavy = sorted(((k, v) for k, v in pkgs.items() if k not in skip and v >= 0.02), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.2f}" for k, v in heavy[:n]) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. `git archive` of the code before a change) "
        "whose jobs are measured in the same rounds"
    )
    parser.add_argument("--run-dir", type=Path, help="where the real runs go (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse the runs already in --run-dir")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    root = args.run_dir or Path(tempfile.mkdtemp(prefix="llsmflow-bench-imports-"))
    marks = root / "marks"
    marks.mkdir(parents=True, exist_ok=True)
    for marker in MARKERS:
        (marks / f"{marker}.py").write_text("", encoding="utf-8")
    checkouts = {"after": REPO} | ({"before": args.baseline.resolve()} if args.baseline else {})
    jobs = {}
    load_start = os.getloadavg()[0]
    for label, checkout in checkouts.items():
        run_dir = root / label
        run_dir.mkdir(exist_ok=True)
        if not (args.reuse and (run_dir / ".snakemake" / "scripts").is_dir()):
            real_run(checkout, run_dir)
        jobs[label] = marked_jobs(checkout, run_dir, marks)

    bare = bare_interpreter_modules()
    interpreter = statistics.median(_wall([sys.executable, "-c", "pass"]) for _ in range(5))
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):  # rounds: every job of every version once per round
        for label, checkout in checkouts.items():
            for name, job in jobs[label].items():
                results.setdefault((label, name), []).append(
                    measure_job(job, checkout, root / label, marks, bare)
                )

    rows = []
    for name in sorted(jobs["after"]):
        cells = []
        for label in reversed(list(checkouts)):  # before, then after
            runs = results.get((label, name))
            if not runs:
                cells.append("–")
                continue
            # the least disturbed rerun (other load only adds time): best of the repeats, with its segments
            best = min(runs, key=lambda r: r["preamble"] + r["script"] + r["step"])
            total = best["preamble"] + best["script"] + best["step"]
            cells.append(
                f"**{total:.2f}** ({best['preamble']:.2f} + {best['script']:.2f} + {best['step']:.2f}); "
                f"{heaviest(best['packages'])}"
            )
        old, _ = importtime(script_imports(SCRIPTS / name))
        rows.append((f"`{name}`", " → ".join(cells) + f"; old measure {old:.2f}"))
    load = os.getloadavg()[0]
    baseline = f" --baseline {args.baseline}" if args.baseline else ""
    header = "before → after: " if baseline else ""
    record(
        "Per-job start-up of each workflow script, measured on real jobs",
        f"python bench/bench_imports.py --repeats {args.repeats}{baseline}",
        rows,
        notes=(
            f"Value: {header}**start-up** (preamble + script imports + imports during the step), s; heaviest "
            "third-party packages, s; the old measure (top-level imports alone, fresh interpreter). "
            f"Best of {args.repeats} reruns of one kept job per script (`python -X importtime`, "
            f"level-0 imports per segment); target {TARGET_S} s. The interpreter's own start-up "
            f"(`python -c pass`) adds {interpreter:.3f} s to every job. Load average {load_start:.1f} at "
            f"the start, {load:.1f} at the end."
        ),
        write=not args.no_write,
    )
    if args.run_dir is None:
        shutil.rmtree(root, ignore_errors=True)


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
