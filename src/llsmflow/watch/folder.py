"""Following a raw folder while the microscope writes it: which files exist, which stopped growing, which are
complete (:mod:`llsmflow.watch.complete`).

Events come from watchdog (a well-kept library: inotify on Linux, FSEvents, ReadDirectoryChangesW) when the
folder is on a local disk. Network file systems (NFS, SMB/CIFS, Lustre, GPFS, BeeGFS, CephFS, sshfs) do not
deliver inotify events for writes made on another host (the acquisition computer), so there watchdog's
:class:`~watchdog.observers.polling.PollingObserver` (a ``stat`` of every file each interval) is chosen
automatically from ``/proc/mounts``, or with ``--poll``. Either way the folder is also listed every
``rescan_s`` seconds, so a missed event delays a file, never loses it.

A file's state moves ``growing`` → ``stalled`` (no change for ``settle_s`` but does not parse to its declared
planes: an instrument pause, a truncated file) → ``complete``. A stalled file is looked at again whenever
its size or modification time changes; a complete file is never re-read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("llsmflow")

#: File systems on which inotify does not see another host's writes: polled instead.
NETWORK_FILE_SYSTEMS = (
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
    "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "9p", "afs", "panfs", "wekafs",
)
#: Names of raw files: stacks (TIFF, CZI) and their metadata; hidden names are ignored (writers' temporaries).
RAW_SUFFIXES = (".tif", ".tiff", ".czi")


def file_system_type(path: str | Path, mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system holding ``path`` (longest mount point above it), None if unknown."""
    target = os.path.realpath(path)
    best, kind = "", None
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def needs_polling(path: str | Path) -> bool:
    """Whether the folder lies on a network file system (:data:`NETWORK_FILE_SYSTEMS`)."""
    kind = file_system_type(path)
    return kind is not None and kind.lower() in NETWORK_FILE_SYSTEMS


@dataclass
class RawFile:
    """What is known of one raw file: its size and modification time when last seen, when it last changed
    (epoch s), its state and why."""

    name: str
    size: int = -1
    mtime_ns: int = -1
    changed_at: float = 0.0
    state: str = "growing"
    why: str = ""
    checked: tuple[int, int] | None = None  # (size, mtime_ns) of the last completeness check
    complete_at: float | None = None  # epoch s when found complete
    last_byte_at: float | None = None  # modification time (epoch s) of the complete file: its last byte


@dataclass
class Folder:
    """The raw files of a folder and their states. ``declared_planes(name)`` gives the planes a stack must
    hold (None: what the file itself declares); ``settle_s`` is how long a file must not change before it is
    checked; ``clock`` is ``time.time``."""

    path: Path
    settle_s: float
    declared_planes: Callable[[str], int | None] = lambda name: None
    clock: Callable[[], float] = time.time
    files: dict[str, RawFile] = field(default_factory=dict)

    def scan(self, names: set[str] | None = None) -> list[RawFile]:
        """Look at every raw file (or those ``names``); returns the files found complete by this scan."""
        from llsmflow.watch.complete import file_state

        now = self.clock()
        if names is None:
            try:
                names = {
                    e.name for e in os.scandir(self.path)
                    if e.name.lower().endswith(RAW_SUFFIXES) and not e.name.startswith(".") and e.is_file()
                }
            except OSError as error:
                log.warning("llsmflow watch: cannot list %s: %s", self.path, error)
                return []
            names |= {n for n, f in self.files.items() if f.state != "complete"}
        newly = []
        for name in sorted(names):
            entry = self.files.setdefault(name, RawFile(name, changed_at=now))
            if entry.state == "complete":
                continue
            try:
                stat = os.stat(self.path / name)
            except FileNotFoundError:
                del self.files[name]  # renamed or removed by the writer
                continue
            if (stat.st_size, stat.st_mtime_ns) != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns, entry.changed_at = stat.st_size, stat.st_mtime_ns, now
                if entry.state == "stalled":
                    entry.state = "growing"
                continue
            if now - entry.changed_at < self.settle_s or entry.checked == (entry.size, entry.mtime_ns):
                continue
            entry.checked = (entry.size, entry.mtime_ns)
            complete, why = file_state(self.path / name, self.declared_planes(name))
            entry.why = why
            if complete:
                entry.state, entry.complete_at = "complete", now
                entry.last_byte_at = entry.mtime_ns / 1e9
                newly.append(entry)
            else:
                if entry.state != "stalled":
                    log.warning("llsmflow watch: %s stopped growing but is not complete (%s); waiting", name, why)
                entry.state = "stalled"
        return newly

    def complete(self) -> list[str]:
        return sorted(n for n, f in self.files.items() if f.state == "complete")

    def pending(self) -> list[RawFile]:
        return [f for f in self.files.values() if f.state != "complete"]


class Events:
    """watchdog events on the folder (inotify, or polling): a set of changed names and a wake-up."""

    def __init__(self, path: Path, poll: bool | None = None, poll_interval_s: float = 1.0):
        from watchdog.events import FileSystemEventHandler

        self.path, self.changed, self.wake = Path(path), set(), threading.Event()
        self._lock = threading.Lock()
        self.polling = needs_polling(path) if poll is None else poll
        events = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.is_directory:
                    return
                for attr in ("src_path", "dest_path"):
                    name = os.path.basename(os.fsdecode(getattr(event, attr, "") or ""))
                    if name.lower().endswith(RAW_SUFFIXES) and not name.startswith("."):
                        with events._lock:
                            events.changed.add(name)
                events.wake.set()

        if self.polling:
            from watchdog.observers.polling import PollingObserver

            self.observer = PollingObserver(timeout=poll_interval_s)
        else:
            from watchdog.observers import Observer

            self.observer = Observer()
        self.observer.schedule(Handler(), str(self.path), recursive=False)

    @property
    def kind(self) -> str:
        return "polling" if self.polling else type(self.observer).__name__.replace("Observer", "").lower() or "events"

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

    def take(self) -> set[str]:
        """The names changed since the last call."""
        with self._lock:
            names, self.changed = self.changed, set()
        self.wake.clear()
        return names
