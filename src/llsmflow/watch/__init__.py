"""Processing during acquisition (``llsmflow watch``): a raw folder followed while the instrument writes it.

Submodules:

``complete``
    Is a raw file complete: its planes (TIFF) or subblocks (CZI) as its metadata declares, headers only.
``folder``
    The folder's files and their states (growing, stalled, complete); watchdog events or polling.
``plan``
    A round's Snakemake targets: the volumes complete now, the timepoints whose tiles are all in.
``session``
    The loop: rounds, the status line, the end of the acquisition and the final (batch) run.
``live``
    The live archive: fused timepoints appended to an OME-Zarr image as they come.
``live_tracks``
    Provisional tracks over the fused timepoints so far, and the live status page.
``rounds``, ``worker``
    The rounds' one persistent Snakemake process (Snakemake's start-up paid once per session).
"""

from __future__ import annotations

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "file_state": "complete",
    "tiff_state": "complete",
    "czi_state": "complete",
    "janelia_planes": "complete",
    "Folder": "folder",
    "needs_polling": "folder",
    "file_system_type": "folder",
    "plan_round": "plan",
    "Layout": "plan",
    "Watch": "session",
    "StatusLine": "session",
    "WATCH_FILES_ENV": "session",
    "grow_live_archive": "live",
    "live_archive_path": "live",
    "refresh_tracks": "live_tracks",
    "write_status_page": "live_tracks",
    "Rounds": "rounds",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
