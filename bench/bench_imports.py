"""Import time of each workflow script's imports: what every Snakemake job pays before its step starts.

Each script in ``workflow/scripts/`` runs in a fresh Python process per job. This benchmark takes the
script's top-level ``import`` statements (from its source, so it follows the scripts as they change), runs
them in a fresh interpreter under ``python -X importtime`` and adds the cumulative times of the top-level
imports (the interpreter's own start-up is not included). The median of ``--repeats`` runs is reported
with the three heaviest third-party packages the script pulls in, against the issue's target of 0.35 s.

    python bench/bench_imports.py [--repeats 7] [--no-write]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import record

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
TARGET_S = 0.35


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


def importtime(code: str, checkout: Path = REPO) -> tuple[float, dict[str, float]]:
    """Seconds spent importing ``code``'s modules in a fresh interpreter, and per top-level package.

    ``checkout``'s ``src`` goes first on the path, so that another checkout (the code before a change) can
    be measured with the same interpreter and packages.
    """
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(checkout / "src")},
    )
    total_us, per_package = 0, {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, column = line.split(":", 1)[1].split("|")
        name = column[1:]  # one space, then two more per level of nesting
        if not name.startswith(" "):  # imported by the code itself, not by another module
            total_us += int(cumulative)
        if "." not in name.strip():
            per_package[name.strip()] = max(per_package.get(name.strip(), 0.0), int(cumulative) / 1e6)
    return total_us / 1e6, dict(per_package)


def median_seconds(code: str, checkout: Path, repeats: int) -> tuple[float, dict[str, float]]:
    runs = [importtime(code, checkout) for _ in range(repeats)]
    return statistics.median(total for total, _ in runs), runs[-1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. a git worktree of the code before a change) "
        "whose scripts are measured in the same rounds"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    importtime("import numpy")  # warm the page cache: the first run of a session reads files from disk
    rows = []
    for script in sorted(SCRIPTS.glob("*.py")):
        seconds, packages = median_seconds(script_imports(script), REPO, args.repeats)
        heavy = sorted(
            ((name, s) for name, s in packages.items() if name not in ("llsmflow", "__main__") and s >= 0.02),
            key=lambda item: -item[1],
        )[:3]
        heavy_text = ", ".join(f"{name} {s:.2f}" for name, s in heavy) or "-"
        text = f"{seconds:.2f} s ({'ok' if seconds <= TARGET_S else 'OVER'}); heaviest: {heavy_text}"
        old_script = args.baseline / "workflow" / "scripts" / script.name if args.baseline else None
        if old_script is not None and old_script.is_file():
            before, _ = median_seconds(script_imports(old_script), args.baseline, args.repeats)
            text = f"{before:.2f} s → {text}"
        rows.append((f"`{script.name}`", text))
    load = os.getloadavg()[0]
    baseline = f" --baseline {args.baseline}" if args.baseline else ""
    record(
        "Import time of each workflow script's imports (per-job start-up)",
        f"python bench/bench_imports.py --repeats {args.repeats}{baseline}",
        rows,
        notes=(
            f"Median of {args.repeats} fresh interpreters, `python -X importtime`, sum of the top-level "
            f"imports' cumulative time (interpreter start-up excluded); target {TARGET_S} s per script"
            + (" (before → after, the baseline measured in the same rounds)" if baseline else "")
            + f". Load average at the end: {load:.1f}."
        ),
        write=not args.no_write,
    )

if __name__ == "__main__":
    main()
