"""The track table: its position columns (µm), its validation, and writing it as Parquet and CSV.

A track table has one row per detection: ``particle``, ``frame``, ``t_s`` (s) and the positions
:data:`POS_COLUMNS` (µm, ZYX order), then trackpy's per-feature columns. Detection, linking, statistics and
plots all read these names from here.

The table of :func:`llsmflow.track.link.track_particles` (and so the written one) also carries
:data:`PIXEL_COLUMNS` ``z, y, x``: the position in voxels of the volume the
particle was detected in (the same values as ``z_px, y_px, x_px``), under the names trackpy's own functions
look for by default, so that ``trackpy.motion.emsd(tracks, mpp=dx_um, fps=1 / dt_s)`` works on the table as
is (trackpy's default ``pos_columns`` are ``['x', 'y']``: the lateral MSD; give ``pos_columns=['z', 'y', 'x']``
and ``mpp=(dz, dy, dx)`` for 3-D, or ``pos_columns=POS_COLUMNS`` with ``mpp=1`` for µm directly).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llsmflow.errors import LlsmflowError
from llsmflow.io import atomic_output

POS_COLUMNS = ["z_um", "y_um", "x_um"]
"""Position columns (µm) used for linking and statistics, in ZYX order."""
PIXEL_COLUMNS = ["z", "y", "x"]
"""Position columns in voxels (trackpy's default names), beside ``z_px, y_px, x_px`` in the written table."""


def _check_tracks(tracks, need=("particle", "frame", *POS_COLUMNS)) -> pd.DataFrame:
    if not isinstance(tracks, pd.DataFrame):
        raise LlsmflowError(f"tracks of type {type(tracks).__name__} given; expected a pandas DataFrame")
    missing = [c for c in need if c not in tracks.columns]
    if missing:
        raise LlsmflowError(
            f"tracks lack column(s) {missing} (have {list(tracks.columns)}); expected at least {list(need)}"
        )
    if tracks.duplicated(["particle", "frame"]).any():
        raise LlsmflowError("tracks have several rows for one (particle, frame); expected one position each")
    return tracks


def with_pixel_columns(tracks: pd.DataFrame) -> pd.DataFrame:
    """``tracks`` with :data:`PIXEL_COLUMNS` added from ``z_px, y_px, x_px`` (placed right after them) when it
    has those and not already ``z, y, x``; otherwise unchanged."""
    source = [f"{c}_px" for c in PIXEL_COLUMNS]
    if not set(source) <= set(tracks.columns) or set(PIXEL_COLUMNS) & set(tracks.columns):
        return tracks
    table = tracks.copy()
    at = max(table.columns.get_loc(c) for c in source) + 1
    for offset, (name, column) in enumerate(zip(PIXEL_COLUMNS, source, strict=True)):
        table.insert(at + offset, name, table[column])
    return table


def write_tracks(tracks, out_parquet, out_csv) -> tuple[Path | None, Path | None]:
    """Write tracks as Parquet and CSV, each atomically (complete file or none).

    Parameters
    ----------
    tracks : pandas.DataFrame
        Any table, typically from :func:`track_particles` (which adds :data:`PIXEL_COLUMNS` with
        :func:`with_pixel_columns`); written as it is, without its index.
    out_parquet, out_csv : path or None
        Destinations; None skips that format.

    Returns
    -------
    tuple of Path or None
        The paths written.
    """
    if not isinstance(tracks, pd.DataFrame):
        raise LlsmflowError(f"tracks of type {type(tracks).__name__} given; expected a pandas DataFrame")
    if out_parquet is None and out_csv is None:
        raise LlsmflowError("no output path given; expected a Parquet path, a CSV path or both")
    table = tracks.reset_index(drop=True)
    written: list[Path | None] = []
    for path, kind in ((out_parquet, "parquet"), (out_csv, "csv")):
        if path is None:
            written.append(None)
            continue
        path = Path(path)
        try:
            with atomic_output(path) as tmp:
                if kind == "parquet":
                    table.to_parquet(tmp, index=False)
                else:
                    table.to_csv(tmp, index=False)
        except OSError as exc:
            raise LlsmflowError(
                f"cannot write {kind} ({exc.strerror or exc}); expected a writable path", path
            ) from exc
        written.append(path)
    return written[0], written[1]
