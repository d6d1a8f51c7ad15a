"""One workflow run per dataset (its results and work directories), and a clean restart after a kill.

``llsmflow run`` takes the dataset's *run locks* before it starts Snakemake, with the effective config (after
``--config``/``--configfile`` overrides): ``<results_dir>/.llsmflow-<dataset>.lock`` and
``<work_dir>/.llsmflow-<dataset>.lock`` (:class:`DatasetLock`; one when both directories are the same). Each is
a small JSON file naming the process (pid, host, start time, working directory). It is created atomically
(written under a private name, then hard-linked to the lock's name, which fails if the lock exists; the
classic NFS-safe recipe), so two runs on the same results directory cannot both hold it, even from two nodes
of a cluster sharing the file system. A second run refuses with a message naming the lock and its holder.

A run killed with SIGKILL (out-of-memory killer, a job scheduler's time limit, a user's ``kill -9``) leaves
three things behind, all handled here while the run lock is held:

* its run lock: stale when the holder ran on this host and its pid no longer runs ``llsmflow``; a lock from
  another host is never broken automatically (the message says how to remove it);
* Snakemake's own locks (``.snakemake/locks/N.{input,output}.lock``, lists of paths): those naming this
  dataset's results or work directory can only belong to a dead run once the run lock is ours, so they are
  removed, and no other lock (another dataset's run in the same directory) is touched;
* temporary outputs of :func:`llsmflow.io.atomic_output` (``.<name>.<random>.partial``) under this dataset's
  results and work directories: never a finished output, removed.

Snakemake's ``--rerun-incomplete`` (added by ``llsmflow run``) then re-runs the jobs that were running.

Why not ``snakemake --unlock``: it removes every lock in the working directory, including those of another
live run there; and Snakemake's locks alone do not stop two runs whose job lists differ (e.g. two configs
writing to one results directory) from interleaving.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from llsmflow.errors import LlsmflowError

PARTIAL_SUFFIX = ".partial"


def lock_path(results_dir: str | Path, dataset: str) -> Path:
    """The run lock of ``dataset`` under ``results_dir`` (beside, not inside, the dataset's results, so that
    the dataset's checksum manifest never lists it)."""
    return Path(results_dir) / f".llsmflow-{dataset}.lock"


def dataset_lock_paths(config: dict, run_dir: str | Path = ".") -> list[Path]:
    """The run locks of a dataset: one in its ``results_dir`` and one in its ``work_dir`` (one when both are
    the same directory), so that no two runs share the dataset's results OR its work directory."""
    paths = {}
    for key in ("results_dir", "work_dir"):
        path = lock_path(Path(run_dir, config[key]), config["dataset"])
        paths.setdefault(Path(os.path.abspath(path)).resolve(), path)
    return [paths[key] for key in sorted(paths)]


class DatasetLock:
    """The run locks of a dataset (:func:`dataset_lock_paths`) taken together, or none; a context manager."""

    def __init__(self, config: dict, run_dir: str | Path = "."):
        self.locks = [RunLock(path) for path in dataset_lock_paths(config, run_dir)]

    def acquire(self) -> DatasetLock:
        taken = []
        try:
            for lock in self.locks:
                taken.append(lock.acquire())
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return self

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()

    def __enter__(self) -> DatasetLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _pid_runs_llsmflow(pid: int) -> bool:
    """Whether ``pid`` is alive on this host and (where /proc tells) runs llsmflow, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's: not ours to judge
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"llsmflow" in cmdline.read_bytes()
    except OSError:
        return True  # no /proc: alive is all we know


class RunLock:
    """Exclusive lock file (one of a dataset's :class:`DatasetLock`); a context manager.

    Parameters
    ----------
    path:
        The lock file (see :func:`lock_path`).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.held = False

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        return not _pid_runs_llsmflow(holder["pid"])

    def acquire(self) -> RunLock:
        """Take the lock, clearing a stale one left by a dead run on this host.

        Raises
        ------
        LlsmflowError
            Another live run (or a run on another host) holds the lock; the message names it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cwd": os.getcwd(),
        }
        private = self.path.with_name(f"{self.path.name}.{me['host']}.{me['pid']}")
        private.write_text(json.dumps(me) + "\n", encoding="utf-8")
        try:
            for _ in range(2):
                try:
                    os.link(private, self.path)  # atomic: fails if the lock exists, even on NFS
                    self.held = True
                    return self
                except FileExistsError:
                    holder = self._holder()
                    if holder is None:
                        continue  # released meanwhile: try again
                    if holder and self._is_stale(holder):
                        self.path.unlink(missing_ok=True)
                        continue
                    raise LlsmflowError(
                        "the dataset's results or work directory is in use by another llsmflow run "
                        f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                        f"{holder.get('started', '?')}, in {holder.get('cwd', '?')}); expected one run at a "
                        "time: wait for it to finish, or delete this lock file if that run is gone",
                        self.path,
                    ) from None
            raise LlsmflowError("could not take the run lock (it keeps changing); try again", self.path)
        finally:
            private.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            holder = self._holder() or {}
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _under(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


def clear_stale_snakemake_locks(workdir: str | Path, roots: list[str | Path]) -> list[Path]:
    """Remove Snakemake lock files (in ``workdir/.snakemake/locks``) that name a path under ``roots``.

    Call only while holding the :class:`RunLock` of the dataset whose directories ``roots`` are: then no live
    run can own such a lock. Both halves (``N.input.lock``, ``N.output.lock``) of a matching lock are removed.

    Returns
    -------
    list of Path
        The lock files removed.
    """
    workdir = Path(workdir)
    lockdir = workdir / ".snakemake" / "locks"
    if not lockdir.is_dir():
        return []
    resolved = [Path(workdir, r).resolve() for r in roots]
    removed = []
    for lock in sorted(lockdir.glob("*.output.lock")):
        try:
            keys = [line for line in lock.read_text(encoding="utf-8").splitlines() if line]
        except OSError:
            continue
        if any(_under(Path(workdir, key), resolved) for key in keys):
            number = lock.name.split(".", 1)[0]
            for half in (lock, lockdir / f"{number}.input.lock"):
                if half.exists():
                    half.unlink()
                    removed.append(half)
    return removed


def remove_partial_outputs(roots: list[str | Path]) -> list[Path]:
    """Remove temporary outputs left by interrupted writers (``.<name>.<random>.partial``) under ``roots``.

    Call only while holding the :class:`RunLock`: a live writer's temporary output must not be removed.
    """
    removed = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                    path = Path(dirpath, name)
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                    removed.append(path)
            dirnames[:] = [d for d in dirnames if not (d.startswith(".") and d.endswith(PARTIAL_SUFFIX))]
    return removed
