"""Prepared PSF kernels kept between processes: ``<cache dir>/llsmflow/psf-kernels/<key>.npy``.

Preparing a kernel (:func:`llsmflow.decon.prepare_psf`: support, centring, resampling) takes a few ms to
0.2 s, and importing ``scipy.ndimage`` for it 0.1–0.4 s per process (measured on this project's 2-core
machine): a third of what ``llsmflow deconvolve`` adds to the deconvolution of a 96x256x256 volume. The same
PSF file is deconvolved with again and again, so the kernel is kept like FFTW's wisdom, in the per-user cache
directory (:func:`llsmflow.decon.wisdom.cache_dir`; ``LLSMFLOW_PSF_CACHE=off`` turns it off).

The key hashes everything the kernel depends on: the PSF's bytes, shape and dtype, the voxel sizes, the
background, the geometry, the source code of the modules that prepare it, NumPy's version and SciPy's
installation; so a changed PSF, argument or preparation code never reads an old kernel.
Safety: a file is data, read with ``allow_pickle=False``, and used only if it is a finite, non-negative,
odd-sized 3-D float32 array of sum 1 (to float32 round-off); anything else is ignored and replaced. Writes go
through :func:`llsmflow.io.atomic_output` (a temporary name, then renamed): a reader never sees half a file,
and the file's mode follows the umask, as every output does (a group's jobs share a work directory's cache).
At most ``_MAX_FILES`` kernels are kept (the oldest go). Any error of the cache itself (read-only home, full
disk, a file removed by another process meanwhile) is ignored: the kernel is then prepared as before.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

PSF_CACHE_ENV = "LLSMFLOW_PSF_CACHE"
"""Environment variable: ``off`` (also ``0``, ``false``, ``none``, ``""``) keeps prepared kernels in memory
only; unset or anything else: the per-user cache directory."""

# at most this many kernels are kept (the oldest are removed when a new one is saved): a few KB each
_MAX_FILES = 64
# the modules whose code makes a kernel (their source is part of the key)
_SOURCES = ("decon/psf.py", "decon/volumes.py", "deskew/shear.py", "deskew/frames.py", "deskew/workers.py")
_code_digest: str | None = None


def _enabled() -> bool:
    value = os.environ.get(PSF_CACHE_ENV)
    return value is None or value.strip().lower() not in ("", "off", "0", "false", "none")


def _code_version() -> str:
    """Digest of the preparation code, NumPy's version and SciPy's installation (once per process).

    SciPy is not imported for its version (10–20 ms): its package's ``version.py`` (path, size and
    modification time) stands for it; any reinstallation or upgrade changes them."""
    global _code_digest
    if _code_digest is None:
        import importlib.util

        digest = hashlib.blake2b(digest_size=16)
        package = Path(__file__).resolve().parents[1]
        for name in _SOURCES:
            digest.update((package / name).read_bytes())
        spec = importlib.util.find_spec("scipy")
        scipy_version = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
        try:
            stat = scipy_version.stat()
            scipy_key = f"{scipy_version} {stat.st_size} {stat.st_mtime_ns}"
        except (AttributeError, OSError):
            scipy_key = "unknown"
        digest.update(f"numpy {np.__version__} scipy {scipy_key}".encode())
        _code_digest = digest.hexdigest()
    return _code_digest


def kernel_path(psf: np.ndarray, arguments: tuple) -> Path | None:
    """The cache file of the kernel of ``psf`` (C-contiguous) prepared with ``arguments`` (a tuple of floats
    and strings); None when the cache is off."""
    if not _enabled():
        return None
    from llsmflow.decon.wisdom import cache_dir

    digest = hashlib.blake2b(psf.view(np.uint8).reshape(-1), digest_size=20)
    digest.update(repr((psf.shape, str(psf.dtype), arguments, _code_version())).encode())
    return cache_dir() / "psf-kernels" / f"{digest.hexdigest()}.npy"


def load_kernel(path: Path | None) -> np.ndarray | None:
    """The kernel stored at ``path`` if there is one and it is valid (module docstring), else None."""
    if path is None:
        return None
    try:
        kernel = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (
        not isinstance(kernel, np.ndarray)
        or kernel.dtype != np.float32
        or kernel.ndim != 3
        or any(n % 2 == 0 for n in kernel.shape)
        or not np.isfinite(kernel).all()
        or kernel.min() < 0
        or abs(float(kernel.sum(dtype=np.float64)) - 1.0) > 1e-4
    ):
        return None
    return kernel


def save_kernel(path: Path | None, kernel: np.ndarray) -> None:
    """Store ``kernel`` at ``path`` atomically (temporary file, then rename); errors are ignored."""
    if path is None:
        return
    from llsmflow.io import atomic_output

    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a new file: its mode follows the umask
            np.save(f, np.ascontiguousarray(kernel, dtype=np.float32), allow_pickle=False)
        kept = sorted(path.parent.glob("*.npy"), key=lambda p: p.stat().st_mtime_ns)
        for old in kept[: max(len(kept) - _MAX_FILES, 0)]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
