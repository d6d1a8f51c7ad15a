"""Lines `llsmflow run` writes for the tiny synthetic acquisition: Snakemake's own output (``--display full``, what
every run printed before the progress view) against the plain display (``--display plain``, what a run prints
when stdout is not a terminal), with the wall time of each run and the lines of the kept Snakemake log.

    python bench/bench_run_output.py [--keep DIR]

Each run starts from an empty run directory on the same ``llsmflow synth --tiny`` data (65 jobs).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"


def run(run_dir: Path, display: str) -> dict:
    for name in ("work", "results", ".snakemake"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run(
        [str(LLSMFLOW), "run", "--configfile", "config.yaml", "--workflow-dir", str(REPO), "--cores", "2"]
        + ["--display", display],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"llsmflow run --display {display} failed:\n{result.stderr[-3000:]}")
    logs = sorted((run_dir / "work" / "bench" / "logs" / "snakemake").glob("*.log"))
    return {
        "display": display,
        "stdout": len(result.stdout.splitlines()),
        "stderr": len(result.stderr.splitlines()),
        "log": len(logs[-1].read_text(encoding="utf-8").splitlines()) if logs else 0,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, default=None, help="run directory to keep (default: a temporary one)"
    )
    args = parser.parse_args()
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="llsmflow-bench-output-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(LLSMFLOW), "synth", "--tiny", str(run_dir / "data")], check=True, capture_output=True)
    config = (REPO / "config" / "config.yaml").read_text(encoding="utf-8").splitlines()
    config = [
        "raw_dir: data/raw"
        if line.startswith("raw_dir:")
        else "dataset: bench"
        if line.startswith("dataset:")
        else line
        for line in config
    ]
    (run_dir / "config.yaml").write_text("\n".join(config) + "\n", encoding="utf-8")
    rows = [run(run_dir, "full"), run(run_dir, "plain")]
    print("| display | stdout lines | stderr lines | kept Snakemake log lines | wall (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['display']} | {row['stdout']} | {row['stderr']} | {row['log']} | {row['seconds']:.0f} |"
        )
    if args.keep is None:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
