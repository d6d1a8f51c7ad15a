"""llsmflow: lattice light-sheet processing from raw stacks to archived, tracked, provenance-recorded results.

The library is plain functions over NumPy arrays and paths (no Snakemake import), one module per concern:
``io``, ``geometry``, ``decon``, ``stitch``, ``track``, ``archive``, ``provenance``, ``synth``, ``cli``.

Conventions used throughout:
- volumes are ZYX arrays; physical sizes are in micrometres (``*_um``) and times in seconds (``*_s``);
- voxel sizes are given as ``(dz_um, dy_um, dx_um)`` tuples in ZYX order.
"""

__version__ = "0.1.0"
