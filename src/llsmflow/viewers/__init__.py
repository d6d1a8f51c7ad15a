"""Viewers: opening an llsmflow archive in napari with its channels and tracks in register.

``napari.yaml`` (package data) is the npe2 manifest of the reader; ``pyproject.toml`` registers it under the
``napari.manifest`` entry point. docs/viewers.md says how to open archives in napari, Fiji, MoBIE and
BigDataViewer, and what is verified.

Submodules (each name below is also importable from ``llsmflow.viewers``, loaded on first use)
---------------------------------------------------------------------------------------------
``napari_reader``
    :func:`get_reader` (the reader contribution) and :func:`archive_layers` (the layer data: one image layer
    per channel with its name, colour, contrast window, scale and translation in µm and s; one tracks layer
    per tracks table, in the same world coordinates). Imports no napari: it returns napari's layer-data
    tuples, so it is testable and cheap to import.
"""

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "get_reader": "napari_reader",
    "archive_layers": "napari_reader",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["archive_layers", "get_reader"]
