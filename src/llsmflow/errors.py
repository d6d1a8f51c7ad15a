"""One exception type for bad input, so the CLI can print one clear line and exit non-zero.

Every message names the file (when there is one), the offending value and what was expected.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


class LlsmflowError(Exception):
    """Bad input or an unrecoverable condition, described for a person.

    Parameters
    ----------
    message:
        What is wrong, including the value seen and what was expected.
    path:
        The file or directory concerned, if any; prefixed to the message.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        path = getattr(path, "shown", path)  # a URL (llsmflow.io.UrlPath): named without its credentials
        self.path = Path(path) if path is not None else None
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


def require_positive_voxel_size(voxel_size_um, path=None, what: str = "voxel size") -> tuple[float, ...]:
    """Return ``voxel_size_um`` as a tuple of floats, raising if any entry is missing, zero or negative."""
    if voxel_size_um is None:
        raise LlsmflowError(f"{what} is missing; expected positive sizes in µm", path)
    values = tuple(float(v) for v in voxel_size_um)
    for v in values:
        if not (v > 0 and v < float("inf")):
            raise LlsmflowError(f"{what} {values} µm is invalid; expected finite positive values", path)
    return values


@contextlib.contextmanager
def located(path: str | Path | None):
    """Name ``path`` in any :class:`LlsmflowError` raised inside the block that does not name a file yet.

    Library functions that work on arrays (e.g. :func:`llsmflow.decon.prepare_psf`) cannot know which file the
    array came from; callers that do (the CLI, workflow scripts) wrap the call so the message names it.
    """
    try:
        yield
    except LlsmflowError as error:
        if error.path is not None or path is None:
            raise
        raise LlsmflowError(error.message, path) from error


def select_axis_index(path: Path, axis: str, size: int, index: int | None) -> int:
    """The index to take along axis ``C`` or ``T`` of size ``size``: ``index``, checked, or 0 if it has one."""
    if index is None:
        if size != 1:
            raise LlsmflowError(
                f"has {size} entries along {axis}; expected one (choose {axis.lower()}=0..{size - 1})", path
            )
        return 0
    if isinstance(index, bool) or not 0 <= int(index) < size:
        raise LlsmflowError(f"{axis} index {index} out of range; expected 0..{size - 1}", path)
    return int(index)


@contextlib.contextmanager
def reading_errors(kind: str, expected: str, path, describe=str):
    """Turn any failure of a file parser inside the block into one :class:`LlsmflowError`: ``cannot read as
    {kind} (…); expected {expected}``, naming ``path``. Parsers (tifffile, czifile) raise many exception types
    for truncated or corrupt files; ``describe`` renders the original error (e.g. without a URL's credentials).
    """
    try:
        yield
    except LlsmflowError:
        raise
    except Exception as exc:
        raise LlsmflowError(
            f"cannot read as {kind} ({type(exc).__name__}: {describe(exc)}); expected {expected}", path
        ) from exc
