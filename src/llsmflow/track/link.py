"""Linking detections of every frame into tracks in physical units (:func:`trackpy.link` on µm columns)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from llsmflow.errors import LlsmflowError
from llsmflow.track._common import _int_at_least, _origin3, _positive, _quiet_trackpy, _voxel3, import_trackpy
from llsmflow.track.detect import detect_particles, diameter_px
from llsmflow.track.tables import POS_COLUMNS, with_pixel_columns

ADAPTIVE_STOP_FRACTION = 0.2
"""Linking may shrink the search range down to this fraction of it where candidates crowd."""


def _frames(volumes, n_frames) -> tuple[Iterable[Callable], int | None]:
    """``(loaders, n)``: one callable per frame giving its ZYX array (a frame is read only when it is asked
    for), and the number of frames (None when unknown)."""
    if callable(volumes):
        if n_frames is None:
            raise LlsmflowError("volumes is a callable frame -> array but n_frames is missing; expected both")
        n = _int_at_least(n_frames, 1, "n_frames")
        return ((lambda i=i: volumes(i)) for i in range(n)), n
    if isinstance(volumes, np.ndarray):
        if volumes.ndim != 4:
            raise LlsmflowError(f"volumes array has shape {volumes.shape}; expected 4-D TZYX")
        n = volumes.shape[0] if n_frames is None else min(int(n_frames), volumes.shape[0])
        return ((lambda v=v: v) for v in volumes), n
    try:
        iterator = iter(volumes)
    except TypeError:
        raise LlsmflowError(
            f"volumes of type {type(volumes).__name__} given; expected ZYX arrays (iterable) or a callable"
        ) from None
    if n_frames is None:
        try:
            n_frames = len(volumes)
        except TypeError:
            n_frames = None
    return ((lambda v=v: v) for v in iterator), n_frames


def _frame_axis(frame_numbers, times_s, total):
    """Checked ``(frame_numbers, times_s)``: each None or a strictly increasing sequence, one per frame."""
    checked = []
    for values, what, kind in ((frame_numbers, "frame_numbers", int), (times_s, "times_s", float)):
        if values is None:
            checked.append(None)
            continue
        try:
            values = [kind(v) for v in values]
        except (TypeError, ValueError):
            raise LlsmflowError(f"{what} {values!r} is invalid; expected a sequence of numbers") from None
        if total is not None and len(values) != total:
            raise LlsmflowError(f"{what} has {len(values)} entries for {total} frames; expected one per frame")
        if not all(np.isfinite(values)) or any(b <= a for a, b in zip(values[:-1], values[1:], strict=True)):
            raise LlsmflowError(f"{what} {values} is invalid; expected finite, strictly increasing values")
        checked.append(values)
    return checked[0], checked[1]


def track_particles(
    volumes,
    voxel_size_um,
    time_interval_s,
    diameter_um=0.5,
    search_range_um=1.2,
    memory=1,
    min_track_length=3,
    min_mass=None,
    percentile=64.0,
    origin_um=(0.0, 0.0, 0.0),
    progress: Callable[[int, int | None], object] | None = None,
    n_frames: int | None = None,
    separation_um=None,
    *,
    frame_numbers=None,
    times_s=None,
    detections: dict | None = None,
) -> pd.DataFrame:
    """Detect particles in every frame and link them into tracks in physical units.

    Each frame goes through :func:`detect_particles`; the detections are then linked by :func:`trackpy.link`
    on the µm columns (so the search sphere is isotropic in space even though voxels are not) and short
    tracks are dropped by :func:`trackpy.filter_stubs`.

    Parameters
    ----------
    volumes : iterable of ndarray, 4-D ndarray (T, Z, Y, X) or callable
        The frames, in time order; or a callable ``frame_index -> ZYX array`` together with ``n_frames``
        (only one frame is held in memory at a time).
    voxel_size_um : sequence of 3 floats
        ``(dz, dy, dx)`` in µm.
    time_interval_s : float
        Time between consecutive frames in s; ``t_s = frame * time_interval_s``.
    diameter_um, min_mass, percentile, origin_um, separation_um
        As for :func:`detect_particles` (``min_mass=None`` chooses a threshold per frame).
    search_range_um : float
        Largest displacement in µm between linked positions (between consecutive detections of a track,
        even across frames skipped under ``memory``). Default 1.2, the workflow's (``config/schema.yaml``).
    memory : int
        Number of consecutive frames a particle may be missing and still keep its identity. Default 1, the
        workflow's.
    min_track_length : int
        Tracks with fewer detections are discarded.
    progress : callable or None
        Called as ``progress(frames_done, n_frames)`` after each frame is detected (1, 2, …; ``n_frames``
        may be None for an iterator of unknown length).
    n_frames : int or None
        Number of frames; required with a callable, optional otherwise (limits an array's frames).
    frame_numbers : sequence of int, optional
        The acquisition's frame (timepoint) number of each volume, strictly increasing; default ``0, 1, …``.
        A gap (timepoints missing from the acquisition) then counts as the frames it lasted: ``memory`` says
        whether a particle may cross it, and the ``frame`` column holds these numbers.
    times_s : sequence of float, optional
        The real time (s) of each volume, strictly increasing: ``t_s`` is then taken from it instead of
        ``frame × time_interval_s`` (which stays the nominal interval, e.g. for the statistics).
    detections : dict, optional
        A cache of each frame's detections, ``frame number -> table``, that the caller keeps between calls
        with the same volumes and settings (e.g. a live preview tracking a growing series): a frame found in it
        is neither read nor detected again (its ``progress`` call still comes), a new one is added. Detection
        is per frame, so the tracks equal those of a call without the cache.

    Returns
    -------
    pandas.DataFrame
        ``particle`` (0, 1, ... in order of first appearance), ``frame``, ``t_s``, ``z_um``, ``y_um``,
        ``x_um``, then trackpy's per-feature columns; sorted by ``particle`` then ``frame``.
    """
    trackpy = import_trackpy()

    voxel = _voxel3(voxel_size_um)
    dt = _positive(time_interval_s, "time interval", "s")
    search = _positive(search_range_um, "search range", "µm")
    mem = _int_at_least(memory, 0, "memory")
    min_len = _int_at_least(min_track_length, 1, "min_track_length")
    origin = _origin3(origin_um)
    diameter_px(diameter_um, voxel)  # validate before the (long) detection loop
    frames, total = _frames(volumes, n_frames)
    numbers, times = _frame_axis(frame_numbers, times_s, total)

    found_per_frame = []
    for index, load in enumerate(frames):
        if total is not None and index >= total:
            break
        number = index if numbers is None or index >= len(numbers) else numbers[index]
        found = detections.get(number) if detections is not None else None
        if found is None:
            try:
                found = detect_particles(
                    load(),
                    voxel,
                    diameter_um=diameter_um,
                    min_mass=min_mass,
                    percentile=percentile,
                    separation_um=separation_um,
                    origin_um=origin,
                )
            except LlsmflowError as exc:
                raise LlsmflowError(f"frame {index}: {exc.message}", exc.path) from exc
            found.insert(0, "frame", np.full(len(found), number, dtype=np.int64))
            if detections is not None:
                detections[number] = found
        found_per_frame.append(found)
        if progress is not None:
            progress(index + 1, total)
    if not found_per_frame:
        raise LlsmflowError("no frames given; expected at least one ZYX volume")
    for given, what in ((numbers, "frame_numbers"), (times, "times_s")):
        if given is not None and len(given) != len(found_per_frame):
            raise LlsmflowError(
                f"{what} has {len(given)} entries for {len(found_per_frame)} frames; expected one per frame"
            )

    features = pd.concat(found_per_frame, ignore_index=True)
    base = ["particle", "frame", "t_s", *POS_COLUMNS]
    extra = [c for c in features.columns if c not in base]
    if features.empty:
        empty = pd.DataFrame(
            {c: pd.Series(dtype="int64" if c in ("particle", "frame") else "float64") for c in base}
        )
        return with_pixel_columns(pd.concat([empty, features[extra].iloc[:0]], axis=1))

    from trackpy.linking import SubnetOversizeException

    try:
        with _quiet_trackpy():
            # In dense spots (particles passing close, maxima along static structure) trackpy shrinks the
            # search range locally instead of giving up on an oversized subnetwork.
            linked = trackpy.link(
                features,
                search,
                pos_columns=list(POS_COLUMNS),
                t_column="frame",
                memory=mem,
                adaptive_stop=ADAPTIVE_STOP_FRACTION * search,
                adaptive_step=0.95,
            )
            linked = trackpy.filter_stubs(linked, threshold=min_len)
    except SubnetOversizeException as exc:
        raise LlsmflowError(
            f"search range {search} µm links too many candidate particles at once ({exc}); expected a search "
            "range well below the typical distance between particles: reduce it or raise the mass threshold"
        ) from exc
    linked = linked.reset_index(drop=True)
    # Relabel 0..n-1 by first appearance so identifiers do not depend on trackpy's internal numbering.
    first = linked.groupby("particle")["frame"].min().sort_values(kind="stable")
    mapping = pd.Series(np.arange(len(first), dtype=np.int64), index=first.index)
    linked["particle"] = linked["particle"].map(mapping).astype(np.int64)
    linked["frame"] = linked["frame"].astype(np.int64)
    if times is None:
        linked["t_s"] = linked["frame"].to_numpy(dtype=np.float64) * dt
    else:
        time_of = dict(zip(numbers if numbers is not None else range(len(times)), times, strict=True))
        linked["t_s"] = linked["frame"].map(time_of).astype(np.float64)
    linked = linked[base + extra]
    # trackpy's default position names (voxels) beside the µm ones: its functions take the table as is
    return with_pixel_columns(linked.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True))
