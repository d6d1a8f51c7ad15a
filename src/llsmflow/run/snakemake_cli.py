"""``python -m llsmflow.run.snakemake_cli ARGS``: Snakemake's own command line, started without the SLURM
executor plugin's import-time ``scontrol`` probe.

Snakemake imports every installed executor plugin when it starts; the SLURM plugin runs ``scontrol show
config`` while importing, only to word a help text (the MinJobAge it reports). Where the SLURM client is
installed but no controller answers (a workstation with the client, a login node during maintenance, a test
machine between local clusters) that call waits ≈ 9 s before failing, on every start: each ``llsmflow run``,
dry run and status paid it (measured here: ``python -X importtime -c "import snakemake.api"`` 10.1 s, 9.1 s of it
that call). Here the call fails at once during the imports only, as it does where SLURM is not installed;
every later ``scontrol``/``squeue``/``sacct`` call of a SLURM run is made as usual.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["main", "without_scontrol_probe"]


@contextmanager
def without_scontrol_probe() -> Iterator[None]:
    """Within the block, ``subprocess.check_output(["scontrol", …])`` fails at once (FileNotFoundError)."""
    real = subprocess.check_output

    def check_output(command, *args, **kwargs):
        if isinstance(command, list | tuple) and command and os.path.basename(str(command[0])) == "scontrol":
            raise FileNotFoundError(command[0])
        return real(command, *args, **kwargs)

    subprocess.check_output = check_output
    try:
        yield
    finally:
        subprocess.check_output = real


def main(argv: list[str] | None = None) -> int:
    """Run Snakemake's command line with ``argv`` (default: this process's arguments); its exit status."""
    with without_scontrol_probe():
        import snakemake.cli  # the executor plugins are loaded here

    sys.argv[0] = "snakemake"
    try:
        snakemake.cli.main(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
