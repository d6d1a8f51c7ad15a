"""``llsmflow watch``: process an acquisition while the microscope writes it, then finish it as a batch run.

One loop, one Snakemake process at a time (its cores and memory from the profile and ``--cores``; on SLURM
each round is one Snakemake run submitting a batch of jobs, not one submission per file):

1. the folder is followed (:mod:`llsmflow.watch.folder`) and each file checked complete
   (:mod:`llsmflow.watch.complete`): it stopped growing for ``watch.settle_s`` AND parses to the planes its
   metadata declares;
2. as soon as a stack is found complete (the scanner thread wakes the loop), a round processes the volumes
   complete since the last round together (:mod:`llsmflow.watch.plan`): Snakemake runs on their targets, in
   one Snakemake process kept for the session (:mod:`llsmflow.watch.rounds`: its start-up is paid once),
   with ``LLSMFLOW_WATCH_FILES`` naming the complete stacks, so the workflow reads the acquisition as it is
   so far and never sees a file still being written; the new volumes' jobs go first; fused timepoints are
   appended to the live archive (:mod:`llsmflow.watch.live`), provisional tracks over them are refreshed and
   the status page rewritten (:mod:`llsmflow.watch.live_tracks`);
3. when the acquisition ends (every declared stack complete and processed, no change for
   ``watch.idle_timeout_s``, or Ctrl-C once everything declared is complete) the final run is the batch run
   itself (``llsmflow run``'s Snakemake command, no targets), which adds tracking, the archive, the QC report
   and the provenance crate, and reuses every finished job.

A status line (terminal) or plain log lines (otherwise): stacks seen / complete / volumes processed, the
latency of the last volume (its last byte to its deconvolved volume), and the backlog (complete, not yet
processed). When processing is slower than acquisition the backlog grows, and is shown.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.watch.folder import Events, Folder
from llsmflow.watch.plan import Layout, plan_round

#: Environment variable naming the file that lists the complete stacks (read by ``workflow/rules/common.smk``).
WATCH_FILES_ENV = "LLSMFLOW_WATCH_FILES"


@dataclass
class Counts:
    seen: int = 0
    complete: int = 0
    processed: int = 0
    declared: int | None = None
    backlog: int = 0
    latency_s: float | None = None
    rounds: int = 0
    state: str = "watching"
    latencies: dict[str, float] = field(default_factory=dict)


class StatusLine:
    """The status on one rewritten terminal line, or a plain log line whenever it changes (not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = None

    def show(self, counts: Counts) -> None:
        declared = f"/{counts.declared}" if counts.declared else ""
        latency = f"{counts.latency_s:.1f} s" if counts.latency_s is not None else "–"
        text = (
            f"llsmflow watch: seen {counts.seen}{declared} · complete {counts.complete} · processed "
            f"{counts.processed} · last volume {latency} after its last byte · backlog {counts.backlog} · "
            f"{counts.state}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        elif text != self.last:
            print(text, file=self.stream, flush=True)
        self.last = text

    def line(self, text: str) -> None:
        """A message of its own (the status line is redrawn after it)."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
        print(text, file=self.stream, flush=True)


@contextmanager
def _environment(name: str, value: str | None):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def declared_planes_of(raw_dir: Path, config: dict):
    """``name -> planes`` a stack must hold, from the acquisition's metadata: ``raw_shape_zyx`` of an
    ``acquisition.json`` (or of the config's ``metadata`` file), else a Janelia ``<cell>_Settings.txt``;
    None: what the file itself declares (:func:`llsmflow.watch.complete.tiff_state`)."""
    import json

    from llsmflow.ingest.janelia import STACK_NAME
    from llsmflow.watch.complete import janelia_planes

    planes = None
    candidates = [config.get("metadata"), raw_dir / "acquisition.json"]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate) if Path(candidate).is_absolute() else raw_dir / candidate
        if path.suffix == ".json" and path.is_file():
            try:
                shape = json.loads(path.read_text(encoding="utf-8")).get("raw_shape_zyx")
            except (OSError, ValueError, AttributeError):
                shape = None
            if shape:
                planes = int(shape[0])
                break
    psfs = set()
    try:
        meta = json.loads((raw_dir / "acquisition.json").read_text(encoding="utf-8"))
        psfs = {c.get("psf") for c in meta.get("channels") or []}
    except (OSError, ValueError, AttributeError):
        pass

    def declared(name: str) -> int | None:
        if name in psfs:
            return None
        match = STACK_NAME.match(name)
        if match:
            settings = raw_dir / f"{match['cell']}_Settings.txt"
            if settings.is_file():
                return janelia_planes(settings, int(match["channel"]))
            return None
        return planes

    return declared


class Watch:
    """One ``llsmflow watch`` session (see the module docstring). ``launch_round(targets, prioritize)`` and
    ``launch_final()`` run Snakemake and return its exit status (given by the caller, :mod:`llsmflow.cli.watch`:
    the Snakemake command, the profile and the run lock are ``llsmflow run``'s; the rounds run in one
    persistent Snakemake process, :mod:`llsmflow.watch.rounds`); ``prioritize``: the targets whose jobs go
    first (the new volumes' deconvolved files). ``live_tracks``: refresh the provisional tracks after each
    fused timepoint (:mod:`llsmflow.watch.live_tracks`)."""

    def __init__(
        self, raw_dir, config: dict, launch_round, launch_final, settle_s: float, idle_timeout_s: float,
        poll: bool | None = None, poll_interval_s: float = 1.0, status: StatusLine | None = None,
        live_tracks: bool = True,
    ):
        self.raw_dir, self.config = Path(raw_dir), config
        self.launch_round, self.launch_final = launch_round, launch_final
        self.idle_timeout_s, self.poll, self.poll_interval_s = idle_timeout_s, poll, poll_interval_s
        self.layout = Layout(config)
        self.folder = Folder(self.raw_dir, settle_s, declared_planes_of(self.raw_dir, config))
        self.status = status or StatusLine()
        self.counts = Counts()
        self.failed: set[str] = set()
        self.last_change = time.time()
        self._acq_error = None
        self._acq_cache = None
        self.live_timepoints = 0  # timepoints in the live archive
        self.tracks: dict[int, int] = {}  # channel -> provisional tracks
        self.detections: dict[int, dict] = {}  # channel -> {timepoint: detections}, kept between refreshes
        self.live_tracks_enabled = live_tracks
        self._planned: tuple | None = None  # the complete stacks the last plan was made for
        self.processed: set[str] = set()  # samples whose deconvolved volume is done (never undone)
        self.lock = threading.Lock()  # the folder's states: the scanner thread writes them

    # ------------------------------------------------------------------ the acquisition as it is so far
    def acquisition(self, complete: list[str]):
        """The acquisition of the complete stacks (None while there is none, or its metadata is missing)."""
        from llsmflow.ingest import read_acquisition

        if not complete:
            return None
        key = tuple(complete)
        if self._acq_cache is not None and self._acq_cache[0] == key:
            return self._acq_cache[1]  # the complete stacks are what they were: read once, not every tick
        try:
            acq = read_acquisition(
                self.raw_dir, self.config.get("metadata"), self.config.get("overrides") or {},
                check_files=False, only_files=complete,
            )
        except LlsmflowError as error:
            if str(error) != self._acq_error:
                self.status.line(f"llsmflow watch: waiting: {error}")
                self._acq_error = str(error)
            return None
        self._acq_error = None
        tiles, channels = len(acq.tiles), len(acq.channels)
        declared_t = acq.metadata.get("timepoints")
        self.counts.declared = int(declared_t) * tiles * channels if declared_t else None
        self._acq_cache = (key, acq)
        return acq

    def _update(self, acq) -> None:
        names = set(self.folder.complete())
        stacks = [] if acq is None else list(acq.samples.itertuples(index=False))
        psfs = set() if acq is None else {acq.psf_path(c).name for c in range(len(acq.channels))}
        self.counts.seen = len(set(self.folder.files) - psfs)
        self.counts.complete = len(stacks)
        processed = 0
        for row in stacks:
            if row.sample_id in self.processed:
                processed += 1
            elif self.layout.volume_done(row.sample_id):
                processed += 1
                self.processed.add(row.sample_id)
                if row.sample_id not in self.counts.latencies and row.path in names:
                    record = self.layout.step(f"deskew_deconvolve/{row.sample_id}.json")
                    last_byte = self.folder.files[row.path].last_byte_at or 0.0
                    self.counts.latencies[row.sample_id] = record.stat().st_mtime - last_byte
                    self.counts.latency_s = self.counts.latencies[row.sample_id]
        self.counts.processed = processed
        self.counts.backlog = max(0, self.counts.complete - processed)

    # ------------------------------------------------------------------ one round
    def round(self) -> bool:
        """Run the workflow on the targets of what is complete now; whether a round ran. Nothing is planned
        while the complete stacks are those of the last plan (its round made everything they allow)."""
        with self.lock:
            complete = self.folder.complete()
            if tuple(complete) == self._planned:
                return False
            acq = self.acquisition(complete)
            self._update(acq)
        if acq is None:
            return False
        self._planned = tuple(complete)
        plan = plan_round(acq, set(complete), self.layout, self.failed, self.processed)
        if not plan:
            return False
        listing = self.layout.work / "watch" / "complete-stacks.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        tmp = listing.with_name(f".{listing.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(complete) + "\n", encoding="utf-8")
        os.replace(tmp, listing)
        self.counts.rounds += 1
        self.counts.state = (
            f"round {self.counts.rounds}: {len(plan.volumes)} volume(s)"
            + (f", fusing t {', '.join(map(str, plan.timepoints))}" if plan.timepoints else "")
        )
        self.status.show(self.counts)
        with _environment(WATCH_FILES_ENV, str(listing.resolve())):
            status = self.launch_round(plan.targets, [str(self.layout.deconvolved(v)) for v in plan.volumes])
        if status != 0:
            self.failed |= set(plan.targets)
            self.status.line(
                f"llsmflow watch: round {self.counts.rounds} failed (exit {status}); its volumes are left to the "
                "final run, which names the error"
            )
        with self.lock:
            self._update(acq)
        if plan.timepoints:
            count = self.grow_live(acq)
            if count > self.live_timepoints:
                self.live_timepoints = count
                self.refresh_tracks(acq, count)
        self.counts.state = "watching"
        self.write_status()
        self.status.show(self.counts)
        return True

    def grow_live(self, acq) -> int:
        """Append the newly fused timepoints to the live archive (:mod:`llsmflow.watch.live`); a failure there
        is reported and leaves processing going (the final run writes the dataset archive anyway). Returns
        the live archive's timepoints."""
        from llsmflow.watch.live import grow_live_archive, live_archive_path

        try:
            count = grow_live_archive(self.layout, acq, self.config)
        except (LlsmflowError, OSError, ValueError) as error:
            self.status.line(f"llsmflow watch: live archive not grown: {error}")
            return 0
        self.status.line(f"llsmflow watch: live archive {live_archive_path(self.layout)}: {count} timepoint(s)")
        return count

    def refresh_tracks(self, acq, count: int) -> None:
        """Provisional tracks over the live archive's timepoints (:mod:`llsmflow.watch.live_tracks`); a
        failure is reported and leaves processing going (the final run makes the tracks)."""
        from llsmflow.watch.live_tracks import provisional_tracks_path, refresh_tracks

        if not self.live_tracks_enabled:
            return
        try:
            self.tracks = refresh_tracks(self.layout, acq, self.config, count, self.detections)
        except (LlsmflowError, OSError, ValueError) as error:
            self.status.line(f"llsmflow watch: provisional tracks not refreshed: {error}")
            return
        for channel, n in sorted(self.tracks.items()):
            self.status.line(
                f"llsmflow watch: PROVISIONAL tracks {provisional_tracks_path(self.layout, channel)}: {n} "
                f"track(s) over timepoints 0–{count - 1} (the final run makes the results' tracks)"
            )

    def write_status(self) -> None:
        """The live status page (:func:`llsmflow.watch.live_tracks.write_status_page`)."""
        from llsmflow.watch.live_tracks import write_status_page

        try:
            write_status_page(self.layout, self.counts, self.live_timepoints, self.tracks, self.config["dataset"])
        except OSError as error:
            self.status.line(f"llsmflow watch: status page not written: {error}")

    def finished(self) -> bool:
        """Every declared stack complete and processed."""
        c = self.counts
        return bool(c.declared) and c.complete >= c.declared and c.processed >= c.declared

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Watch until the acquisition ends, then run the final (batch) run; its exit status.

        The folder is scanned by a thread of its own, also while a round runs, so that a file's completeness
        (and a stalled file) is seen when it happens, not after the round."""
        events = Events(self.raw_dir, self.poll, self.poll_interval_s)
        kind = "polling" if events.polling else "file system events"
        self.status.line(f"llsmflow watch: following {self.raw_dir} ({kind}); Ctrl-C ends the acquisition")
        tick = max(0.05, min(1.0, self.folder.settle_s / 4))
        stop, scanned = threading.Event(), threading.Event()

        def scanner() -> None:
            while not stop.is_set():
                events.wake.wait(tick)
                changed = events.take()
                with self.lock:
                    before = {n: (f.size, f.mtime_ns) for n, f in self.folder.files.items()}
                    self.folder.scan()
                    if changed or before != {n: (f.size, f.mtime_ns) for n, f in self.folder.files.items()}:
                        self.last_change = time.time()
                scanned.set()

        events.start()
        thread = threading.Thread(target=scanner, name="llsmflow-watch-scan", daemon=True)
        thread.start()
        reason = None
        try:
            while reason is None:
                scanned.wait(tick * 4)
                scanned.clear()
                self.round()
                self.status.show(self.counts)
                with self.lock:
                    pending = self.folder.pending()
                if self.finished() and not pending:
                    reason = "every declared stack is complete and processed"
                elif time.time() - self.last_change > self.idle_timeout_s:
                    reason = f"no change for {self.idle_timeout_s:g} s (watch.idle_timeout_s)"
        except KeyboardInterrupt:
            stop.set()
            thread.join(timeout=10)
            with self.lock:
                self.folder.scan()
                acq = self.acquisition(self.folder.complete())
                self._update(acq)
            c = self.counts
            if not (c.declared and c.complete >= c.declared):
                self.status.line(
                    f"llsmflow watch: stopped with {c.complete} of {c.declared or '?'} stacks complete and "
                    f"{c.processed} processed; finished work is kept: run `llsmflow watch` again to continue"
                )
                raise
            reason = "interrupted, every declared stack complete"
        finally:
            stop.set()
            events.stop()
        self.counts.state = "final run"
        self.status.line(f"llsmflow watch: acquisition ended ({reason}); final run")
        return self.launch_final()
