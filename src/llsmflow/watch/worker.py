"""The persistent Snakemake process of ``llsmflow watch``: imports Snakemake once, then runs one round after
another (``python -m llsmflow.watch.worker RESULT_FD [--local]``; started and driven by :mod:`llsmflow.watch.rounds`).

Each request is one JSON line on stdin: ``{"argv": [...], "env": {NAME: value or null}}``; the round is
Snakemake's own command line (``snakemake.cli.main``, the profile included, exactly what ``llsmflow run``
starts as a process), run in this process after the environment is set; its exit status goes back as one JSON
line ``{"status": N}`` on the file descriptor ``RESULT_FD`` (Snakemake writes to stdout and stderr itself).
The first line on ``RESULT_FD``, ``{"ready": true}``, says the imports are done.

Why a process of our own instead of ``snakemake`` per round: starting Snakemake costs seconds before it reads
the Snakefile (its imports, and its executor plugins probing the cluster at import time: the SLURM plugin runs
``scontrol show config``, which waits ≈ 9 s for a controller where the SLURM client is installed without a
reachable controller); a watch round is a small run of a few jobs, so that start-up was most of a volume's
latency (docs/watch.md, "Measured"). Snakemake's API is used through its command-line entry point because
that is what reads the profile: the settings of a round are exactly those of ``llsmflow run``.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext

from llsmflow.run.snakemake_cli import without_scontrol_probe


def serve(result_fd: int, local: bool = False) -> int:
    """Serve rounds until stdin closes. ``local``: no SLURM in this session, so Snakemake's SLURM executor
    plugin, imported with every plugin, is imported without asking ``scontrol`` (its import-time probe only
    words a help text, and waits ≈ 9 s where the SLURM client is installed but no controller answers)."""
    with without_scontrol_probe() if local else nullcontext():
        import snakemake.cli  # the start-up paid once per watch session

    # the requests come on a private descriptor: the jobs Snakemake starts inherit /dev/null as stdin
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.fdopen(result_fd, "w", buffering=1, encoding="utf-8")
    out.write(json.dumps({"ready": True}) + "\n")
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        for name, value in (request.get("env") or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            snakemake.cli.main(list(request["argv"]))
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except KeyboardInterrupt:
            status = 130
        sys.stdout.flush()
        sys.stderr.flush()
        out.write(json.dumps({"status": status}) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(serve(int(sys.argv[1]), "--local" in sys.argv[2:]))
    except KeyboardInterrupt:  # Ctrl-C between rounds: nothing to clean up
        sys.exit(130)
