"""FFTW wisdom (measured FFT plans) kept between processes: where the file is, reading it safely, writing it
atomically.

Which file (:func:`wisdom_file`)
--------------------------------
* ``LLSMFLOW_FFTW_WISDOM`` (``FFTW_WISDOM_ENV``) names a file: that file, *shared* by the processes that name
  it (the workflow names one per dataset, so its deconvolution jobs plan each shape once);
* ``LLSMFLOW_FFTW_WISDOM`` set to ``""``, ``off``, ``none``, ``0`` or ``false``: no file (opt-out; plans live
  only as long as the process);
* unset: the per-user cache, ``<cache dir>/llsmflow/fftw-wisdom-<machine key>`` (:func:`cache_dir`:
  ``$XDG_CACHE_HOME``, else ``~/.cache`` on Linux; ``~/Library/Caches`` on macOS; ``%LOCALAPPDATA%`` on
  Windows). The machine key (:func:`machine_key`) hashes the CPU model and its feature flags, the
  architecture and pyFFTW's version, so that a home directory shared by nodes of different kinds keeps one
  file per kind and plans measured on another CPU or FFTW build are never read.

Safety: the file is data, never code. It is read only if it is at most ``_MAX_BYTES``, has pyFFTW's three
NUL-separated parts, and each part is printable ASCII that starts like FFTW's own export
(``(fftw-<version> fftw{,f,l}_wisdom``); FFTW's parser then accepts or rejects it as a whole (a wisdom file of
another FFTW version or build is rejected). A file that fails any of this is ignored with one warning and
replaced at the next save; nothing raises. Writes merge what is on disk and go through
:func:`llsmflow.io.atomic_output` (a temporary file in the same directory, renamed over the old one; a new file
whose mode follows the umask, so that a group's jobs share a work directory's file), under an advisory lock
(``fcntl.flock``) where the platform has one, so concurrent jobs neither see a half-written file nor lose each
other's plans.

Hand-written rather than ``platformdirs`` (a dependency for three lines of path rules).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger("llsmflow.decon")

FFTW_WISDOM_ENV = "LLSMFLOW_FFTW_WISDOM"
"""Environment variable naming the FFTW wisdom file: a path (shared by the processes naming it), or ``off``
(also ``""``, ``none``, ``0``, ``false``) for no file; unset: the per-user cache (:func:`default_wisdom_file`)."""

_OFF = ("", "off", "none", "0", "false", "no")
# A wisdom file holds a few lines per planned transform size; anything larger is not one.
_MAX_BYTES = 16 << 20
_KINDS = (b"fftw_wisdom", b"fftwf_wisdom", b"fftwl_wisdom")

_read: set[str] = set()  # files imported by this process (each once)


def cache_dir() -> Path:
    """The per-user cache directory of llsmflow (created on first write, not here)."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":  # pragma: no cover - not tested on Windows
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "llsmflow"


def _cpu_description() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "features", "cpu model", "hardware", "isa")
    seen = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in wanted and name not in seen:
            seen[name] = " ".join(sorted(value.split())) if name in ("flags", "features") else value.strip()
    return "|".join(f"{k}={seen[k]}" for k in sorted(seen)) or platform.processor()


def machine_key(pyfftw_version: str | None = None) -> str:
    """``<architecture>-<12 hex digits>``: the digest of the CPU model and flags, the OS, and pyFFTW's version
    (the FFTW build it bundles). Different key: different wisdom file."""
    if pyfftw_version is None:
        from llsmflow.decon.fft import pyfftw

        pyfftw_version = getattr(pyfftw, "__version__", "none")
    parts = (platform.machine(), platform.system(), _cpu_description(), f"pyfftw={pyfftw_version}")
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return f"{platform.machine() or 'cpu'}-{digest}"


def default_wisdom_file() -> Path:
    """The per-user wisdom file of this machine kind: ``cache_dir() / f"fftw-wisdom-{machine_key()}"``."""
    return cache_dir() / f"fftw-wisdom-{machine_key()}"


def wisdom_file() -> tuple[Path | None, bool]:
    """(file, shared): the wisdom file this process reads and writes (None: opted out), and whether it was
    named in ``LLSMFLOW_FFTW_WISDOM`` (shared on purpose by processes that plan the same shapes)."""
    value = os.environ.get(FFTW_WISDOM_ENV)
    if value is None:
        return default_wisdom_file(), False
    if value.strip().lower() in _OFF:
        return None, False
    return Path(value.strip()).expanduser(), True


def _parse(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The three parts of pyFFTW's export if ``data`` looks like one (see the module docstring), else None."""
    if len(data) > _MAX_BYTES:
        return None
    parts = tuple(data.split(b"\0"))
    if len(parts) != 3:
        return None
    allowed = set(range(32, 127)) | {9, 10, 13}
    for part, kind in zip(parts, _KINDS, strict=True):
        if not set(part) <= allowed:
            return None
        head = part.lstrip()[:64]
        if part.strip() and not (head.startswith(b"(fftw-") and kind in head):
            return None
    return parts  # type: ignore[return-value]


def import_file(path: Path, pyfftw, *, quiet: bool = False) -> bool:
    """Import the wisdom in ``path`` into FFTW (once per file and process). A missing file is no wisdom yet;
    a file that is not FFTW wisdom for this build is ignored with one warning (none if ``quiet``)."""
    key = str(path)
    if key in _read and not quiet:
        return True
    _read.add(key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        if not quiet:
            log.warning("FFTW wisdom %s is not readable (%s); planning without it", path, exc)
        return False
    parts = _parse(data)
    accepted = False
    if parts is not None:
        try:
            results = pyfftw.import_wisdom(parts)
            accepted = all(ok for ok, part in zip(results, parts, strict=True) if part.strip())
        except Exception:  # noqa: BLE001 - whatever pyFFTW raises, the file is only a cache
            accepted = False
    if not accepted and not quiet:
        log.warning(
            "FFTW wisdom %s is not FFTW wisdom of this FFTW build (corrupt, truncated or from another "
            "version); ignored, and replaced when a plan is next measured",
            path,
        )
    return accepted


@contextlib.contextmanager
def _locked(path: Path):
    """An advisory exclusive lock on ``<path>.lock`` (POSIX ``flock``); without one, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        handle = open(lock_path, "a+b")  # noqa: SIM115 - closed below
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def save(path: Path, pyfftw) -> None:
    """Write all FFTW wisdom of this process, merged with what ``path`` holds now, to ``path`` atomically.
    Failures (read-only file system, ...) cost only a new planning in the next process: one warning."""
    from llsmflow.io import atomic_output

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            import_file(path, pyfftw, quiet=True)  # plans another process saved since we read the file
            # a new file: its mode follows the umask (mkstemp's 0600 would hide it from the group's jobs)
            with atomic_output(path) as temporary, open(temporary, "wb") as out:
                out.write(b"\0".join(pyfftw.export_wisdom()))
    except OSError as exc:
        log.warning("could not save FFTW wisdom to %s: %s", path, exc)
