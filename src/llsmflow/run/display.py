"""What a workflow run shows while it runs: a live progress view on a terminal, a short plain log elsewhere.

Snakemake's own output is long (a block of eight lines per job, ``Shell command: None`` after every script
job, its banner and tables): about 1,300 lines for the 65 jobs of the tiny synthetic acquisition. It is kept
in full in a log file under ``work/<dataset>/logs/snakemake/`` and read here line by line
(:class:`RunState`), and what is shown is:

``live`` (stdout is a terminal)
    one line per step, redrawn in place: jobs done/total, the jobs running and the running job's own progress
    (the last ``label done/total (p %, … left)`` line that :func:`llsmflow.progress.progress_logger` wrote to
    its log file, which the job block names), and the time the step has left at the rate of its finished jobs.
``plain`` (stdout is a file or a pipe: batch jobs, CI)
    one line when a step has finished all its jobs, and at most one progress line per ``interval_s``.
``full``
    Snakemake's output as it comes (a dry run, or ``llsmflow run --display full``).

In every mode warnings and errors of the jobs are shown as they come, and a failed job is named with its log
file and the error line of that log; a Snakemake error before any job ran is shown in full.

The view is drawn with a few ANSI sequences (cursor up, clear to the end of the screen) rather than with a
terminal library (rich, tqdm, blessed): it is a dozen lines of text redrawn twice a second, and the same
module serves ``llsmflow run`` and a future ``llsmflow watch`` (which reads a run's log file instead of its
pipe) without a dependency for either.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from llsmflow.progress import format_seconds

__all__ = ["DISPLAY_MODES", "DEFAULT_DISPLAY", "RunDisplay", "RunState", "choose_mode", "run_log_path"]

#: how a run is shown; ``auto``: ``live`` when stdout is a terminal, else ``plain``
DISPLAY_MODES = ("auto", "live", "plain", "full")
DEFAULT_DISPLAY = "auto"

_JOB_HEADER = re.compile(r"^(?:local)?rule (?P<rule>[\w-]+):$")
_ERROR_HEADER = re.compile(r"^Error in rule (?P<rule>[\w-]+):$")
_FINISHED = re.compile(r"^Finished jobid: (?P<jobid>\d+) \(Rule: (?P<rule>[\w-]+)\)")
_FIELD = re.compile(r"^\s+(?P<key>\w+): (?P<value>.*)$")
#: a line of the ``logging`` format the jobs use (llsmflow.run.steps.configure_logging)
_JOB_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<name>\S+) (?P<level>[A-Z]+) (?P<message>.*)$")
#: a line of llsmflow.progress.progress_logger
_PROGRESS = re.compile(
    r"^(?P<label>.+?) (?P<done>\d+)/(?P<total>\d+) \((?P<percent>\d+) %, (?P<elapsed>.+?) elapsed"
    r"(?:, ~(?P<left>.+?) left)?\)$"
)
_ANSI_UP_CLEAR = "\x1b[{n}F\x1b[J"


def run_log_path(work: Path, started_at: float) -> Path:
    """Where a run's complete Snakemake output goes: ``<work>/logs/snakemake/<YYYYmmdd-HHMMSS>.log``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at))
    return Path(work) / "logs" / "snakemake" / f"{stamp}.log"


def choose_mode(mode: str, stream: TextIO, dry_run: bool = False) -> str:
    """``live``, ``plain`` or ``full`` for ``mode`` (one of :data:`DISPLAY_MODES`): a dry run is shown in
    full (its listing is what was asked for); ``auto`` is ``live`` on a terminal that can redraw (not
    ``TERM=dumb``), else ``plain``."""
    import os

    if mode not in DISPLAY_MODES:
        raise ValueError(f"display {mode!r} is invalid; expected one of {', '.join(DISPLAY_MODES)}")
    if dry_run:
        return "full"
    if mode != "auto":
        return mode
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return "live" if terminal and os.environ.get("TERM", "") != "dumb" else "plain"


@dataclass
class Job:
    """A job Snakemake started: its ``jobid``, ``rule``, ``log`` file (or None), ``wildcards`` and when it
    was seen to start (``started``, monotonic s)."""

    jobid: str
    rule: str
    log: str | None = None
    wildcards: str = ""
    started: float = 0.0


@dataclass
class Failure:
    """A failed job as Snakemake reports it (``Error in rule …``)."""

    rule: str
    jobid: str = ""
    log: str | None = None
    wildcards: str = ""
    message: str = ""


@dataclass
class RunState:
    """What Snakemake's output says about a run, line by line (:meth:`feed`).

    ``totals`` are the jobs per rule of its "Job stats" table (``all`` left out), ``finished`` the jobs per
    rule it reported finished, ``done`` the jobs finished and ``total`` the table's total (Snakemake's own
    "K of N steps done" counts the whole DAG even with ``--until``), ``running`` the jobs started and not
    finished, ``failures`` the failed jobs.
    """

    totals: dict[str, int] = field(default_factory=dict)
    finished: Counter = field(default_factory=Counter)
    done: int = 0
    total: int | None = None
    running: dict[str, Job] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)
    first_start: dict[str, float] = field(default_factory=dict)
    last_end: dict[str, float] = field(default_factory=dict)
    _block: dict | None = None
    _in_stats: bool = False

    def feed(self, line: str, now: float) -> str | None:
        """Take one line of Snakemake's output (without its newline) seen at ``now`` (monotonic s).

        Returns what the line completed: ``"stats"`` (the job table), ``"finished"`` (a job), ``"failed"``
        (a failed job's block), or None.
        """
        event = None
        if self._block is not None:
            match = _FIELD.match(line)
            if match:
                self._block[match["key"]] = match["value"]
                return None
            event = self._close_block(now)
        if self._in_stats:
            return self._stats_line(line) or event
        stripped = line.strip()
        if stripped == "Job stats:":
            self._in_stats, self.totals = True, {}
            return event
        match = _JOB_HEADER.match(stripped)
        if match:
            self._block = {"kind": "job", "rule": match["rule"]}
            return event
        match = _ERROR_HEADER.match(stripped)
        if match:
            self._block = {"kind": "error", "rule": match["rule"]}
            return event
        match = _FINISHED.match(stripped)
        if match:
            job = self.running.pop(match["jobid"], None)
            rule = match["rule"]
            self.done += 1
            if rule != "all":
                self.finished[rule] += 1
                self.last_end[rule] = now
                if job is not None:
                    self.durations.setdefault(rule, []).append(now - job.started)
            return "finished"
        return event

    def close(self, now: float) -> str | None:
        """The end of the output: a block still open is complete."""
        return self._close_block(now) if self._block is not None else None

    def _stats_line(self, line: str) -> str | None:
        fields = line.split()
        if not fields or fields[0] == "job" or set(fields[0]) == {"-"}:
            return None
        if len(fields) == 2 and fields[1].isdigit():
            if fields[0] == "total":
                self._in_stats = False
                self.total = int(fields[1])
                return "stats"
            if fields[0] != "all":
                self.totals[fields[0]] = int(fields[1])
            return None
        self._in_stats = False
        return "stats"

    def _close_block(self, now: float) -> str | None:
        block, self._block = self._block, None
        assert block is not None
        log = (block.get("log") or "").replace("(check log file(s) for error details)", "").strip() or None
        if log and "," in log:  # several log files: the first is the step's own
            log = log.split(",")[0].strip()
        if block["kind"] == "job":
            jobid = block.get("jobid", "")
            if jobid and block["rule"] != "all":
                self.running[jobid] = Job(jobid, block["rule"], log, block.get("wildcards", ""), now)
                self.first_start.setdefault(block["rule"], now)
            return None
        job = self.running.pop(block.get("jobid", ""), None)
        wildcards = block.get("wildcards") or (job.wildcards if job is not None else "")
        self.failures.append(
            Failure(block["rule"], block.get("jobid", ""), log, wildcards, block.get("message", ""))
        )
        return "failed"

    def left_s(self, rule: str) -> float | None:
        """Time (s) the rule has left at the mean run time of its finished jobs, with as many in parallel
        as are running now; None before one has finished."""
        times = self.durations.get(rule)
        if not times:
            return None
        remaining = self.totals.get(rule, 0) - self.finished[rule]
        parallel = max(1, sum(1 for job in self.running.values() if job.rule == rule))
        return max(0.0, sum(times) / len(times) * remaining / parallel)


def job_progress(log_file: str | Path | None, run_dir: Path, tail_bytes: int = 8192) -> str | None:
    """The last progress line (:func:`llsmflow.progress.progress_logger`) of a job's log file, shortened to
    ``label done/total (p %, ~… left)``; None when it has none (yet)."""
    if not log_file:
        return None
    path = Path(log_file)
    path = path if path.is_absolute() else run_dir / path
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        match = _JOB_LOG.match(line)
        if not match:
            continue
        progress = _PROGRESS.match(match["message"])
        if progress:
            left = f", ~{progress['left']} left" if progress["left"] else ""
            return (
                f"{progress['label']} {progress['done']}/{progress['total']} ({progress['percent']} %{left})"
            )
        if match["message"].startswith("step ") and " done in " in match["message"]:
            return None  # the job has finished its work
    return None


class RunDisplay:
    """Shows a run from Snakemake's output, which it keeps in full in ``log_path``.

    Parameters
    ----------
    mode : str
        ``live``, ``plain`` or ``full`` (:func:`choose_mode`).
    log_path : path or None
        Where all of Snakemake's output is written (None: not kept, e.g. a dry run).
    out, err : text streams
        Where the view and the plain lines go (``out``), and the warnings and errors (``err``).
    run_dir : path
        The directory the run runs in (job log paths are relative to it).
    interval_s : float
        ``plain``: least time (s) between two progress lines. ``live``: time between two redraws.
    clock : callable
        Monotonic time in seconds.

    Feed it each line of Snakemake's output (:meth:`feed`, bytes with their newline); :meth:`start` starts
    the redraws of the live view and :meth:`close` draws the last view and closes the log file. Thread-safe:
    lines come from the thread reading Snakemake's pipe.
    """

    def __init__(
        self,
        mode: str,
        log_path: str | Path | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
        run_dir: str | Path = ".",
        interval_s: float | None = None,
        clock=time.monotonic,
    ):
        if mode not in ("live", "plain", "full"):
            raise ValueError(f"display mode {mode!r} is invalid; expected live, plain or full")
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.run_dir = Path(run_dir)
        self.interval_s = interval_s if interval_s is not None else (0.5 if mode == "live" else 30.0)
        self.clock = clock
        self.state = RunState()
        self.log_path = Path(log_path) if log_path else None
        self._log = None
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log = self.log_path.open("wb")
            except OSError as error:  # the run itself will say what is wrong with the work directory
                self.err.write(f"llsmflow run: warning: Snakemake's output not kept ({error})\n")
                self.log_path = None
        self._lock = threading.RLock()
        self._start = clock()
        self._last_plain = self._start
        self._drawn = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tail: list[str] = []  # Snakemake's lines that are not job blocks or job logs, for errors
        self._reported: set[int] = set()
        self._stats_shown = False
        self._rules_reported: set[str] = set()
        self._progress: dict[str, str] = {}  # job id -> its last progress line
        self._shown: set[str] = set()

    # ------------------------------------------------------------------------------------------- input

    def feed(self, raw: bytes) -> None:
        """One line of Snakemake's output, as read from its pipe."""
        with self._lock:
            if self._log is not None:
                self._log.write(raw)
                self._log.flush()
            if self.mode == "full":
                self.err.write(raw.decode("utf-8", "replace"))
                self.err.flush()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            now = self.clock()
            event = self.state.feed(line, now)
            if self.mode == "full":
                return
            self._keep_for_errors(line)
            job_log = _JOB_LOG.match(line)
            if (
                job_log
                and job_log["level"] in ("WARNING", "ERROR", "CRITICAL")
                and " failed: " not in job_log["message"]  # a failed step: reported with its log file
                and job_log["message"] not in self._shown
            ):
                self._shown.add(job_log["message"])  # Snakemake repeats a failed job's log
                self._message(f"{job_log['level']}: {job_log['message']}", self.err)
            if event == "stats":
                self._show_plan()
            elif event == "failed":
                self._report_failures()
            elif event == "finished" and self.mode == "plain":
                self._plain_finished()
            if self.mode == "plain" and now - self._last_plain >= self.interval_s:
                self._plain_progress(now)

    def _keep_for_errors(self, line: str) -> None:
        if line.startswith("Building DAG of jobs"):  # what came before is Snakemake's banner
            self._tail = []
        if _JOB_LOG.match(line) or _FIELD.match(line) or not line.strip():
            return
        self._tail = [*self._tail[-59:], line]

    # ------------------------------------------------------------------------------------------- output

    def _message(self, text: str, stream: TextIO) -> None:
        """A line above the live view (which is redrawn below it), or a plain line."""
        if self.mode == "live":
            self._erase()
        stream.write(text + "\n")
        stream.flush()
        if self.mode == "live":
            self._draw()

    def _show_plan(self) -> None:
        if self._stats_shown or not self.state.totals:
            return
        self._stats_shown = True
        total = self.state.total or sum(self.state.totals.values())
        plan = ", ".join(f"{rule} {n}" for rule, n in self.state.totals.items())
        where = f"; Snakemake's full output: {self.log_path}" if self.log_path else ""
        self._message(f"llsmflow run: {total} jobs ({plan}){where}", self.out)

    def _plain_finished(self) -> None:
        state = self.state
        for rule, total in state.totals.items():
            if state.finished[rule] >= total and rule not in self._rules_reported:
                self._rules_reported.add(rule)
                took = state.last_end[rule] - state.first_start.get(rule, state.last_end[rule])
                self._message(
                    f"  [{state.done}/{state.total or '?'}] {rule}: {total}/{total} jobs done ({format_seconds(took)})",
                    self.out,
                )

    def _plain_progress(self, now: float) -> None:
        self._last_plain = now
        state = self.state
        running = self._running_lines()
        if not running:
            return
        self._message(
            f"  [{state.done}/{state.total or '?'}] {format_seconds(now - self._start)} elapsed; running: "
            + "; ".join(running),
            self.out,
        )

    def _running_lines(self) -> list[str]:
        """``rule done/total (progress of its latest job, ~left)`` for each rule with running jobs."""
        state, parts = self.state, []
        by_rule: dict[str, list[Job]] = {}
        for job in state.running.values():
            by_rule.setdefault(job.rule, []).append(job)
        for rule, jobs in by_rule.items():
            progress = self._rule_progress(jobs)
            text = f"{rule} {state.finished[rule]}/{state.totals.get(rule, '?')}"
            if progress:
                text += f", {progress}"
            parts.append(text)
        return parts

    def _rule_progress(self, jobs: list[Job]) -> str | None:
        """The progress of the longest-running of ``jobs`` that has reported some (the last line it logged,
        kept until it logs the next)."""
        for job in sorted(jobs, key=lambda j: j.started):
            progress = job_progress(job.log, self.run_dir)
            if progress:
                self._progress[job.jobid] = progress
            if job.jobid in self._progress:
                return self._progress[job.jobid]
        return None

    def view_lines(self) -> list[str]:
        """The live view: a head line (jobs done/total, time elapsed), then one line per step."""
        state, now = self.state, self.clock()
        total = state.total or sum(state.totals.values()) or None
        share = f" ({100 * state.done // total} %)" if total else ""
        lines = [
            f"llsmflow run: {state.done}/{total or '?'} jobs done{share}, "
            f"{format_seconds(now - self._start)} elapsed"
        ]
        width = max((len(rule) for rule in state.totals), default=8)
        for rule, jobs in state.totals.items():
            done = state.finished[rule]
            running = [j for j in state.running.values() if j.rule == rule]
            bar_len = 12
            filled = bar_len * done // jobs if jobs else bar_len
            bar = "#" * filled + "-" * (bar_len - filled)
            line = f"  {rule:<{width}} {done:>4}/{jobs:<4} [{bar}]"
            if done >= jobs:
                start = state.first_start.get(rule)
                took = state.last_end[rule] - start if start is not None and rule in state.last_end else None
                line += " done" + (f" in {format_seconds(took)}" if took is not None else "")
            elif running:
                line += f" {len(running)} running"
                progress = self._rule_progress(running)
                if progress:
                    line += f" · {progress}"
                left = state.left_s(rule)
                if left is not None:
                    line += f" · step ~{format_seconds(left)} left"
            lines.append(line)
        return lines

    def _erase(self) -> None:
        if self._drawn:
            self.out.write(_ANSI_UP_CLEAR.format(n=self._drawn))
            self._drawn = 0

    def _draw(self) -> None:
        columns = shutil.get_terminal_size((100, 24)).columns
        lines = [line[: max(20, columns - 1)] for line in self.view_lines()]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    def redraw(self) -> None:
        """Draw the live view again (in place)."""
        with self._lock:
            self._erase()
            self._draw()

    # ------------------------------------------------------------------------------------------- failures

    def _report_failures(self) -> None:
        for index, failure in enumerate(self.state.failures):
            if index in self._reported:
                continue
            self._reported.add(index)
            for line in self.failure_lines(failure):
                self._message(line, self.err)

    def failure_lines(self, failure: Failure) -> list[str]:
        """A failed job: the step, its wildcards and its log file; and what its log says when that is not the
        step's own one-line error (``step … failed: …``, which ``llsmflow run: error:`` shows), e.g. the end
        of a crash."""
        what = f" ({failure.wildcards})" if failure.wildcards else ""
        where = f"; log: {failure.log}" if failure.log else ""
        lines = [f"llsmflow run: step {failure.rule}{what} failed{where}"]
        reason = _log_error(failure.log, self.run_dir) if failure.log else None
        if reason and not (reason.startswith("step ") and " failed: " in reason):
            lines.append(f"  {reason}")
        elif not failure.log and failure.message and failure.message != "None":
            lines.append(f"  {failure.message}")
        return lines

    # ------------------------------------------------------------------------------------------- life

    def start(self) -> None:
        """Start redrawing the live view every ``interval_s``, or writing the plain progress lines (also when
        Snakemake writes nothing for a while, as while SLURM jobs run); ``full``: nothing to do."""
        if self.mode == "full":
            return
        if self.mode == "live":
            self.redraw()

        def loop() -> None:
            wait = self.interval_s if self.mode == "live" else min(5.0, self.interval_s)
            while not self._stop.wait(wait):
                if self.mode == "live":
                    self.redraw()
                    continue
                with self._lock:
                    now = self.clock()
                    if now - self._last_plain >= self.interval_s:
                        self._plain_progress(now)

        self._thread = threading.Thread(target=loop, name="llsmflow-run-display", daemon=True)
        self._thread.start()

    def close(self, status: int | None = None) -> None:
        """Stop redrawing, draw the last view, and show Snakemake's own error when the run failed before
        any job did (a bad Snakefile, a missing input); closes the log file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.state.close(self.clock()) == "failed":
                self._report_failures()
            if self.mode == "live":
                self.redraw()
            elif self.mode == "plain" and status == 0 and self.state.total:
                state = self.state
                self.out.write(
                    f"llsmflow run: {state.done}/{state.total or state.done} jobs done in "
                    f"{format_seconds(self.clock() - self._start)}\n"
                )
                self.out.flush()
            if self.mode != "full" and status not in (None, 0) and not self.state.failures:
                for line in self._tail[-30:]:
                    self.err.write(line + "\n")
            if self.mode != "full" and status not in (None, 0) and self.log_path is not None:
                self.err.write(f"llsmflow run: Snakemake's full output: {self.log_path}\n")
            self.err.flush()
            if self._log is not None:
                self._log.close()
                self._log = None


def _log_error(log_file: str, run_dir: Path) -> str | None:
    """The error a step logged (``step … failed: …``, else its last ERROR line), or None."""
    path = Path(log_file)
    path = path if path.is_absolute() else run_dir / path
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    last_error = None
    for line in text.splitlines():
        match = _JOB_LOG.match(line)
        if match and " failed: " in match["message"]:
            return match["message"]
        if match and match["level"] in ("ERROR", "CRITICAL"):
            last_error = match["message"]
    if last_error:
        return last_error
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else None
