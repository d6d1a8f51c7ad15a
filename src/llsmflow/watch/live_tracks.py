"""Provisional tracks and a status page while ``llsmflow watch`` runs (``work/<dataset>/watch/``).

Tracking links particles over the whole time series (trackpy): linking a growing series gives other tracks
than the batch run, so the tracks of the results (``results/<dataset>/tracks/``) are made by the final run
only. During the acquisition, after each round that fused timepoints, the fused timepoints 0 … n−1 that
exist so far are tracked again with the workflow's settings (``track:`` in the config, the same
:func:`llsmflow.track.track_particles` as the track step) into ``tracks-ch<c>.provisional.csv``: a preview,
labelled provisional in its name and on the status page, replaced by the final run's tracks. A refresh
detects only the timepoints fused since the last one (each timepoint's detections are kept for the session:
detection is per timepoint, so this changes nothing in the tracks) and links the whole series again, which is
what changes as the series grows.

``status.html`` is rewritten (atomically) after every round: stacks seen / complete / processed, the
backlog, the last volume's latency, the fused timepoints and the provisional tracks; it refreshes itself in
a browser every 10 s. Both are made in the watch process between rounds, never while Snakemake runs.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from llsmflow.io import atomic_output

REFRESH_S = 10


def provisional_tracks_path(layout, channel: int) -> Path:
    return layout.work / "watch" / f"tracks-ch{int(channel)}.provisional.csv"


def status_page_path(layout) -> Path:
    return layout.work / "watch" / "status.html"


def track_channels(acq, config: dict) -> list[int]:
    """The channels the track step tracks (``track.channels``: ``all`` or a list)."""
    chosen = config["track"]["channels"]
    return list(range(len(acq.channels))) if chosen == "all" else [int(c) for c in chosen]


def refresh_tracks(
    layout, acq, config: dict, n_timepoints: int, detections: dict[int, dict] | None = None
) -> dict[int, int]:
    """Track the fused timepoints ``0 … n_timepoints−1`` of each tracked channel; ``channel -> tracks``.
    Nothing is written for fewer than two timepoints. ``detections`` (``channel -> {timepoint: table}``, kept
    by the caller between refreshes) saves detecting a timepoint again."""
    from llsmflow.stitch.fused import read_fused
    from llsmflow.track import track_particles

    if n_timepoints < 2:
        return {}
    settings = config["track"]
    found = {}
    for channel in track_channels(acq, config):
        stores = [layout.fused(channel, t) for t in range(n_timepoints)]
        _, origin, voxel = read_fused(stores[0])
        tracks = track_particles(
            lambda t, stores=stores: read_fused(stores[t])[0],
            voxel,
            acq.time_interval_s,
            n_frames=n_timepoints,
            frame_numbers=list(range(n_timepoints)),
            times_s=acq.frame_times_s[:n_timepoints],
            diameter_um=settings["diameter_um"],
            search_range_um=settings["search_range_um"],
            memory=settings["memory"],
            min_track_length=settings["min_track_length"],
            min_mass=settings["min_mass"],
            percentile=settings["percentile"],
            origin_um=origin,
            detections=None if detections is None else detections.setdefault(channel, {}),
        )
        path = provisional_tracks_path(layout, channel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tracks.to_csv(tmp, index=False)
        found[channel] = int(tracks["particle"].nunique()) if len(tracks) else 0
    return found


def write_status_page(layout, counts, fused_timepoints: int, tracks: dict[int, int], dataset: str) -> Path:
    """The live status page (see the module docstring)."""
    latency = f"{counts.latency_s:.1f} s" if counts.latency_s is not None else "–"
    latencies = sorted(counts.latencies.values())
    median = f"{latencies[len(latencies) // 2]:.1f} s" if latencies else "–"
    rows = [
        ("stacks seen", f"{counts.seen}" + (f" of {counts.declared} declared" if counts.declared else "")),
        ("stacks complete", counts.complete),
        ("volumes processed (deconvolved)", counts.processed),
        ("backlog (complete, not yet processed)", counts.backlog),
        ("last volume: its last byte → deconvolved", latency),
        ("median of that latency so far", median),
        ("rounds", counts.rounds),
        ("state", counts.state),
        ("fused timepoints (live archive: live.ome.zarr)", fused_timepoints),
    ]
    for channel, n in sorted(tracks.items()):
        rows.append(
            (f"PROVISIONAL tracks, channel {channel} (tracks-ch{channel}.provisional.csv)",
             f"{n} over timepoints 0–{fused_timepoints - 1}")
        )
    body = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>llsmflow watch: {html.escape(dataset)}</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:2em}}
.note{{color:#a40}}</style></head><body>
<h1>llsmflow watch: {html.escape(dataset)}</h1>
<p>Updated {time.strftime("%Y-%m-%d %H:%M:%S")}; this page reloads every {REFRESH_S} s.</p>
<table>
{body}
</table>
<p class="note">Provisional: the tracks here link only the timepoints fused so far and change as the
acquisition grows. The results (tracks, archive, QC report, provenance) are those of the final run, made
when the acquisition ends, exactly as <code>llsmflow run</code> makes them.</p>
</body></html>
"""
    path = status_page_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path
