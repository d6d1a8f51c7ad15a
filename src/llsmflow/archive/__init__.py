"""Archiving: OME-Zarr images with physical metadata, sha256 checksum manifests, and the dataset archive.

An archive is one OME-Zarr image, axes ``t c z y x`` (time in seconds, space in micrometres), with a
multiscale pyramid, ``omero`` channel metadata and the acquisition metadata and processing history under an
``"llsmflow"`` key of the root group's attributes; beside it, Parquet tables and a ``sha256sum``-compatible
manifest of every file (and of the raw inputs).

Submodules (each name below is also importable from ``llsmflow.archive``, loaded on first use)
---------------------------------------------------------------------------------------------
``ome_zarr``
    Writing the NGFF image with ome-zarr-py (:func:`write_ome_zarr`, :func:`pyramid_factors`,
    :func:`wavelength_color`, contrast windows).
``read``
    Reading it back (:func:`read_ome_zarr`) with ome-zarr-py's reader: level 0, µm, s; one z projection of a
    local image with zarr alone (:func:`max_projection_yx`: the QC mosaic job, without ome-zarr-py or dask).
``manifest``
    The ``sha256sum`` line format (:func:`write_checksum_manifest`, :func:`verify_manifest`; ``sha256_file``
    from :mod:`llsmflow.io`). Light: no zarr, dask or ome-zarr, because the provenance job needs only this.
``dataset``
    The image + ``tables/`` + ``checksums.sha256`` directory (:func:`write_dataset_archive`,
    :func:`verify_archive`), built from the two above.
``convert``
    A copy in another NGFF version (:func:`convert_archive`: 0.4 for Fiji/MoBIE, 0.5), nothing re-run.
``append``
    One more timepoint appended to a live archive, readable throughout (:func:`append_timepoint`;
    ``llsmflow watch``).

The workflow's defaults (``ngff_version``, ``chunks``) are stated in ``config/schema.yaml`` (section
``archive``); :func:`write_ome_zarr`'s defaults agree with them (a test checks).
"""

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "write_ome_zarr": "ome_zarr",
    "read_ome_zarr": "read",
    "max_projection_yx": "read",
    "pyramid_factors": "ome_zarr",
    "wavelength_color": "ome_zarr",
    "AXES": "ome_zarr",
    "NGFF_VERSIONS": "ome_zarr",
    "MIN_LATERAL_PX": "ome_zarr",
    "DEFAULT_COLORS": "ome_zarr",
    "sha256_file": "manifest",
    "write_checksum_manifest": "manifest",
    "verify_manifest": "manifest",
    "write_dataset_archive": "dataset",
    "verify_archive": "dataset",
    "MANIFEST_NAME": "dataset",
    "TABLES_DIR": "dataset",
    "RAW_PREFIX": "dataset",
    "WORKFLOW_MARKERS": "dataset",
    "convert_archive": "convert",
    "append_timepoint": "append",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "max_projection_yx",
    "read_ome_zarr",
    "sha256_file",
    "verify_manifest",
    "write_checksum_manifest",
    "write_ome_zarr",
]
