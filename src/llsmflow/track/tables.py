"""The track table: its position columns (µm), its validation, and writing it as Parquet and CSV.

A track table has one row per detection: ``particle``, ``frame``, ``t_s`` (s) and the positions
:data:`POS_COLUMNS` (µm, ZYX order), then trackpy's per-feature columns. Detection, linking, statistics and
plots all read these names from here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llsmflow.errors import LlsmflowError
from llsmflow.io import atomic_output

POS_COLUMNS = ["z_um", "y_um", "x_um"]
"""Position columns (µm) used for linking and statistics, in ZYX order."""


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


def write_tracks(tracks, out_parquet, out_csv) -> tuple[Path | None, Path | None]:
    """Write tracks as Parquet and CSV, each atomically (complete file or none).

    Parameters
    ----------
    tracks : pandas.DataFrame
        Any table, typically from :func:`track_particles`; written without its index.
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
