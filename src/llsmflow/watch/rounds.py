"""Running the rounds of ``llsmflow watch`` in one persistent Snakemake process (:mod:`llsmflow.watch.worker`).

A round is Snakemake's command line of ``llsmflow run`` (the same profile, cores, ``--rerun-incomplete``) on
the round's targets; it runs in a worker process started once per session, while the first volume is still
being written, so no round pays Snakemake's start-up (seconds; ≈ 10 s here, docs/watch.md). Still one
Snakemake run at a time: the worker runs one round after another, and the final run (a separate ``llsmflow
run``-like process) starts only once the worker has ended.

Around each round, as ``llsmflow run`` does (:func:`llsmflow.run.launch.launch`): the dataset's run lock is
held, and Snakemake's output is kept in ``work/<dataset>/logs/snakemake/<time>.log``. What a killed run left
behind (stale Snakemake locks, ``.partial`` outputs) is cleared once, before the first round: during the
session only this worker writes there. A round's failure reason is the first failed step's own message, or a
full disk, as for a run. On SLURM a round's jobs pending for a reason that cannot clear stop the round, as
they stop ``llsmflow run`` (:class:`llsmflow.run.launch.PendingWatch`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from llsmflow.run.config import snakemake_program
from llsmflow.run.launch import PendingWatch, first_step_error, run_environment
from llsmflow.run.lock import DatasetLock, clear_stale_snakemake_locks, remove_partial_outputs
from llsmflow.run.paths import run_paths, write_run_pointer


class Rounds:
    """``rounds(targets, env)`` runs one round and returns Snakemake's exit status. ``command`` is the
    Snakemake command line without targets (:func:`llsmflow.run.launch.snakemake_command`); ``env``: the
    environment variables the round sets (None: unset); ``prioritize``: targets whose jobs go first."""

    def __init__(self, command: list[str], config: dict, configfile: Path, workflow_root: Path, slurm: bool):
        self.command, self.config, self.slurm = list(command), config, slurm
        self.configfile, self.workflow_root = Path(configfile), Path(workflow_root)
        self.results, self.work = run_paths(config)
        self.process: subprocess.Popen | None = None
        self._results = None
        self._log = None
        self._log_lock = threading.Lock()
        self._cleared = False
        self.disk_full = False
        self.started_at = 0.0
        self._ready = None  # the worker whose imports are done
        self.error: str | None = None  # why the last round failed, when the worker ended
        self.log_path: Path | None = None  # the last round's Snakemake output

    # ------------------------------------------------------------------ the worker
    def start(self) -> None:
        """Start the worker (it imports Snakemake while the caller goes on)."""
        if self.process is not None and self.process.poll() is None:
            return
        read, write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llsmflow.watch.worker", str(write), *([] if self.slurm else ["--local"])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(write,), env=run_environment(self.work), text=True, encoding="utf-8", errors="replace",
        )
        os.close(write)
        self._results = os.fdopen(read, "r", encoding="utf-8")
        threading.Thread(target=self._forward, args=(self.process.stdout,), daemon=True).start()

    def _forward(self, stream) -> None:
        """Snakemake's output into the current round's log file."""
        for line in stream:
            if "[Errno 28]" in line:
                self.disk_full = True
            with self._log_lock:
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                else:  # outside a round (the worker's start, its end): passed through
                    sys.stderr.write(line)
                    sys.stderr.flush()

    def _reply(self) -> dict:
        line = self._results.readline()
        if not line:
            raise EOFError("the watch worker ended")
        return json.loads(line)

    def close(self, timeout: float = 120.0) -> None:
        """End the worker: no more rounds (it finishes the one it is running)."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(30)
        if self._results is not None:
            self._results.close()
            self._results = None

    # ------------------------------------------------------------------ one round
    def __call__(self, targets: list[str], env: dict[str, str | None], prioritize: list[str] = ()) -> int:
        from llsmflow.run.display import run_log_path

        self.start()
        with DatasetLock(self.config):
            if not self._cleared:
                clear_stale_snakemake_locks(Path.cwd(), [self.results, self.work])
                remove_partial_outputs([self.results, self.work])
                write_run_pointer(Path.cwd(), self.configfile, self.workflow_root, self.config)
                self._cleared = True
            self.started_at, self.disk_full, self.error = time.time(), False, None
            self.log_path = log_path = run_log_path(self.work, self.started_at)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # targets before --prioritize and --config, whose lists would take them (--config last of all)
            command = self.command[len(snakemake_program()) :]
            cut = command.index("--config") if "--config" in command else len(command)
            argv = command[:cut] + list(targets) + (["--prioritize", *prioritize] if prioritize else [])
            argv += command[cut:]
            with self._log_lock:
                self._log = open(log_path, "a", encoding="utf-8")
                self._log.write("running: " + " ".join(["snakemake", *argv]) + "\n")
            try:
                try:
                    if not self._wait_ready():
                        return self._ended()
                    self.process.stdin.write(json.dumps({"argv": argv, "env": env}) + "\n")
                    self.process.stdin.flush()
                    return self._round_status()
                except KeyboardInterrupt:
                    # Snakemake got the same Ctrl-C (one process group): let it stop its jobs and clean up
                    try:
                        self._reply()
                    except (EOFError, ValueError, OSError):
                        pass
                    raise
                except (EOFError, ValueError, OSError):
                    return self._ended()
            finally:
                with self._log_lock:
                    self._log.close()
                    self._log = None

    def _round_status(self) -> int:
        """Wait for the round's exit status; on SLURM, as for `llsmflow run`, a job of the round pending for a
        reason that waiting cannot clear interrupts the round (the worker gets SIGINT: Snakemake cancels its
        jobs and the round fails) instead of leaving it waiting forever; the reason becomes the round's
        failure reason."""
        watch = None
        if self.slurm:
            watch = PendingWatch(Path.cwd(), float(os.environ.get("LLSMFLOW_PENDING_POLL_S", "15")))
            watch.start(self.process)
        try:
            status = int(self._reply()["status"])
        finally:
            if watch is not None:
                watch.stop()
        if watch is not None and watch.reason:
            self.error = watch.reason
            return status or 1
        return status

    def _ended(self) -> int:
        """The worker ended during a round: the round failed; the next round starts a new worker."""
        process = self.process
        self.close(timeout=10)
        code = process.returncode if process is not None else None
        self.error = (
            f"the rounds' Snakemake process (llsmflow.watch.worker) ended with exit status {code}; its output "
            f"is in {self.log_path}"
        )
        return 1

    def _wait_ready(self) -> bool:
        """Wait for the worker's imports (only the first round waits)."""
        if self._ready is self.process:
            return True
        try:
            ok = bool(self._reply().get("ready"))
        except (EOFError, ValueError, OSError):
            return False
        self._ready = self.process
        return ok

    def failure_reason(self) -> str | None:
        """One line saying why the last round failed: the worker's end, a full disk, else the first failed
        step's message."""
        if self.error:
            return self.error
        if self.disk_full:
            return (
                f"no space left on the device; expected free space for the outputs under {self.work} and "
                f"{self.results}: free some, then run again (finished steps are kept)"
            )
        return first_step_error(self.work / "logs", self.started_at)
