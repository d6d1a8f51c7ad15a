"""llsmflow: lattice light-sheet processing from raw stacks to archived, tracked, provenance-recorded results.

The library is plain functions over NumPy arrays and paths (no Snakemake import), in layers whose imports
point down only (docs/architecture.md):

- ``cli``: all argument parsing (``llsmflow.cli:main``);
- ``run`` (config, run paths, lock, status, step records), ``provenance`` (run record, RO-Crate,
  reproduce), ``hpc`` (resources, profiles, dask cluster, containers);
- processing, a package per stage: ``ingest``, ``deskew``, ``decon``, ``stitch``, ``track``, ``archive``,
  ``qc``, ``synth``;
- the bottom: ``io``, ``errors``, ``progress``, ``parallel``.

Conventions used throughout:
- volumes are ZYX arrays; physical sizes are in micrometres (``*_um``) and times in seconds (``*_s``);
- voxel sizes are given as ``(dz_um, dy_um, dx_um)`` tuples in ZYX order.
"""

__version__ = "0.1.0"
