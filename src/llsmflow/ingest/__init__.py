"""Ingest: acquisition metadata + file discovery → an :class:`Acquisition` and its sample table.

An acquisition directory holds one TIFF stack per (tile, channel, timepoint), named by the instrument, and a
metadata file (``acquisition.json``, see :mod:`llsmflow.synth` for the format). Ingest reads the metadata,
applies overrides from the workflow config (e.g. a corrected angle), finds the stacks by the file-name pattern,
checks that what the metadata declares and what the files provide agree, and returns an :class:`Acquisition`
whose ``samples`` table is what the workflow iterates over. Nothing in the raw directory is written.

Submodules (re-exported here, each imported on first use)
---------------------------------------------------------
* ``model``: the one acquisition model (:class:`Acquisition`) that every format fills, and ``tiles.csv``.
* ``acquisition_json``: reading ``acquisition.json`` (size-capped, schema-checked types, overrides, the
  ``file_regex``), every fault one line naming the file, the field, the value and the expectation.
* ``files``: matching stack files to samples, declared vs found (missing timepoints, channels, tiles), the
  stack header and PSF checks.
* ``czi``, ``janelia``, ``ome_tiff``: what a Zeiss CZI, a Janelia/3i ``Settings.txt`` + stacks and an
  OME-TIFF/ImageJ hyperstack say (each module says which library reads it and why).
* ``detect``: which format a raw folder holds, read into acquisition.json's fields and a sample table.
* ``instrument``: an instrument folder as an :class:`Acquisition` (acquisition.json and config overrides on top).
* ``read``: :func:`read_acquisition`, which puts them together.
"""

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "Acquisition": "model",
    "tile_name": "model",
    "tiles_csv_table": "model",
    "ACQUISITION_SCHEMA": "acquisition_json",
    "METADATA_NAME": "acquisition_json",
    "OVERRIDABLE": "acquisition_json",
    "load_acquisition_json": "acquisition_json",
    "check_declared_vs_found": "files",
    "match_stacks": "files",
    "require_psf_within_volume": "files",
    "read_acquisition": "read",
    "CziInfo": "czi",
    "read_czi_info": "czi",
    "JaneliaSettings": "janelia",
    "parse_settings": "janelia",
    "HyperstackInfo": "ome_tiff",
    "read_hyperstack_info": "ome_tiff",
    "FORMATS": "detect",
    "InstrumentReading": "detect",
    "detect_format": "detect",
    "read_instrument": "detect",
    "instrument_metadata": "instrument",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
