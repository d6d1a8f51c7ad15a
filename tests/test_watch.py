"""`llsmflow watch`: processing while an acquisition is written (docs/watch.md).

An acquisition simulator writes the tiny synthetic acquisition (`llsmflow synth`) into a folder the way
instruments do: the metadata and PSFs first, then one stack at a time, plane by plane, with pauses, one
stack stopped half-way (longer than the settle time) and completed later. Against it:

* the completeness checks (TIFF in llsmflow-synthetic and Janelia naming, CZI from a real Zeiss file) call a
  file complete only when it holds every declared plane, at every byte length it goes through;
* one watch session, stopped with Ctrl-C mid-stream and restarted, processes every volume during the
  acquisition, exactly once (finished Snakemake jobs counted over both sessions), never lets the workflow open
  a raw file before it is complete (every open of a raw file by any workflow process recorded by an audit
  hook with the file's size at that moment), and ends with results equal to a batch run of the same data
  (the `tiny_run` fixture) within `llsmflow reproduce`'s tolerances.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import LLSMFLOW, REAL_DATA, REPO, workflow_config, write_workflow_config

SRC = REPO / "src"
SETTLE_S = 0.8

# Every open of a file under $LLSMFLOW_TEST_RAW, by any Python process that imports this site hook: pid,
# command line, path and the file's size at that moment.
AUDIT_HOOK = '''
import os, sys
_log, _raw = os.environ.get("LLSMFLOW_TEST_OPEN_LOG"), os.environ.get("LLSMFLOW_TEST_RAW")
if _log and _raw:
    _fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _busy = []

    def _hook(event, args):
        if event != "open" or _busy or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        _busy.append(1)
        try:
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(_raw + os.sep):
                try:
                    size = os.stat(path).st_size
                except OSError:
                    size = -1
                command = " ".join(sys.argv)[:300].replace("\\t", " ").replace("\\n", " ")
                os.write(_fd, f"{os.getpid()}\\t{command}\\t{path}\\t{size}\\n".encode())
        finally:
            _busy.pop()

    sys.addaudithook(_hook)
'''


# ---------------------------------------------------------------------------------------------- simulator


class Instrument(threading.Thread):
    """Writes ``stacks`` (names in ``source``) into ``raw`` plane by plane, ``plane_s`` apart, one file at a
    time, pausing ``pause_s`` after every ``pause_every`` files; the stack ``truncated`` is stopped at 40 %
    and completed after the next two stacks. Records each stack's final size and when its last byte was
    written (``done``: name -> epoch s)."""

    def __init__(self, source: Path, raw: Path, stacks: list[str], truncated: str | None = None,
                 planes: int = 32, plane_s: float = 0.02, pause_s: float = 1.5, pause_every: int = 4,
                 gate: threading.Event | None = None):
        super().__init__(daemon=True)
        self.source, self.raw, self.stacks, self.truncated = source, raw, stacks, truncated
        self.planes, self.plane_s, self.pause_s, self.pause_every = planes, plane_s, pause_s, pause_every
        self.gate = gate
        self.done: dict[str, float] = {}
        self.sizes = {name: (source / name).stat().st_size for name in stacks}
        self.error: BaseException | None = None

    def _write(self, name: str, start: float, stop: float) -> None:
        data = (self.source / name).read_bytes()
        a, b = int(len(data) * start), int(len(data) * stop)
        step = max(1, len(data) // self.planes)
        with open(self.raw / name, "ab") as out:
            for offset in range(a, b, step):
                out.write(data[offset : min(offset + step, b)])
                out.flush()
                time.sleep(self.plane_s)
        if stop == 1.0:
            self.done[name] = (self.raw / name).stat().st_mtime

    def run(self) -> None:
        try:
            held = None
            for index, name in enumerate(self.stacks):
                if self.gate is not None and index == len(self.stacks) // 2:
                    self.gate.wait(120)  # the test restarts the watcher here
                if name == self.truncated:
                    self._write(name, 0.0, 0.4)
                    held = [name, 2]
                    continue
                self._write(name, 0.0, 1.0)
                if held:
                    held[1] -= 1
                    if held[1] == 0:
                        time.sleep(2.5 * SETTLE_S)  # the half-written stack stays still longer than settle
                        self._write(held[0], 0.4, 1.0)
                        held = None
                if (index + 1) % self.pause_every == 0:
                    time.sleep(self.pause_s)
            if held:
                self._write(held[0], 0.4, 1.0)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error


def start_acquisition(source_raw: Path, raw: Path, stacks: list[str], **kwargs) -> Instrument:
    """Metadata and PSFs first (written before the acquisition starts), then the stacks by the simulator."""
    raw.mkdir(parents=True)
    for path in source_raw.iterdir():
        if path.name not in stacks:
            shutil.copy2(path, raw / path.name)
    instrument = Instrument(source_raw, raw, stacks, **kwargs)
    instrument.start()
    return instrument


def synthetic_stacks(raw: Path) -> list[str]:
    """The stacks of a synthetic acquisition in acquisition order: timepoint, channel, tile."""
    meta = json.loads((raw / "acquisition.json").read_text())
    pattern = re.compile(meta["file_regex"])
    psfs = {c["psf"] for c in meta["channels"]}
    stacks = [p.name for p in raw.iterdir() if pattern.match(p.name) and p.name not in psfs]

    def key(name):
        groups = pattern.match(name).groupdict()
        return int(groups["timepoint"]), int(groups["channel"]), name

    return sorted(stacks, key=key)


# ---------------------------------------------------------------------------------------------- checks


def test_tiff_is_complete_only_with_every_declared_plane(tmp_path):
    """A TIFF at every prefix length of its bytes: incomplete (never an error) unless every plane is there
    (only trailing bytes that no plane uses may be missing: tifffile writes padding there); the declared
    count wins over the file's own when they disagree."""
    from llsmflow.watch.complete import file_state

    whole = tmp_path / "whole.tif"
    volume = np.arange(16 * 8 * 8, dtype=np.uint16).reshape(16, 8, 8)
    tifffile.imwrite(whole, volume, photometric="minisblack")
    data = whole.read_bytes()
    part = tmp_path / "part.tif"
    called_complete = []
    for length in sorted({*range(0, len(data), 11), *range(len(data) - 40, len(data))}):
        part.write_bytes(data[:length])
        complete = file_state(part, 16)[0]
        assert file_state(part)[0] is complete, length  # the file's own shaped description declares 16
        if complete:
            called_complete.append(length)
            np.testing.assert_array_equal(tifffile.imread(part), volume)
    assert len(called_complete) <= 16, called_complete  # the padding after the last plane's directory
    assert file_state(whole, 16) == (True, "16 plane(s) as declared")
    assert file_state(whole)[0] is True
    assert file_state(whole, 17) == (False, "16 plane(s) written of 17 declared")


def test_czi_is_complete_only_whole():
    """A real Zeiss CZI (its directory written first, attachments last) cut at many lengths: never complete
    before its last byte."""
    from llsmflow.watch.complete import file_state

    source = REAL_DATA / "488_PSF.czi"
    if not source.is_file():
        pytest.skip(f"real CZI not found at {source}")
    data = source.read_bytes()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"llsmflow-watch-{os.getpid()}.czi"
    try:
        for length in [*range(0, len(data), len(data) // 23), len(data) - 1]:
            out.write_bytes(data[:length])
            assert file_state(out)[0] is False, length
        out.write_bytes(data)
        assert file_state(out) == (True, "40 plane(s) as declared")
    finally:
        out.unlink(missing_ok=True)


def test_janelia_folder_written_plane_by_plane(tmp_path, tiny_acquisition):
    """Janelia/3i naming: the planes each stack must hold come from ``<cell>_Settings.txt``; the folder
    follower, fed while the simulator writes (one stack stopped half-way for longer than the settle time),
    calls each stack complete once, after its last byte, and never the half-written one before."""
    from llsmflow.watch.folder import Folder
    from llsmflow.watch.session import declared_planes_of

    settings = (REAL_DATA / "janelia" / "sample_Settings.txt")
    if not settings.is_file():
        pytest.skip(f"real Janelia Settings.txt not found at {settings}")
    source = tmp_path / "source"
    source.mkdir()
    text = settings.read_text(encoding="utf-8", errors="replace")
    # the tiny stacks have 32 planes: the Settings.txt says so (the real one: 61)
    text = re.sub(r"(S PZT Offset, Interval \(um\), # of Pixels for Excitation \(\d\) :\t\S+\t\S+\t)\d+",
                  r"\g<1>32", text)
    (source / "cell1_Settings.txt").write_text(text, encoding="utf-8")
    synth = sorted((tiny_acquisition / "raw").glob("*000x_000y*.tif"))[:4]
    stacks = []
    for t, path in enumerate(synth):
        c = t % 2
        rel = (t // 2) * 4017 + c * 9
        name = f"cell1_ch{c}_stack{t // 2:04d}_{(488, 642)[c]}nm_{rel:07d}msec_{8100000 + rel:010d}msecAbs.tif"
        shutil.copy(path, source / name)
        stacks.append(name)
    raw = tmp_path / "raw"
    instrument = start_acquisition(source, raw, stacks, truncated=stacks[1], pause_every=2, pause_s=0.5)
    declared = declared_planes_of(raw, {"metadata": None})
    assert {declared(n) for n in stacks} == {32}
    folder = Folder(raw, SETTLE_S, declared)
    found_at = {}
    while instrument.is_alive() or len(found_at) < len(stacks):
        for entry in folder.scan():
            found_at[entry.name] = time.time()
            assert entry.size == instrument.sizes[entry.name], entry.name
            assert entry.name in instrument.done, f"{entry.name} called complete before its last byte"
        time.sleep(0.1)
        assert time.time() < instrument.done.get(stacks[-1], time.time()) + 30
    assert instrument.error is None
    assert sorted(found_at) == sorted(stacks)
    assert all(found_at[n] >= instrument.done[n] + SETTLE_S for n in stacks)


# ---------------------------------------------------------------------------------------------- the session


def finished_jobs(run_dir: Path) -> list[tuple[str, str]]:
    """``(rule, wildcards)`` of every job that finished, over every Snakemake run logged in ``run_dir``."""
    jobs = []
    for log in sorted((run_dir / ".snakemake" / "log").glob("*.snakemake.log")):
        started, finished, rule, current = {}, [], None, None
        for line in log.read_text(errors="replace").splitlines():
            text = line.strip()
            match = re.match(r"^(?:local)?rule (\w+):$", text)
            if match:
                rule, current = match.group(1), None
            elif rule and text.startswith("jobid:"):
                current = text.split()[1]
                started[current] = [rule, ""]
            elif current and text.startswith("wildcards:"):
                started[current][1] = text[len("wildcards:") :].strip()
            match = re.match(r"^Finished jobid: (\d+)", text)
            if match:
                finished.append(match.group(1))
        jobs += [tuple(started[j]) for j in finished if j in started]
    return jobs


def watch_setup(base: Path, tiny_run):
    """``(raw folder to watch, tiny_run's raw folder, its stacks, run dir, config, config path)``: the config of
    ``tiny_run`` (same iterations) pointed at an empty raw folder under ``base``."""
    raw = base / "raw"
    source = tiny_run.acquisition / "raw"
    stacks = synthetic_stacks(source)
    config = workflow_config("tiny", raw)
    config["deconvolution"]["iterations"] = tiny_run.config["deconvolution"]["iterations"]
    run_dir = base / "run"
    return raw, source, stacks, run_dir, config, write_workflow_config(run_dir, config)


@pytest.fixture(scope="module")
def watched(tmp_path_factory, tiny_run):
    """One acquisition written by the simulator and watched: watch #1 stopped with Ctrl-C mid-stream,
    watch #2 started, which finishes it (final run). Same data and config as ``tiny_run``."""
    base = tmp_path_factory.mktemp("watch")
    raw, source, stacks, run_dir, config, config_path = watch_setup(base, tiny_run)
    hook = base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    opens = base / "opens.tsv"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(hook), str(SRC)]),
        LLSMFLOW_TEST_OPEN_LOG=str(opens),
        LLSMFLOW_TEST_RAW=str(raw.resolve()),
    )
    command = [
        str(LLSMFLOW), "watch", str(raw), "--configfile", str(config_path), "--workflow-dir", str(REPO),
        "--cores", "2", "--settle", str(SETTLE_S), "--idle-timeout", "120",
    ]
    gate = threading.Event()
    instrument = start_acquisition(source, raw, stacks, truncated=stacks[2], gate=gate)
    logs = []

    def start(*extra):
        out = open(base / f"watch{len(logs) + 1}.log", "w")
        logs.append(out.name)
        return subprocess.Popen([*command, *extra], cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    first = start()
    deadline = time.time() + 300
    steps = run_dir / "work" / "tiny" / "steps" / "deskew_deconvolve"
    while len(list(steps.glob("*.json"))) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if first.poll() is not None:
        pytest.fail(f"watch #1 ended by itself (exit {first.returncode}):\n{Path(logs[0]).read_text()[-4000:]}")
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the terminal: the watcher and its Snakemake
    first_status = first.wait(120)
    stopped_at = time.time()
    gate.set()
    second = start("--poll")  # the restart follows the folder as on a network share
    second_status = second.wait(600)
    instrument.join(60)
    return {
        "run_dir": run_dir, "raw": raw, "stacks": stacks, "instrument": instrument, "opens": opens,
        "statuses": (first_status, second_status), "logs": [Path(p).read_text() for p in logs],
        "stopped_at": stopped_at, "config": config,
    }


def test_watch_restarted_mid_stream_finishes(watched):
    first, second = watched["statuses"]
    assert watched["instrument"].error is None
    assert first == 130, watched["logs"][0][-3000:]
    assert "run `llsmflow watch` again to continue" in watched["logs"][0]
    # the half-written stack was seen stopped and not complete, and waited for
    stalled = watched["stacks"][2]
    assert f"{stalled} stopped growing but is not complete" in watched["logs"][0]
    assert "(polling)" in watched["logs"][1]
    assert second == 0, watched["logs"][1][-5000:]
    assert "acquisition ended (every declared stack is complete and processed)" in watched["logs"][1]
    assert "processed 12" in watched["logs"][1]


def test_no_incomplete_file_is_read_by_the_workflow(watched):
    """Every open of a raw file by a workflow process (Snakemake parsing the acquisition, every job) saw the
    file at its final size; the watcher itself did look at partial files (headers only)."""
    sizes = {watched["raw"].resolve() / n: s for n, s in watched["instrument"].sizes.items()}
    workflow, watcher_partial = [], 0
    for line in watched["opens"].read_text().splitlines():
        pid, command, path, size = line.split("\t")
        final = sizes.get(Path(path))
        if final is None:
            continue  # metadata, PSFs: written before the acquisition
        if " watch " in f" {command} ":
            watcher_partial += int(size) != final
            continue
        workflow.append((command, path, int(size), final))
    assert watcher_partial > 0  # the checks did meet half-written files
    stacks_read = {p for _, p, _, _ in workflow}
    assert len(stacks_read) == len(sizes)  # every stack was read by the workflow …
    early = [(c[-60:], Path(p).name, s, f) for c, p, s, f in workflow if s != f]
    assert early == []  # … and never before it was complete


def test_every_volume_processed_once_during_the_acquisition(watched):
    jobs = finished_jobs(watched["run_dir"])
    counts = {}
    for job in jobs:
        counts[job] = counts.get(job, 0) + 1
    for rule in ("deskew_deconvolve", "fuse", "register", "prepare_psf", "qc_tile", "archive", "track"):
        ran = {k: n for k, n in counts.items() if k[0] == rule}
        assert ran, rule
        assert set(ran.values()) == {1}, (rule, ran)
    assert len([k for k in counts if k[0] == "deskew_deconvolve"]) == 12
    assert len([k for k in counts if k[0] == "fuse"]) == 3  # a job per timepoint, every channel
    # processing happened while the acquisition was written: volumes were deconvolved before the instrument
    # wrote its last stack (how many depends on the machine's speed: at least those of watch #1)
    work = watched["run_dir"] / "work" / "tiny" / "steps" / "deskew_deconvolve"
    last_byte = max(watched["instrument"].done.values())
    early = [p for p in work.glob("*.json") if p.stat().st_mtime < last_byte]
    assert len(early) >= 1, watched["logs"][0][-3000:]


def test_results_equal_a_batch_run(watched, tiny_run):
    """Every output the batch run recorded (archive arrays, tracks, previews, …) compared as `llsmflow
    reproduce` compares them: identical or within its tolerances."""
    from llsmflow.provenance.reproduce import compare_outputs

    batch = tiny_run.run_dir / "results" / "tiny"
    record = json.loads((batch / "provenance" / "run-record.json").read_text())
    moved = {str(watched["raw"].resolve()): str((tiny_run.acquisition / "raw").resolve()),
             str(watched["raw"]): str(tiny_run.acquisition / "raw")}
    results = compare_outputs(record, tiny_run.run_dir, watched["run_dir"], moved)  # paths: results/tiny/…
    bad = [(r.path, r.status, r.detail) for r in results if r.status not in ("identical", "within tolerance")]
    assert len(results) > 10 and bad == []


def test_watch_refuses_a_config_of_another_folder(tmp_path, tiny_acquisition):
    """One line naming the config, the two folders and the expectation; exit 2."""
    other = tmp_path / "other"
    other.mkdir()
    config_path = write_workflow_config(tmp_path / "run", workflow_config("tiny", tiny_acquisition / "raw"))
    result = subprocess.run(
        [str(LLSMFLOW), "watch", str(other), "--configfile", str(config_path), "--workflow-dir", str(REPO)],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(SRC)), timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llsmflow watch: error: ") and str(other) in lines[0]
    assert str(config_path) in lines[0] and "expected the config of this acquisition" in lines[0]


def test_append_timepoint_is_readable_at_every_moment(tmp_path):
    """A reader polling the image while timepoints are appended sees, at every level, only whole timepoints
    (each filled with its own value, never the fill value), and the pyramid matches the writer's."""
    import zarr

    from llsmflow.archive.append import append_timepoint
    from llsmflow.archive.ome_zarr import write_ome_zarr

    path = tmp_path / "live.ome.zarr"
    shape = (1, 8, 64, 64)
    write_ome_zarr(path, np.full((1, *shape), 1, np.float32), (0.5, 0.1, 0.1), 2.0, ["a"],
                   chunks_zyx=(8, 32, 32), n_levels=2)
    errors, reads, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            for level in ("s0", "s1"):
                try:
                    array = zarr.open_array(str(path / level), mode="r")
                    last = array.shape[0] - 1
                    values = np.unique(array[last])
                except Exception as error:  # noqa: BLE001 - every failure is one to report
                    errors.append(repr(error))
                    continue
                if values.tolist() != [last + 1]:
                    errors.append(f"{level} t={last}: {values[:5]}")
                reads[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    for t in range(1, 9):
        assert append_timepoint(path, np.full(shape, t + 1, np.float32)) == t + 1
    stop.set()
    thread.join(10)
    assert errors == [] and reads[0] > 10
    s0 = zarr.open_array(str(path / "s0"), mode="r")
    s1 = zarr.open_array(str(path / "s1"), mode="r")
    assert s0.shape[0] == s1.shape[0] == 9
    np.testing.assert_array_equal(s1[5], np.full(s1.shape[1:], 6, np.float32))


def test_live_archive_grew_to_the_batch_archive(watched, tiny_run):
    """The live archive (grown by timepoints during the acquisition) holds what the batch run's archive
    holds, within `llsmflow reproduce`'s array tolerance."""
    from llsmflow.archive.read import read_ome_zarr
    from llsmflow.provenance.reproduce import RTOL, relative_difference

    live, _ = read_ome_zarr(watched["run_dir"] / "work" / "tiny" / "watch" / "live.ome.zarr")
    batch, _ = read_ome_zarr(tiny_run.run_dir / "results" / "tiny" / "tiny.ome.zarr")
    assert live.shape == batch.shape
    assert relative_difference(np.asarray(live), np.asarray(batch)) <= RTOL
    assert "live archive" in watched["logs"][1] and "3 timepoint(s)" in watched["logs"][1]


def test_rounds_ran_in_one_snakemake_process_per_session(watched):
    """Every round ran in its session's one persistent Snakemake process (`llsmflow.watch.worker`: Snakemake's
    start-up paid once per session, not per round); the final run is `llsmflow run`'s own Snakemake command,
    started after the rounds' process ended."""
    commands = []
    for log in sorted((watched["run_dir"] / ".snakemake" / "log").glob("*.snakemake.log")):
        lines = log.read_text().splitlines()
        commands += [line.split("Command:", 1)[1].strip() for line in lines if "Command:" in line]
    rounds = [c for c in commands[:-1] if "llsmflow/watch/worker.py" in c]
    assert len(rounds) == len(commands) - 1 >= 3, commands
    assert "worker.py" not in commands[-1] and commands[-1].split()[0].endswith("snakemake")


def test_provisional_tracks_end_equal_to_the_final_tracks(watched):
    """While the acquisition ran, tracks over the fused timepoints so far were refreshed under
    work/<dataset>/watch/, named provisional; the last refresh links every timepoint and equals the final
    run's tracks (the results, compared with a batch run above); the status page calls them provisional."""
    import pandas as pd

    run_dir = watched["run_dir"]
    assert "PROVISIONAL tracks" in watched["logs"][1] and "over timepoints 0–2" in watched["logs"][1]
    for channel in (0, 1):
        live = pd.read_csv(run_dir / "work" / "tiny" / "watch" / f"tracks-ch{channel}.provisional.csv")
        final = pd.read_csv(run_dir / "results" / "tiny" / "tracks" / f"ch{channel}.csv")
        assert len(final) > 0
        pd.testing.assert_frame_equal(live, final)
    page = (run_dir / "work" / "tiny" / "watch" / "status.html").read_text()
    assert "PROVISIONAL tracks, channel 0" in page and "volumes processed (deconvolved)</th><td>12" in page
