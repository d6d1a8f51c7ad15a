"""Track statistics: drift, per-track summaries, 3-D mean squared displacement and diffusion fits.

NumPy and pandas only; trackpy is imported by :func:`subtract_drift` alone (for
:func:`trackpy.compute_drift`). The MSDs are our own: see :func:`ensemble_msd` for why trackpy's
:func:`~trackpy.motion.imsd` / :func:`~trackpy.motion.emsd` are not used.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from llsmflow.errors import LlsmflowError
from llsmflow.track._common import _int_at_least, _positive, _quiet_trackpy, import_trackpy
from llsmflow.track.tables import POS_COLUMNS, _check_tracks


def _track_arrays(tracks: pd.DataFrame) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(particle, frames, positions)`` per track, sorted by frame."""
    ordered = tracks.sort_values(["particle", "frame"], kind="stable")
    particles = ordered["particle"].to_numpy()
    frames = ordered["frame"].to_numpy(dtype=np.int64)
    pos = ordered[POS_COLUMNS].to_numpy(dtype=np.float64)
    if len(particles) == 0:
        return
    cuts = np.flatnonzero(particles[1:] != particles[:-1]) + 1
    for sl_start, sl_end in zip(np.r_[0, cuts], np.r_[cuts, len(particles)], strict=True):
        yield particles[sl_start], frames[sl_start:sl_end], pos[sl_start:sl_end]


def _lag_sums(frames: np.ndarray, pos: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squared 3-D displacements and number of pairs per lag 1..max_lag (gaps respected)."""
    span = int(frames[-1] - frames[0]) + 1
    dense = np.full((span, 3), np.nan)
    dense[frames - frames[0]] = pos
    sums = np.zeros(max_lag)
    counts = np.zeros(max_lag, dtype=np.int64)
    for lag in range(1, min(max_lag, span - 1) + 1):
        sq = np.sum((dense[lag:] - dense[:-lag]) ** 2, axis=1)
        ok = np.isfinite(sq)
        sums[lag - 1] = sq[ok].sum()
        counts[lag - 1] = int(ok.sum())
    return sums, counts


def _drift(tracks: pd.DataFrame) -> pd.DataFrame:
    """Cumulative mean frame-to-frame displacement (µm) of particles present in consecutive frames.

    :func:`trackpy.compute_drift` computes it (same steps, same per-frame mean, same cumulative sum) but lists
    only the frames that some particle reaches by a one-frame step; the drift holds (zero step) over the
    others, and is zero at the first frame, so every frame from the first to the last gets a row here.
    """
    trackpy = import_trackpy()

    with _quiet_trackpy():
        # a fresh index: trackpy renames an index called "frame" of the table it is given
        drift = trackpy.compute_drift(tracks.reset_index(drop=True), pos_columns=list(POS_COLUMNS))
    frames = np.arange(int(tracks["frame"].min()), int(tracks["frame"].max()) + 1)
    return drift[POS_COLUMNS].reindex(frames).ffill().fillna(0.0)


def subtract_drift(tracks: pd.DataFrame) -> pd.DataFrame:
    """Remove the ensemble drift: the cumulative mean step of all particles between consecutive frames.

    With N particles this also removes 1/N of their independent motion, so MSDs of drift-corrected tracks
    are biased low by about 1/N; use it only when the drift matters more than that.

    The drift is :func:`trackpy.compute_drift`'s. :func:`trackpy.subtract_drift` is not used: it subtracts
    nothing in a frame that no particle reaches by a one-frame step (where the drift so far still applies),
    and it returns the rows re-ordered by frame under a (frame, particle) index; here rows, index and
    columns stay those of ``tracks``.
    """
    tracks = _check_tracks(tracks)
    if tracks.empty:
        return tracks.copy()
    drift = _drift(tracks)
    out = tracks.copy()
    offsets = drift.loc[out["frame"].to_numpy()].to_numpy()
    out[POS_COLUMNS] = out[POS_COLUMNS].to_numpy(dtype=np.float64) - offsets
    return out


def track_msd(frames, positions_um, max_lag_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared 3-D displacement of one track for lags 1..max_lag_frames.

    Parameters
    ----------
    frames : array_like of int, shape (N,)
        Frame indices, increasing; gaps (missed detections) are allowed and never bridged by interpolation.
    positions_um : array_like, shape (N, 3)
        Positions (z, y, x) in µm.
    max_lag_frames : int
        Largest lag in frames.

    Returns
    -------
    msd_um2, n : ndarray
        MSD per lag (NaN where no pair of detections is that far apart) and the number of pairs.

    Notes
    -----
    The same lags and values as :func:`trackpy.motion.msd` (``msd`` column, ``pos_columns`` of the three
    axes), which is not used: it gives no pair counts, and computes tracks without gaps by FFT, with an
    error that grows with the distance of the positions from the origin (see :func:`ensemble_msd`).
    """
    frames = np.asarray(frames, dtype=np.int64)
    pos = np.asarray(positions_um, dtype=np.float64)
    max_lag = _int_at_least(max_lag_frames, 1, "max_lag_frames")
    if frames.ndim != 1 or pos.shape != (len(frames), 3):
        raise LlsmflowError(
            f"track of {frames.shape} frames and {pos.shape} positions given; expected N frames and N x 3 µm"
        )
    if len(frames) == 0:
        return np.full(max_lag, np.nan), np.zeros(max_lag, dtype=np.int64)
    if np.any(np.diff(frames) <= 0):
        raise LlsmflowError(
            "track frames are not strictly increasing; expected one position per frame, in order"
        )
    sums, counts = _lag_sums(frames, pos, max_lag)
    with np.errstate(invalid="ignore", divide="ignore"):
        msd = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return msd, counts


def _fit_line(lag_s: np.ndarray, msd: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(lag_s, msd, 1)
    return float(slope) / 6.0, float(intercept)


def summarise_tracks(tracks, time_interval_s, max_lag_frames=None) -> pd.DataFrame:
    """Per-track statistics.

    Parameters
    ----------
    tracks : pandas.DataFrame
        As returned by :func:`track_particles` (needs ``particle``, ``frame``, ``z_um``, ``y_um``, ``x_um``).
    time_interval_s : float
        Time between frames in s.
    max_lag_frames : int or None
        Largest lag used for each track's diffusion fit. None uses up to 4 lags, and never more than the
        track spans.

    Returns
    -------
    pandas.DataFrame
        One row per track: ``particle``, ``n_points`` (detections), ``first_frame``, ``last_frame``,
        ``length_frames`` (last - first + 1), ``duration_s`` ((last - first) * dt), ``mean_speed_um_s``
        (mean over consecutive detections of distance / elapsed time), ``net_displacement_um`` (first to last
        position), ``diffusion_um2_s`` (from a least-squares line ``MSD = 6 D t + offset`` through the track's
        3-D MSD at lags 1..max_lag; NaN when fewer than 2 lags have data; single tracks give noisy,
        occasionally negative values), ``n_lags_fit`` and ``mean_mass`` (when ``mass`` is present).
    """
    tracks = _check_tracks(tracks)
    dt = _positive(time_interval_s, "time interval", "s")
    if max_lag_frames is not None:
        max_lag_frames = _int_at_least(max_lag_frames, 2, "max_lag_frames")
    rows = []
    mean_mass = tracks.groupby("particle")["mass"].mean() if "mass" in tracks else None
    for particle, frames, pos in _track_arrays(tracks):
        span = int(frames[-1] - frames[0])
        row = {
            "particle": particle,
            "n_points": len(frames),
            "first_frame": int(frames[0]),
            "last_frame": int(frames[-1]),
            "length_frames": span + 1,
            "duration_s": span * dt,
        }
        if len(frames) > 1:
            steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
            row["mean_speed_um_s"] = float(np.mean(steps / (np.diff(frames) * dt)))
            row["net_displacement_um"] = float(np.linalg.norm(pos[-1] - pos[0]))
        else:
            row["mean_speed_um_s"] = np.nan
            row["net_displacement_um"] = 0.0
        max_lag = min(4 if max_lag_frames is None else max_lag_frames, max(span, 1))
        msd, counts = track_msd(frames, pos, max_lag)
        ok = counts > 0
        if ok.sum() >= 2:
            lags = np.arange(1, max_lag + 1)[ok]
            row["diffusion_um2_s"] = _fit_line(lags * dt, msd[ok])[0]
            row["n_lags_fit"] = int(ok.sum())
        else:
            row["diffusion_um2_s"] = np.nan
            row["n_lags_fit"] = 0
        if mean_mass is not None:
            row["mean_mass"] = float(mean_mass.loc[particle])
        rows.append(row)
    columns = [
        "particle", "n_points", "first_frame", "last_frame", "length_frames", "duration_s",
        "mean_speed_um_s", "net_displacement_um", "diffusion_um2_s", "n_lags_fit",
    ] + (["mean_mass"] if mean_mass is not None else [])  # fmt: skip
    out = pd.DataFrame(rows, columns=columns)
    return out.astype({"particle": np.int64, "n_points": np.int64, "length_frames": np.int64})


def ensemble_msd(tracks, time_interval_s, max_lag_frames=10, drift_correct=False) -> pd.DataFrame:
    """Ensemble mean squared 3-D displacement against lag.

    Every pair of detections of the same track ``lag`` frames apart counts once, so long tracks weigh more.
    Missed frames are skipped, never interpolated.

    Why not :func:`trackpy.emsd`: it weighs each track's MSD by an *effective number of independent
    measurements* (Qian et al. 1991, ``trackpy.motion._msd_N``, rescaled around gaps), not by its number of
    displacement pairs, so its ensemble MSD differs from this one whenever tracks differ in length, and it
    gives no pair counts (``n``). Its per-track MSD (:func:`trackpy.imsd` with ``pos_columns``, ``mpp=1``,
    ``fps=1/dt``) has the same lag definition, but for tracks without gaps it is computed by FFT from
    ``Σ r²`` and an autocorrelation, whose cancellation error grows with the squared distance from the
    origin: tracks in stage coordinates hundreds of µm from it would lose digits. The cross-check test
    (``tests/test_track.py``) shows this MSD is the pair-weighted mean of trackpy's per-track MSDs.

    Parameters
    ----------
    tracks : pandas.DataFrame
        Needs ``particle``, ``frame``, ``z_um``, ``y_um``, ``x_um``.
    time_interval_s : float
        Time between frames in s.
    max_lag_frames : int
        Largest lag in frames.
    drift_correct : bool
        Subtract the ensemble drift first (see :func:`subtract_drift`; biases MSD low by ~1/N particles).

    Returns
    -------
    pandas.DataFrame
        ``lag_frames``, ``lag_s``, ``msd_um2`` and ``n`` (number of displacement pairs), for the lags that
        have at least one pair.
    """
    tracks = _check_tracks(tracks)
    dt = _positive(time_interval_s, "time interval", "s")
    max_lag = _int_at_least(max_lag_frames, 1, "max_lag_frames")
    if drift_correct and not tracks.empty:
        tracks = subtract_drift(tracks)
    sums = np.zeros(max_lag)
    counts = np.zeros(max_lag, dtype=np.int64)
    for _particle, frames, pos in _track_arrays(tracks):
        s, c = _lag_sums(frames, pos, max_lag)
        sums += s
        counts += c
    lags = np.arange(1, max_lag + 1)
    ok = counts > 0
    return pd.DataFrame(
        {
            "lag_frames": lags[ok].astype(np.int64),
            "lag_s": lags[ok] * dt,
            "msd_um2": sums[ok] / counts[ok],
            "n": counts[ok],
        }
    )


def fit_diffusion(msd_df, n_lags=4) -> dict:
    """Fit ``MSD = 6 D t + offset`` (3-D free diffusion) to the first lags of an MSD curve.

    The offset absorbs localisation error (``+6 σ²``) and motion blur (negative), so D is the slope over 6.
    Only the first few lags are used: they carry the most independent displacements.

    Parameters
    ----------
    msd_df : pandas.DataFrame
        With ``lag_s`` and ``msd_um2`` (as from :func:`ensemble_msd`); rows with no data or non-finite MSD
        are ignored.
    n_lags : int
        Number of shortest lags to fit, at least 2.

    Returns
    -------
    dict
        ``diffusion_um2_s``, ``offset_um2`` and ``n_lags`` (lags actually used). When fewer than 2 lags
        are available (e.g. no tracks) D and offset are NaN.
    """
    n_lags = _int_at_least(n_lags, 2, "n_lags")
    if not isinstance(msd_df, pd.DataFrame) or not {"lag_s", "msd_um2"} <= set(msd_df.columns):
        raise LlsmflowError("msd table lacks lag_s/msd_um2 columns; expected the output of ensemble_msd")
    data = msd_df.sort_values("lag_s")
    ok = np.isfinite(data["msd_um2"].to_numpy(dtype=np.float64)) & np.isfinite(data["lag_s"].to_numpy(float))
    if "n" in data:
        ok &= data["n"].to_numpy() > 0
    data = data[ok].head(n_lags)
    if len(data) < 2:
        return {"diffusion_um2_s": float("nan"), "offset_um2": float("nan"), "n_lags": int(len(data))}
    d, c = _fit_line(data["lag_s"].to_numpy(dtype=np.float64), data["msd_um2"].to_numpy(dtype=np.float64))
    return {"diffusion_um2_s": d, "offset_um2": c, "n_lags": int(len(data))}
