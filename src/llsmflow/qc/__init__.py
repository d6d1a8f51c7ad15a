"""Quality control: what a person looks at to trust a run.

Submodules (re-exported here, each imported on first use)
---------------------------------------------------------
* ``previews``: maximum projections of tiles and the mosaic as PNG (matplotlib, Agg), each panel with a
  scale bar and its display range, described in the PNG's text (``read_panels``); the ``qc_tile`` and
  ``qc_mosaic`` jobs.
* ``report``: the self-contained HTML report (figures inlined, tables of steps, stitching and tracks) of the
  ``qc_report`` job. It renders what it is given: the run layer reads the step records and the provenance
  package summarises the run, so this package imports neither.

The seam is the dependency: previews need matplotlib, the report only the standard library.
"""

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "contrast_limits": "previews",
    "save_projection_panel": "previews",
    "save_projection_grid": "previews",
    "tile_projection_rows": "previews",
    "save_mosaic": "previews",
    "read_panels": "previews",
    "nice_length": "previews",
    "render_report": "report",
    "write_report": "report",
    "png_data_uri": "report",
    "read_manifest": "report",
    "channel_names": "report",
    "preview_panels": "report",
    "png_text": "report",
    "run_figures": "report",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
