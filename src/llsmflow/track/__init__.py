"""Particle detection, linking and track statistics in µm and seconds.

trackpy does the detection (Crocker–Grier centroids, :func:`trackpy.locate`), the linking
(:func:`trackpy.link`, :func:`trackpy.filter_stubs`) and the drift (:func:`trackpy.compute_drift`); this
package converts units, handles the anisotropic voxels of light-sheet volumes, chooses a mass threshold when
none is given, and computes statistics (per-track summaries, ensemble mean squared displacement, diffusion
coefficients) and plots.

Submodules (each name below is also importable from ``llsmflow.track``, loaded on first use)
-------------------------------------------------------------------------------------------
``detect``
    One volume → a feature table: µm → voxel diameters, :func:`trackpy.locate`, automatic mass threshold
    (:func:`detect_particles`, :func:`diameter_px`, :func:`auto_min_mass`, :func:`local_noise`).
``link``
    Frames → tracks: detection per frame, then :func:`trackpy.link` on the µm columns
    (:func:`track_particles`).
``stats``
    Tracks → numbers, with NumPy and pandas only (trackpy only for the drift): :func:`summarise_tracks`,
    :func:`ensemble_msd`, :func:`track_msd`, :func:`subtract_drift`, :func:`fit_diffusion`.
``plots``
    Tracks and MSD curves → PNG; the only module that imports matplotlib.
``tables``
    The track table's position columns (:data:`POS_COLUMNS`, µm), its validation and :func:`write_tracks`.

The seams follow what a caller needs: statistics and plots of an existing table need neither trackpy's
detection nor each other's libraries, and a detection change never touches the table format.

Conventions
-----------
- Volumes are ZYX arrays; voxel sizes are ``(dz_um, dy_um, dx_um)``; positions are in µm, times in s.
- A voxel index ``i`` along an axis sits at ``origin_um + i * voxel_um`` (the voxel centre), so detections in
  a fused volume come out in the same stage coordinates as the volume.
- Feature sizes are given in µm and converted per axis to the odd pixel diameters trackpy needs, so the same
  physical size gives a larger diameter in pixels along the finely sampled lateral axes than along Z.
- Linking runs on the µm columns, so the search range is a sphere in physical space whatever the voxel shape.
- The workflow's defaults are stated in ``config/schema.yaml`` (section ``track``); the defaults of
  :func:`detect_particles` and :func:`track_particles` agree with them (a test checks).

Compatibility
-------------
trackpy 0.7 still calls ``inplace=True`` pandas methods that pandas 3 deprecates (``Pandas4Warning``); the
results are correct, and these warnings, with trackpy's per-frame INFO log lines, are silenced only around
our calls into trackpy (see ``llsmflow.track._common._quiet_trackpy``).
"""

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "POS_COLUMNS": "tables",
    "write_tracks": "tables",
    "diameter_px": "detect",
    "auto_min_mass": "detect",
    "local_noise": "detect",
    "detect_particles": "detect",
    "AUTO_MASS_FALSE_POSITIVES": "detect",
    "AUTO_MASS_MARGIN": "detect",
    "AUTO_MASS_MIN_SDS": "detect",
    "POPULATION_GAP_FACTOR": "detect",
    "POPULATION_MIN_UPPER": "detect",
    "NOISE_FLOOR_FRACTION": "detect",
    "track_particles": "link",
    "ADAPTIVE_STOP_FRACTION": "link",
    "summarise_tracks": "stats",
    "ensemble_msd": "stats",
    "track_msd": "stats",
    "subtract_drift": "stats",
    "fit_diffusion": "stats",
    "plot_tracks": "plots",
    "plot_msd": "plots",
    "import_trackpy": "_common",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "diameter_px",
    "auto_min_mass",
    "local_noise",
    "detect_particles",
    "track_particles",
    "summarise_tracks",
    "ensemble_msd",
    "track_msd",
    "subtract_drift",
    "fit_diffusion",
    "plot_tracks",
    "plot_msd",
    "write_tracks",
    "import_trackpy",
]
