"""What `llsmflow run` shows: a live view per step on a real pseudo-terminal, a short plain log in a pipe, and
Snakemake's whole output in the run's log file; a failed job is named with its log file."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from llsmflow.run.display import RunDisplay, RunState, job_progress
from llsmflow.run.display_follow import follow, latest_run_log
from llsmflow.synth import generate
from tests.conftest import tiny_params, workflow_command, workflow_config, write_workflow_config

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    """2 tiles × 1 channel × 1 timepoint of the tiny acquisition: the smallest that has every kind of job."""
    base = tmp_path_factory.mktemp("term_acquisition")
    generate(base, tiny_params(channels=1, timepoints=1))
    return base / "raw"


def _run_on_pty(command, cwd, columns=150) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a new pseudo-terminal of ``columns`` columns, as in a
    terminal window; return its exit status and everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=dict(os.environ, TERM="xterm-256color"),
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(timeout=600), b"".join(chunks).decode("utf-8", "replace")


def _snakemake_log(run_dir: Path, dataset: str) -> str:
    """The log of the run's first `llsmflow run` (the oldest: other tests may run again in a shared run)."""
    logs = sorted((run_dir / "work" / dataset / "logs" / "snakemake").glob("*.log"))
    assert logs, run_dir
    return logs[0].read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pty_run(small_raw, tmp_path_factory):
    """`llsmflow run -- --until qc_tile` on a pseudo-terminal, a job per volume (`jobs.unit: volume`, as
    `llsmflow watch` runs): PSF, deskew_deconvolve and qc_tile jobs."""
    run_dir = tmp_path_factory.mktemp("term_pty_run")
    config = workflow_config("term", small_raw)
    config["deconvolution"]["iterations"] = 4
    config["jobs"] = {"unit": "volume"}
    config_path = write_workflow_config(run_dir, config)
    status, screen = _run_on_pty(workflow_command(config_path, "--", "--until", "qc_tile"), run_dir)
    assert status == 0, screen[-4000:]
    return run_dir, screen


def test_terminal_shows_a_live_view_that_ends_with_every_job_done(pty_run):
    run_dir, screen = pty_run
    log = _snakemake_log(run_dir, "term")
    total = int(re.search(r"^total\s+(\d+)$", log, re.MULTILINE).group(1))
    jobs = re.findall(r"^(?:local)?rule (\w+):$", log, re.MULTILINE)
    assert total == len(jobs) >= 5
    assert "\x1b[" in screen  # redrawn in place
    plain = ANSI.sub("", screen).replace("\r", "")
    # the last frame: every job done, and each step's done/total equal to its jobs
    heads = list(re.finditer(r"^llsmflow run: (\d+)/(\d+) jobs done \((\d+) %\)", plain, re.MULTILINE))
    assert heads, screen[-2000:]
    last = heads[-1]
    assert int(last.group(1)) == int(last.group(2)) == total and last.group(3) == "100", plain[-2000:]
    frame = []
    for line in plain[last.end() :].splitlines()[1:]:
        if not line.startswith("  "):
            break
        frame.append(line)
    counts = {rule: jobs.count(rule) for rule in set(jobs)}
    assert len(frame) == len(counts), frame
    for rule, n in counts.items():
        assert any(re.match(rf"^\s+{rule}\s+{n}/{n}\s+\[#+\] done", line) for line in frame), (rule, frame)
    # while it ran, the view counted up: some frame showed deskew_deconvolve with jobs still to do
    assert re.search(r"deskew_deconvolve\s+[01]/2\s+\[", plain)
    # Snakemake's job blocks are in the log file, not on the screen
    assert "Shell command: None" not in screen and "jobid:" not in screen
    assert log.count("Shell command: None") == len(jobs)
    assert len(re.findall(r"^Finished jobid: \d+ \(Rule: \w+\)$", log, re.MULTILINE)) == total
    assert "work/term/logs/snakemake/" in screen  # the screen says where that log is


def test_a_run_can_be_followed_from_its_log(pty_run, tmp_path):
    """What `llsmflow watch` builds on: the kept log, read back, gives the same counts as the run's view."""
    import io

    run_dir, _ = pty_run
    log = latest_run_log(run_dir / "work" / "term")
    out = io.StringIO()
    display = RunDisplay("plain", None, out=out, err=io.StringIO(), run_dir=run_dir)
    assert follow(log, display, timeout_s=5)
    assert display.state.done == display.state.total == sum(display.state.totals.values())
    assert not display.state.running and not display.state.failures
    assert display.view_lines()[0].startswith(f"llsmflow run: {display.state.total}/{display.state.total} jobs")


def test_running_job_progress_is_read_from_its_log(pty_run, tmp_path):
    """The view's "iteration k/n (p %, ~… left)" comes from the job's own log file; a log cut after an
    iteration line (as it is while the job runs) gives that line."""
    run_dir, _ = pty_run
    log = sorted((run_dir / "work/term/logs/deskew_deconvolve").glob("*.log"))[0]
    lines = log.read_text(encoding="utf-8").splitlines()
    cut = max(i for i, line in enumerate(lines) if " iteration 2/4 " in line)
    partial = tmp_path / "running.log"
    partial.write_text("\n".join(lines[: cut + 1]) + "\n", encoding="utf-8")
    progress = job_progress(partial, tmp_path)
    assert progress is not None and progress.startswith("iteration 2/4 (50 %")
    assert job_progress(log, run_dir) is None  # finished: "step deskew_deconvolve done" follows


def test_plain_output_in_a_pipe_is_short(tiny_run):
    """The shared tiny run ran with stdout in a pipe: a few plain lines, no escape sequences; the whole
    Snakemake output (a job block and ``Shell command: None`` per job) is in its log file."""
    stdout = tiny_run.stdout
    log = _snakemake_log(tiny_run.run_dir, "tiny")
    total = int(re.search(r"^total\s+(\d+)$", log, re.MULTILINE).group(1))
    assert "\x1b" not in stdout
    assert f"llsmflow run: {total}/{total} jobs done in" in stdout
    progress = [line for line in stdout.splitlines() if " elapsed; running: " in line]
    assert len(stdout.splitlines()) - len(progress) < 45, stdout  # at most one progress line per 30 s
    assert len(log.splitlines()) > 10 * total  # what used to be printed
    assert log.count("Shell command: None") == total
    state = RunState()
    for line in log.splitlines():
        state.feed(line, 0.0)
    assert state.done == state.total == total and not state.running and not state.failures


def test_failed_job_names_its_error_and_log(small_raw, tmp_path):
    """A raw stack with a NaN voxel: its deskew_deconvolve job fails; the plain output names the step, its job and
    its log file, the error line says why, and the Snakemake log keeps Snakemake's error report."""
    import numpy as np
    import tifffile

    raw = tmp_path / "raw"
    raw.mkdir()
    for path in small_raw.iterdir():
        (raw / path.name).write_bytes(path.read_bytes())
    stack = sorted(raw.glob("Scan_*.tif"))[1]
    data = tifffile.imread(stack).astype(np.float32)
    data[5, 10, 20] = np.nan
    tifffile.imwrite(stack, data)
    run_dir = tmp_path / "run"
    config_path = write_workflow_config(run_dir, workflow_config("broken", raw))
    result = subprocess.run(
        workflow_command(config_path, "--", "--until", "deskew_deconvolve"),
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    step = next(
        line for line in result.stderr.splitlines() if line.startswith("llsmflow run: step deskew_deconvolve")
    )
    log_file = re.search(r"log: (\S+)$", step).group(1)
    assert "(timepoint=0000) failed" in step  # the job of the timepoint; the error line names the stack
    assert (run_dir / log_file).is_file() and "NaN or infinite" in (run_dir / log_file).read_text()
    errors = [line for line in result.stderr.splitlines() if line.startswith("llsmflow run: error:")]
    assert len(errors) == 1 and stack.name in errors[0] and "NaN or infinite" in errors[0]
    assert "Snakemake's full output: work/broken/logs/snakemake/" in result.stderr
    assert "Traceback" not in result.stderr and "Shell command" not in result.stdout + result.stderr
    assert "Error in rule deskew_deconvolve:" in _snakemake_log(run_dir, "broken")
    import io

    followed = RunDisplay("plain", None, out=io.StringIO(), err=io.StringIO(), run_dir=run_dir)
    assert follow(latest_run_log(run_dir / "work/broken"), followed, timeout_s=5)
    (failure,) = followed.state.failures
    assert failure.rule == "deskew_deconvolve" and failure.log == log_file
    assert len((result.stdout + result.stderr).splitlines()) < 20, result.stdout + result.stderr
