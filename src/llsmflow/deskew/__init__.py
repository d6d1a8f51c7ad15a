"""Stage-scan lattice light-sheet deskewing and geometry: deskew, deskew + rotation, and frame conversions.

Frames (all in µm, axis order ZYX):

- **raw**: the camera stack. Plane ``k`` was taken after the stage moved ``k·dz`` along the scan axis.
- **objective** (deskewed): orthogonal frame of the detection objective. The light sheet lies in its YX
  plane; successive sheets are ``dz' = dz·|sin θ|`` apart along its Z; a sample-fixed point moves by
  ``dz·cos θ`` along X between planes. Deskewing maps raw to this frame with a pure shear of
  ``s = dz·cos θ / dx`` pixels per plane (sign of θ gives the direction), see ``../shared/notes/field-notes.md``.
- **coverslip**: rotated so that Z is normal to the coverslip and X runs along the stage scan. Rotation by θ
  about Y from the objective frame.

Why the resampling is hand-written rather than done by ``scipy.ndimage.affine_transform``:

- **Deskew** is a per-plane 1-D shift along the scan axis by ``base + k·s`` pixels. Each plane is one
  sub-pixel shift with the same two linear weights for every voxel: a cast, three contiguous ufunc passes
  (``p1 + f·(p0 − p1)``) in a small per-thread buffer that stays in cache, and one copy into the output slice;
  only the two empty wedges are filled. Planes are independent, so they run in a thread pool (NumPy releases
  the GIL). A general affine resampler instead evaluates a 3-D coordinate and 8 neighbours per voxel: the
  hand-written shear is tens of times faster (``bench/bench_deskew.py``).
- **Deskew + rotation** (to the coverslip frame, isotropic voxels) is one affine from the raw stack so that
  the data are interpolated only once (PetaKit5D "DSR combined", pyclesperanto ``deskew_x``). The rotation is
  about Y and the shear is along X, so the map from an output (Z, X) position to the raw (plane k, column i)
  position is the *same* 2-D affine for every camera row y. The bilinear neighbours and weights are therefore
  computed once for the 2-D output grid (a sparse matrix with 4 entries per output (Z, X) point) and applied
  to all rows at once: ``scipy.sparse`` multiplies it with the raw stack laid out as (k·nx + i, y), one C loop
  of four multiply-adds over contiguous y vectors per output point, in Z blocks across threads. A different
  output voxel size along Y is a separate linear resampling of y before that product, which is exactly the
  trilinear interpolation (the weights are separable). The general resampler stays as the reference
  (:func:`_deskew_rotate_reference`, used by the tests) and for degenerate stacks.

Submodules (re-exported here, each imported on first use)
---------------------------------------------------------
* ``frames``: the geometry relations (shear, plane spacing, deskewed shape, frame rotations, the rotated
  volume's grid and :func:`rotated_shape`); NumPy only, so ingest and the HPC layer size volumes without
  loading the resampling code.
* ``shear``: :func:`deskew` (the per-plane shift) and :func:`deskewed_valid_mask`, which mirrors its rule.
* ``rotate``: :func:`deskew_rotate` (sparse bilinear map, SciPy) and its ``affine_transform`` reference;
  :func:`rotated_valid_mask`, where a rotated volume holds data (its empty wedges are not data).
* ``stack``: :func:`deskew_stack`, the one choice between the two frames (config ``deskew.rotate``) that the
  workflow's jobs, the QC previews and :func:`llsmflow.decon.deskew_deconvolve` make.
* ``workers``: the thread pool both kernels use (:func:`default_workers`).
* ``device``: :func:`deskew_xp` and :func:`deskew_rotate_xp`, the same on an array module (NumPy or CuPy), so
  that a volume deskewed on a GPU stays there for deconvolution (``docs/gpu.md``).

``llsmflow.geometry`` (the module this package was) re-exports the same names.
"""

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "deskewed_plane_spacing_um": "frames",
    "deskewed_shape": "frames",
    "objective_to_coverslip_matrix": "frames",
    "shear_px_per_plane": "frames",
    "stage_to_objective_um": "frames",
    "DeskewResult": "shear",
    "deskew": "shear",
    "deskewed_valid_mask": "shear",
    "deskew_rotate": "rotate",
    "rotated_valid_mask": "rotate",
    "rotated_shape": "frames",
    "frame_rotation_matrix": "frames",
    "default_workers": "workers",
    "deskew_xp": "device",
    "deskew_stack": "stack",
    "scan_shear_px_per_plane": "stack",
    "deskew_rotate_xp": "device",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
