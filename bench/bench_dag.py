"""Growth laws of the workflow's planning with the number of volumes: the Snakemake dry run, `llsmflow status`,
`llsmflow estimate` (time and peak memory at N volumes = 4 tiles × 2 channels × T, from placeholder stacks).

    PYTHONPATH=$PWD/src .venv/bin/python bench/bench_dag.py --volumes 104 1000 5000 20000
    PYTHONPATH=/work/main/src .venv/bin/python bench/bench_dag.py --repo /work/main --volumes 104 1000  # baseline

Each command runs in a fresh process; peak memory is its largest process's resident set (``ru_maxrss``).
``sbatch`` is ``llsmflow estimate --profile profiles/slurm``: the SLURM submissions of the run with the profile's
groups. ``start`` is a real run limited to the ingest job (``--until ingest``): what a run costs before its first job,
and it leaves the job plan that ``status`` then reads (without it, status falls back on a dry run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_acquisition import build_acquisition, run_measured, workflow_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, nargs="+", default=[104, 1000, 5000, 20000])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llsmflow-bench-scale")
    parser.add_argument("--what", nargs="+", default=["dryrun", "start", "status", "estimate", "sbatch"])
    parser.add_argument(
        "--profile", type=Path, default=None, help="profile of `sbatch` (default: the repository's profiles/slurm)"
    )
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    env = dict(os.environ, PYTHONPATH=str(repo / "src"))
    bindir = Path(sys.executable).parent
    print(f"repo {repo}; python {sys.executable}")
    print(f"{'volumes':>8} {'what':<10} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}  result")
    for n in args.volumes:
        run_dir = args.workdir / f"v{n}"
        raw = build_acquisition(run_dir, n, args.workdir)
        config = workflow_config(run_dir, raw)
        commands = {
            "dryrun": [
                str(bindir / "snakemake"),
                "--snakefile",
                str(repo / "Snakefile"),
                "--configfile",
                str(config),
                "--dry-run",
                "--nolock",
                "--quiet",
                "rules",
                "--cores",
                "1",
            ],
            # a real run that starts (DAG, onstart writes the job plan) and runs only the ingest job
            "start": [
                str(bindir / "snakemake"),
                "--snakefile",
                str(repo / "Snakefile"),
                "--configfile",
                str(config),
                "--until",
                "ingest",
                "--quiet",
                "rules",
                "--cores",
                "1",
            ],
            "status": [str(bindir / "llsmflow"), "status", "--configfile", str(config), "--workflow-dir", str(repo)],
            "estimate": [str(bindir / "llsmflow"), "estimate", "--configfile", str(config)],
            # the SLURM submissions of the run with the profile's groups (`llsmflow estimate --profile`)
            "sbatch": [
                str(bindir / "llsmflow"),
                "estimate",
                "--configfile",
                str(config),
                "--profile",
                str(args.profile or repo / "profiles" / "slurm"),
            ],
        }
        for what in args.what:
            result = run_measured(commands[what], run_dir, env=env, timeout=args.timeout)
            tail = [line for line in result["out"].splitlines() if line.strip()]
            summary = _summary(what, tail) if result["rc"] == 0 else f"rc {result['rc']}: {' | '.join(tail[-3:])}"
            wall = f"{result['seconds']:.1f}" if result["seconds"] is not None else "timeout"
            cpu = f"{result['cpu_s']:.1f}" if result["cpu_s"] is not None else "–"
            peak = f"{result['peak_mb']:.0f}" if result["peak_mb"] is not None else "–"
            print(f"{n:>8} {what:<10} {wall:>8} {cpu:>8} {peak:>9}  {summary}", flush=True)
    return 0


def _summary(what: str, lines: list[str]) -> str:
    if what == "dryrun":
        total = [line for line in lines if line.split()[:1] == ["total"]]
        return f"jobs: {total[-1].split()[-1]}" if total else ""
    if what == "start":
        done = [line for line in lines if "steps (" in line and "done" in line]
        return done[-1] if done else ""
    if what == "status":
        left = [line for line in lines if line.startswith("left:")]
        return left[-1] if left else ""
    subs = [line for line in lines if line.startswith("sbatch submissions")]
    return subs[-1] if subs else ""


if __name__ == "__main__":
    raise SystemExit(main())
