"""Starting Snakemake for ``llsmflow run``: its command line, its environment, the run lock around it, and
the one line that says why a failed run failed.

The run holds the dataset's run lock (:mod:`llsmflow.run.lock`) while Snakemake runs; before starting it
clears what a killed run left behind and records the run pointer (:mod:`llsmflow.run.paths`). A dry run only
looks: it neither cleans up nor records anything.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.run.config import snakemake_base_command
from llsmflow.run.display import DEFAULT_DISPLAY, RunDisplay, choose_mode, run_log_path
from llsmflow.run.lock import DatasetLock, clear_stale_snakemake_locks, remove_partial_outputs
from llsmflow.run.paths import run_paths, write_run_pointer

log = logging.getLogger("llsmflow")

DEFAULT_PROFILE = "local"


def profile_dir(workflow_root: Path, profile: str) -> Path:
    """A Snakemake profile: a directory, or a name under the workflow's ``profiles/``."""
    path = Path(profile) if Path(profile).is_dir() else workflow_root / "profiles" / profile
    if not (path / "config.yaml").is_file():
        raise LlsmflowError(
            f"profile {profile!r} not found; expected a directory with config.yaml "
            f"(available: {', '.join(sorted(p.name for p in (workflow_root / 'profiles').iterdir()))})",
            path,
        )
    return path


# What `llsmflow watch` runs with (its rounds and its final run alike, or the final run would redo every volume
# in jobs of another unit): a job per volume, so that each volume is processed as soon as it is complete.
WATCH_CONFIG = {"jobs": {"unit": "volume"}}


def snakemake_command(
    workflow_root: Path,
    configfile: Path,
    profile: Path,
    cores,
    snakemake_args: Sequence[str],
    config: Mapping | None = None,
) -> list[str]:
    """The Snakemake command line of a run; ``--rerun-incomplete`` unless given: jobs a killed run left
    unfinished are re-run, not trusted. ``config`` (sections of the config, e.g. :data:`WATCH_CONFIG`) is
    passed as ``--config SECTION=<YAML>`` after everything else (``--config`` takes every word after it)."""
    command = [*snakemake_base_command(workflow_root, configfile), "--profile", str(profile)]
    if cores:
        command += ["--cores", str(cores)]
    if not {"--rerun-incomplete", "--ri"} & set(snakemake_args):
        command.append("--rerun-incomplete")
    command += list(snakemake_args)
    if config:
        import json

        # JSON is YAML: Snakemake parses each value with YAML
        command += ["--config", *(f"{key}={json.dumps(value)}" for key, value in config.items())]
    return command


def is_dry_run(snakemake_args: Sequence[str]) -> bool:
    """Whether the extra Snakemake arguments ask for a dry run (``--dry-run``, ``-n``, ``-np`` …)."""
    return any(
        a in ("--dry-run", "--dryrun") or (a.startswith("-") and not a.startswith("--") and "n" in a)
        for a in snakemake_args
    )


def first_step_error(log_dir: Path, since: float) -> str | None:
    """The first "step ... failed: <reason>" line of the step logs written since ``since`` (epoch s)."""
    if not log_dir.is_dir():
        return None
    failures = []
    for log_file in log_dir.rglob("*.log"):
        if log_file.parent.name == "snakemake":  # Snakemake's output of a whole run, not a step's log
            continue
        try:
            if log_file.stat().st_mtime < since:
                continue
            for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
                if " failed: " in line:
                    failures.append((log_file.stat().st_mtime, line.split(" failed: ", 1)[1].strip()))
                    break
        except OSError:
            continue
    return min(failures)[1] if failures else None


def call_watching_stderr(
    command: list[str], env: dict[str, str], watch: PendingWatch | None = None, display: RunDisplay | None = None
) -> tuple[int, str | None]:
    """Run ``command``, passing its stderr line by line to ``display`` (:class:`llsmflow.run.display.RunDisplay`:
    the progress view and the run's log file; None: through to our stderr as it is); return its exit status
    and, if a job failed for a full disk, what it was writing ("step RULE, writing OUTPUTS"). A full disk shows
    up in Snakemake's report of the failed job, not in the step logs, which are often on that same full disk."""
    seen = {"disk_full": False, "rule": None, "output": None}

    def forward(stream) -> None:
        rule = None
        for raw in stream:
            if display is not None:
                display.feed(raw)
            else:
                sys.stderr.buffer.write(raw)
                sys.stderr.flush()
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("Error in rule ") and line.endswith(":"):
                rule = line[len("Error in rule ") : -1]
            elif rule and line.startswith("output: ") and seen["rule"] is None:
                seen["rule"], seen["output"] = rule, line[len("output: ") :]
            if "[Errno 28]" in line:
                seen["disk_full"] = True

    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE) as process:
        assert process.stderr is not None
        if watch is not None:
            watch.start(process)
        if display is not None:
            display.start()
        try:
            forward(process.stderr)
        except KeyboardInterrupt:
            # Snakemake got the same Ctrl-C: keep its pipe open while it stops its jobs and cleans up
            forward(process.stderr)
            raise
        finally:
            if watch is not None:
                watch.stop()
            if display is not None:
                display.close(process.wait())
    where = None
    if seen["disk_full"]:
        where = f"step {seen['rule']}, writing {seen['output']}" if seen["rule"] else "a workflow step"
    return process.returncode, where


#: SLURM pending reasons that never clear by waiting: the request exceeds what the partition, its nodes, the
#: account or the QOS allow (``squeue`` %r). ``ReqNodeNotAvail`` only when the nodes it names do not exist.
NEVER_CLEARS = (
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxMemoryPerJob",
    "QOSMaxWallDurationPerJobLimit",
    "AssocMaxCpuPerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
    "ReqNodeNotAvail",
)


def _slurm_nodes(sinfo: str = "sinfo") -> set[str] | None:
    try:
        out = subprocess.run(
            [sinfo, "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.split())


def stuck_jobs(run_dir: Path, squeue: str = "squeue") -> list[tuple[str, str, str]]:
    """SLURM jobs submitted from ``run_dir`` (their working directory) that are pending for a reason that can
    never clear (:data:`NEVER_CLEARS`): ``[(job id, reason, comment)]`` (Snakemake puts the rule in the
    comment). Empty when ``squeue`` is not available."""
    try:
        out = subprocess.run(
            [squeue, "-h", "-t", "PENDING", "-o", "%i|%r|%Z|%k"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    here = Path(run_dir).resolve()
    stuck, nodes = [], None
    for line in out.splitlines():
        fields = line.split("|", 3)
        if len(fields) != 4 or Path(fields[2]).resolve() != here:
            continue
        job, reason, _, comment = fields
        if not reason.startswith(NEVER_CLEARS):
            continue
        if reason.startswith("ReqNodeNotAvail"):
            named = reason.partition("UnavailableNodes:")[2].split(",")
            nodes = _slurm_nodes() if nodes is None else nodes
            if not named or nodes is None or all(n in nodes for n in named if n):
                continue  # a known node that is down or drained may come back
        stuck.append((job, reason, comment))
    return stuck


class PendingWatch:
    """While a SLURM run runs: every ``interval`` s, look for its jobs pending for a reason that can never
    clear; when one is seen twice in a row, interrupt Snakemake (which cancels its jobs) and keep the reason.
    """

    def __init__(self, run_dir: Path, interval: float = 15.0):
        self.run_dir, self.interval = Path(run_dir), interval
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, process: subprocess.Popen) -> None:
        def watch() -> None:
            seen: set[str] = set()
            while not self._stop.wait(self.interval):
                stuck = stuck_jobs(self.run_dir)
                confirmed = [s for s in stuck if s[0] in seen]
                seen = {s[0] for s in stuck}
                if confirmed:
                    job, reason, comment = confirmed[0]
                    what = f" ({comment})" if comment and comment != "(null)" else ""
                    self.reason = (
                        f"SLURM job {job}{what} is pending for reason {reason}, which waiting cannot clear; "
                        "expected requests that the partition's nodes, the account and the QOS allow (llsmflow "
                        "estimate --profile … shows them; docs/hpc.md)"
                    )
                    log.error("llsmflow: %s; stopping the run", self.reason)
                    process.send_signal(signal.SIGINT)  # Snakemake cancels its SLURM jobs and stops
                    return

        self._thread = threading.Thread(target=watch, name="llsmflow-pending-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def run_environment(work: Path) -> dict[str, str]:
    """Environment of the workflow: caches that libraries would put in $HOME (matplotlib's font cache,
    Snakemake's source cache) go under the work directory unless the user chose a place for them."""
    env = dict(os.environ)
    cache = (work / ".cache").resolve()
    env.setdefault("XDG_CACHE_HOME", str(cache / "xdg"))
    env.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))
    return env


@dataclass
class Launch:
    """How a run went: Snakemake's exit ``status``, ``elapsed`` seconds, ``started_at`` (epoch s), and what a
    job was writing when the disk filled up (``disk_full``, else None)."""

    status: int
    elapsed: float
    started_at: float
    disk_full: str | None
    stuck: str | None = None
    log_path: Path | None = None


def launch(
    command: list[str],
    config: dict,
    configfile: Path,
    workflow_root: Path,
    dry_run: bool,
    echo: Callable[[str], None] | None = None,
    slurm: bool = False,
    display: str = DEFAULT_DISPLAY,
) -> Launch:
    """Run Snakemake under the dataset's run lock, in the current directory (the run directory); ``echo``
    shows the command (default: printed, flushed before Snakemake writes). ``slurm``: watch the run's
    pending jobs (:class:`PendingWatch`); the interval is ``LLSMFLOW_PENDING_POLL_S`` (default 15 s).
    ``display``: how the run is shown (:data:`llsmflow.run.display.DISPLAY_MODES`); except in a dry run,
    Snakemake's whole output is kept in ``work/<dataset>/logs/snakemake/<time>.log`` (``Launch.log_path``)."""
    echo = echo or functools.partial(print, flush=True)
    results, work = run_paths(config)
    # shared storage: outputs follow the user's umask, but are never writable by everyone
    umask = os.umask(0)
    os.umask(umask | 0o002)
    try:
        with DatasetLock(config):
            if not dry_run:
                for stale in clear_stale_snakemake_locks(Path.cwd(), [results, work]):
                    log.warning("removed a stale Snakemake lock of an interrupted run: %s", stale)
                for partial in remove_partial_outputs([results, work]):
                    log.warning("removed an unfinished output of an interrupted run: %s", partial)
                write_run_pointer(Path.cwd(), configfile, workflow_root, config)
            echo("running: " + " ".join(command))
            start, started_at = time.perf_counter(), time.time()
            watch = None
            if slurm and not dry_run:
                watch = PendingWatch(Path.cwd(), float(os.environ.get("LLSMFLOW_PENDING_POLL_S", "15")))
            mode = choose_mode(display, sys.stdout, dry_run)
            log_path = None if dry_run else run_log_path(work, started_at)
            shown = None
            if mode != "full" or log_path is not None:
                shown = RunDisplay(mode, log_path, run_dir=Path.cwd())
            status, disk_full = call_watching_stderr(command, run_environment(work), watch, shown)
            elapsed = time.perf_counter() - start
    finally:
        os.umask(umask)
    return Launch(status, elapsed, started_at, disk_full, watch.reason if watch is not None else None, log_path)


def failure_reason(config: dict, outcome: Launch) -> str | None:
    """One line saying why a run failed: a full disk, else the first failed step's own message."""
    results, work = run_paths(config)
    if outcome.stuck:
        return outcome.stuck
    if outcome.disk_full:
        return (
            f"no space left on the device ({outcome.disk_full}); expected free space for the "
            f"outputs under {work} and {results}: free some, or point work_dir/results_dir to a larger "
            "disk, then run again (finished steps are kept)"
        )
    return first_step_error(work / "logs", outcome.started_at)
