"""Particle detection, linking and track statistics in µm and seconds.

trackpy does the detection (Crocker–Grier centroids, :func:`trackpy.locate`) and the linking
(:func:`trackpy.link`, :func:`trackpy.filter_stubs`); this module only converts units, handles the
anisotropic voxels of light-sheet volumes, chooses a mass threshold when none is given, and computes
statistics (per-track summaries, ensemble mean squared displacement, diffusion coefficients) and plots.

Conventions
-----------
- Volumes are ZYX arrays; voxel sizes are ``(dz_um, dy_um, dx_um)``; positions are in µm, times in s.
- A voxel index ``i`` along an axis sits at ``origin_um + i * voxel_um`` (the voxel centre), so detections in
  a fused volume come out in the same stage coordinates as the volume.
- Feature sizes are given in µm and converted per axis to the odd pixel diameters trackpy needs, so the same
  physical size gives a larger diameter in pixels along the finely sampled lateral axes than along Z.
- Linking runs on the µm columns, so the search range is a sphere in physical space whatever the voxel shape.

Compatibility
-------------
trackpy 0.7 still calls ``inplace=True`` pandas methods that pandas 3 deprecates (``Pandas4Warning``); the
results are correct, and these warnings, with trackpy's per-frame INFO log lines, are silenced only around
our calls into trackpy (see :func:`_quiet_trackpy`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from llsmflow.errors import LlsmflowError, require_positive_voxel_size
from llsmflow.io import atomic_output

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
]

POS_COLUMNS = ["z_um", "y_um", "x_um"]
"""Position columns (µm) used for linking and statistics, in ZYX order."""

AUTO_MASS_FALSE_POSITIVES = 0.01
"""Expected number of noise maxima per volume passing the automatic mass threshold (Gaussian model)."""

AUTO_MASS_MARGIN = 1.0
"""Extra robust standard deviations added to the automatic threshold for tails heavier than Gaussian."""

AUTO_MASS_MIN_SDS = 7.0
"""The automatic threshold is never closer to the background median than this many robust SDs."""

_MIN_CANDIDATES_FOR_AUTO = 20

_NOISE_DOMINATED = 0.25
"""Candidates are taken as mostly noise maxima when at least this fraction of the number white noise gives."""


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _voxel3(voxel_size_um) -> tuple[float, float, float]:
    if voxel_size_um is None or np.ndim(voxel_size_um) != 1 or len(voxel_size_um) != 3:
        raise LlsmflowError(f"voxel size {voxel_size_um!r} µm is invalid; expected three values (dz, dy, dx)")
    values = require_positive_voxel_size(voxel_size_um)
    return (values[0], values[1], values[2])


def _origin3(origin_um) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in origin_um)
    except (TypeError, ValueError):
        raise LlsmflowError(f"origin {origin_um!r} µm is invalid; expected three numbers (z, y, x)") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise LlsmflowError(f"origin {origin_um!r} µm is invalid; expected three finite numbers (z, y, x)")
    return (values[0], values[1], values[2])


def _per_axis_um(value, what: str) -> tuple[float, float, float]:
    """A length in µm given as one number or as (z, y, x); every entry finite and positive."""
    if np.ndim(value) == 0:
        try:
            values = (float(value),) * 3
        except (TypeError, ValueError):
            raise LlsmflowError(f"{what} {value!r} is invalid; expected a positive length in µm") from None
    else:
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise LlsmflowError(f"{what} {value!r} is invalid; expected positive lengths in µm") from None
        if len(values) != 3:
            raise LlsmflowError(
                f"{what} {value!r} has {len(values)} entries; expected one or three (z, y, x)"
            )
    for v in values:
        if not (v > 0 and math.isfinite(v)):
            raise LlsmflowError(f"{what} {value!r} µm is invalid; expected finite positive lengths in µm")
    return (values[0], values[1], values[2])


def _positive(value, what: str, unit: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LlsmflowError(f"{what} {value!r} is invalid; expected a positive number in {unit}") from None
    if not (v > 0 and math.isfinite(v)):
        raise LlsmflowError(f"{what} {value!r} {unit} is invalid; expected a finite positive number")
    return v


def _int_at_least(value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise LlsmflowError(f"{what} {value!r} is invalid; expected an integer >= {minimum}")
    return int(value)


def _check_volume(volume, what: str = "volume") -> np.ndarray:
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise LlsmflowError(f"{what} has shape {arr.shape}; expected a 3-D ZYX array")
    if arr.dtype.kind not in "uif" or arr.dtype.kind == "b":
        raise LlsmflowError(f"{what} has dtype {arr.dtype}; expected an integer or floating point image")
    if arr.size == 0:
        raise LlsmflowError(f"{what} has shape {arr.shape}; expected a non-empty ZYX array")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise LlsmflowError(f"{what} contains NaN or infinite voxels; expected finite intensities")
    return arr


def _check_tracks(tracks, need=("particle", "frame", *POS_COLUMNS)) -> pd.DataFrame:
    if not isinstance(tracks, pd.DataFrame):
        raise LlsmflowError(f"tracks of type {type(tracks).__name__} given; expected a pandas DataFrame")
    missing = [c for c in need if c not in tracks.columns]
    if missing:
        raise LlsmflowError(
            f"tracks lack column(s) {missing} (have {list(tracks.columns)}); expected at least {list(need)}"
        )
    if tracks.duplicated(["particle", "frame"]).any():
        raise LlsmflowError("tracks have several rows for one (particle, frame); expected one position each")
    return tracks


@contextlib.contextmanager
def _quiet_trackpy() -> Iterator[None]:
    """Silence trackpy's per-frame INFO log lines and its pandas-3 deprecation warnings, then restore."""
    logger = logging.getLogger("trackpy")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"trackpy(\.|$)")
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"trackpy(\.|$)")
            # an empty (all-zero) frame simply has no particles; a 3-slice volume is not a colour image
            warnings.filterwarnings("ignore", message="Image is completely black", category=UserWarning)
            warnings.filterwarnings("ignore", message="I am interpreting the image as", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------------------------------
# detection


def diameter_px(diameter_um, voxel_size_um) -> tuple[int, int, int]:
    """Convert a feature diameter in µm to trackpy's odd per-axis diameter in voxels.

    Parameters
    ----------
    diameter_um : float or sequence of 3 floats
        Feature diameter in µm, the same along every axis or given as ``(z, y, x)``.
    voxel_size_um : sequence of 3 floats
        ``(dz, dy, dx)`` in µm.

    Returns
    -------
    tuple of int
        ``(nz, ny, nx)``: per axis the smallest odd integer not below ``diameter / voxel``, and at least 3.

    Examples
    --------
    >>> diameter_px(0.5, (0.157, 0.104, 0.104))
    (5, 5, 5)
    >>> diameter_px(1.0, (0.3, 0.1, 0.1))
    (5, 11, 11)
    """
    voxel = _voxel3(voxel_size_um)
    diam = _per_axis_um(diameter_um, "diameter")
    out = []
    for d, v in zip(diam, voxel, strict=True):
        n = math.ceil(d / v - 1e-9)
        if n % 2 == 0:
            n += 1
        out.append(max(3, n))
    return (out[0], out[1], out[2])


def _as_uint16(arr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Rescale to the full uint16 range so trackpy refines centroids on 16-bit rather than 8-bit data.

    trackpy converts float images to uint8 after band-passing; with a few bright voxels that quantises dim
    particles to a handful of grey levels. Returns the image, the scale (counts per input unit) and the
    offset subtracted (the volume minimum when negative, else 0).
    """
    data = arr.astype(np.float64, copy=False)
    offset = min(float(data.min()), 0.0)
    top = float(data.max()) - offset
    scale = 65535.0 / top if top > 0 else 1.0
    out = np.rint((data - offset) * scale).astype(np.uint16)
    return out, scale, offset


ADAPTIVE_STOP_FRACTION = 0.2
"""Linking may shrink the search range down to this fraction of it where candidates crowd."""
POPULATION_GAP_FACTOR = 2.0
"""A gap of more than this factor in mass between consecutive candidates separates particles from the rest."""
POPULATION_MIN_UPPER = 3
"""At least this many candidates must lie above a separating gap."""
NOISE_FLOOR_FRACTION = 0.25
"""Block noise is at least this fraction of the median block noise of the volume."""


def auto_min_mass(masses, reference=None) -> float:
    """Robust threshold separating particles from the background population of candidate maxima.

    The candidates are all local maxima that trackpy finds above the intensity ``percentile``. Noise maxima
    far outnumber particles in any volume where particles can be tracked at all (particles must be spaced
    more than the search range apart, while noise gives a maximum every few voxels), so the median and the
    median absolute deviation (MAD) of the candidate masses describe the background. Its masses are close
    to Gaussian (sums over the feature mask), so the threshold is::

        median + k * 1.4826 * MAD,   k = max(AUTO_MASS_MIN_SDS, Φ⁻¹(1 - 0.01 / n_candidates) + 1)

    i.e. at least 7 robust standard deviations: more than the level a Gaussian background exceeds by chance
    once in 100 volumes (``AUTO_MASS_FALSE_POSITIVES``) plus one SD for heavier tails, which grows past 7
    only beyond about 10⁷ candidates. The margin also covers maxima of faint static structure that rise
    slightly above the noise; at the default diameter it corresponds to a peak signal-to-noise ratio of
    about 3–4 for a diffraction-limited spot.

    Parameters
    ----------
    masses : array_like
        Mass (or noise-normalised mass, as :func:`detect_particles` uses) of every candidate in one volume.
    reference : array_like or None
        Masses of a pure-noise reference; when given, its median and MAD describe the background instead
        of those of ``masses`` (whose number still sets ``n_candidates``). A background of fewer than 20
        values is too small for statistics and gives 0 (keep all).

    Returns
    -------
    float
        The threshold; features with a larger value are kept.
    """
    m = np.asarray(masses, dtype=np.float64)
    m = m[np.isfinite(m)]
    n = max(m.size, 1)
    if reference is not None:
        m = np.asarray(reference, dtype=np.float64)
        m = m[np.isfinite(m)]
    if m.size < _MIN_CANDIDATES_FOR_AUTO:
        return 0.0
    median = float(np.median(m))
    sigma = 1.4826 * float(np.median(np.abs(m - median)))
    if sigma <= 0:
        sigma = float(np.std(m))
    z = float(stats.norm.isf(AUTO_MASS_FALSE_POSITIVES / n))
    return median + max(AUTO_MASS_MIN_SDS, z + AUTO_MASS_MARGIN) * sigma


def local_noise(volume, diameter_px) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Robust noise of the band-passed volume, per block, in the band trackpy detects in.

    The volume is band-passed as :func:`trackpy.locate` does (Gaussian of 1 voxel minus a box average of
    the feature diameter), which removes the background and anything broader than a particle; the noise of
    each block (4 diameters per axis, at most 32 blocks per axis) is ``1.4826 * MAD`` of that. Particles
    cover a small fraction of a block and hardly move the median. Poisson noise grows with the local
    background, so the noise over a dim cell body is larger than over empty medium; this map lets the
    automatic mass threshold follow it.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
    diameter_px : sequence of 3 int
        Feature diameter in voxels (as from :func:`diameter_px`).

    Returns
    -------
    sigma : ndarray, shape (nbz, nby, nbx)
        Noise SD per block, in units of ``volume``.
    block : tuple of int
        The block size used per axis (block ``i`` covers voxels ``i*block .. (i+1)*block - 1``; remainder
        voxels at the far edges belong to the last block).
    """
    from scipy import ndimage

    arr = np.asarray(volume, dtype=np.float32)
    band = ndimage.gaussian_filter(arr, 1.0, truncate=4.0) - ndimage.uniform_filter(arr, tuple(diameter_px))
    counts = [min(32, max(1, s // (4 * int(d)))) for s, d in zip(band.shape, diameter_px, strict=True)]
    size = [s // n for s, n in zip(band.shape, counts, strict=True)]
    cropped = band[: counts[0] * size[0], : counts[1] * size[1], : counts[2] * size[2]]
    blocks = cropped.reshape(counts[0], size[0], counts[1], size[1], counts[2], size[2])
    blocks = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(counts[0], counts[1], counts[2], -1)
    # A robust spread needs a few thousand samples, not every voxel: every 4th voxel of a block is plenty and
    # makes the medians 4× cheaper.
    if blocks.shape[-1] >= 4 * 2048:
        blocks = blocks[..., ::4]
    centre = np.median(blocks, axis=-1, keepdims=True)
    sigma = 1.4826 * np.median(np.abs(blocks - centre), axis=-1)
    # Blocks in empty regions (the zero-filled wedges of deskewed data, space outside a fused mosaic) have
    # almost no noise; without a floor every faint ripple there would look significant.
    sigma = np.maximum(sigma, NOISE_FLOOR_FRACTION * float(np.median(sigma)))
    return sigma.astype(np.float64), (size[0], size[1], size[2])


def _noise_at(sigma: np.ndarray, block: tuple[int, int, int], coords_px: np.ndarray) -> np.ndarray:
    """Linearly interpolate the block noise map at voxel coordinates (N, 3)."""
    from scipy import ndimage

    grid = coords_px / np.asarray(block, dtype=np.float64) - 0.5
    return ndimage.map_coordinates(sigma, grid.T, order=1, mode="nearest")


@functools.lru_cache(maxsize=32)
def _noise_reference(diam: tuple[int, int, int], percentile: float, separation) -> tuple[np.ndarray, float]:
    """Noise-normalised masses of the maxima of white Gaussian noise, located as real volumes are.

    Returns the masses and the number of candidate maxima per voxel of (interior) volume. Deterministic
    (fixed seed) and cached per parameter set; about 0.1 s for the default diameter.
    """
    import trackpy

    shape = tuple(int(np.clip(10 * d, 32, 128)) for d in diam)
    noise = np.random.default_rng(0).normal(1000.0, 10.0, shape)
    image, scale, _ = _as_uint16(noise)
    with _quiet_trackpy():
        found = trackpy.locate(image, diam, minmass=None, separation=separation, percentile=percentile)
    sigma, block = local_noise(noise, diam)
    coords = found[list("zyx")].to_numpy(dtype=np.float64)
    snr = (found["mass"].to_numpy() / scale) / _noise_at(sigma, block, coords)
    density = len(found) / float(np.prod([s - d for s, d in zip(shape, diam, strict=True)]))
    return snr, density


def _population_split(mass: np.ndarray) -> float:
    """Mass in the widest clear gap between the brightest candidates and the rest, else 0.

    Deconvolved data need this: Richardson–Lucy concentrates a particle's intensity while the background,
    clamped at zero, becomes sparse speckle, and dim static structure (a textured cell body, filaments)
    leaves many maxima of intermediate mass; neither is Gaussian, so the median/MAD rule of
    :func:`auto_min_mass` lets their tail through. Particles then stand apart: sorted by mass, the candidates
    show a gap of more than a factor :data:`POPULATION_GAP_FACTOR` between the dimmest particle and the
    brightest background maximum. The widest such gap with at least :data:`POPULATION_MIN_UPPER` candidates
    above it, within the brighter half, is taken; without a clear gap (a continuous range of brightness, as in
    raw data) this rule does not apply.
    """
    positive = np.sort(mass[mass > 0])[::-1]
    if positive.size < _MIN_CANDIDATES_FOR_AUTO:
        return 0.0
    log_mass = np.log10(positive)
    gaps = log_mass[:-1] - log_mass[1:]  # gaps[i]: between candidate i (brighter) and i + 1
    usable = np.arange(gaps.size)
    usable = usable[(usable + 1 >= POPULATION_MIN_UPPER) & (usable < positive.size // 2)]
    if usable.size == 0:
        return 0.0
    widest = usable[np.argmax(gaps[usable])]
    if gaps[widest] < math.log10(POPULATION_GAP_FACTOR):
        return 0.0
    return float(10 ** (0.5 * (log_mass[widest] + log_mass[widest + 1])))


def _auto_keep(found: pd.DataFrame, shape, diam, percentile: float, separation) -> np.ndarray:
    """Boolean mask of candidates kept by the automatic threshold (see :func:`detect_particles`)."""
    noise = found["local_noise"].to_numpy()
    top = float(np.max(noise)) if len(noise) else 0.0
    if top <= 0:  # noise-free volume: every maximum is signal
        return np.ones(len(found), dtype=bool)
    snr = found["mass"].to_numpy() / np.maximum(noise, 1e-3 * top)
    reference, density = _noise_reference(tuple(diam), percentile, separation)
    mass = found["mass"].to_numpy()
    split = _population_split(mass)
    if split > 0:
        # Two clear populations (typical of deconvolved data): the bright one, if it stands out of noise.
        return (mass > split) & (snr > auto_min_mass(snr, reference))
    expected = density * float(np.prod([max(s - d, 0) for s, d in zip(shape, diam, strict=True)]))
    if len(snr) >= max(_MIN_CANDIDATES_FOR_AUTO, _NOISE_DOMINATED * expected):
        return snr > auto_min_mass(snr)
    # Too few candidates to be mostly noise maxima (a small volume, or clean data where the band-pass
    # leaves no noise peaks): white noise of the measured level stands in for the background.
    return snr > auto_min_mass(snr, reference)


def _empty_features() -> pd.DataFrame:
    cols = {c: pd.Series(dtype="float64") for c in [*POS_COLUMNS, "z_px", "y_px", "x_px", "mass"]}
    return pd.DataFrame(cols)


def detect_particles(
    volume,
    voxel_size_um,
    diameter_um=0.5,
    min_mass=None,
    percentile=64.0,
    separation_um=None,
    origin_um=(0.0, 0.0, 0.0),
) -> pd.DataFrame:
    """Locate bright, roughly Gaussian particles in one ZYX volume with :func:`trackpy.locate`.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        Intensities (integer or float, finite). Negative values (e.g. after background subtraction) are
        allowed. The volume is rescaled to 16 bits for trackpy; ``mass``, ``signal`` and ``raw_mass`` are
        reported back in the units of ``volume`` (``raw_mass`` of ``volume - min(volume.min(), 0)``).
    voxel_size_um : sequence of 3 floats
        ``(dz, dy, dx)`` in µm.
    diameter_um : float or sequence of 3 floats
        Feature diameter in µm (one value or ``(z, y, x)``); converted per axis by :func:`diameter_px`.
        It should be a little larger than the particle image (about 2 full widths at half maximum); for
        the elongated light-sheet PSF a larger Z value, e.g. ``(0.9, 0.5, 0.5)``, localises Z better.
    min_mass : float or None
        Minimum integrated, band-passed brightness (trackpy ``mass``) in units of ``volume``. None chooses it
        per volume. First, if the candidates' masses show a clear gap (a factor of 2 or more, with at least 3
        candidates above it, in the brighter half; :func:`_population_split`), as deconvolved data do, the
        candidates above the gap that also stand out of white noise are kept. Otherwise each candidate's mass
        is divided by the local noise (:func:`local_noise`, so regions of higher Poisson noise, such as a dim
        cell body, need brighter maxima) and candidates more than 7 robust SDs above the median of all
        candidates are kept (:func:`auto_min_mass`). This rejects noise blobs, noise over dim broad static
        structure and faint thin structure (tested with out-of-focus blobs at 60 % and a membrane at 20 % of
        the background); structure as bright as the particles is not rejected. When there are too few
        candidates for them to be mostly noise (fewer than 20, or under a quarter of what white noise gives in
        this volume: small volumes, clean or noise-free data), the median and MAD come from white noise of the
        measured level instead; a noise-free volume keeps every maximum.
    percentile : float
        Candidate maxima must be brighter than this percentile of the band-passed volume (trackpy default 64).
    separation_um : float, sequence of 3 floats or None
        Minimum separation between features in µm; None is trackpy's default, the diameter plus one voxel.
    origin_um : sequence of 3 floats
        Position ``(z, y, x)`` in µm of voxel ``(0, 0, 0)``.

    Returns
    -------
    pandas.DataFrame
        One row per feature: ``z_um, y_um, x_um`` (µm, sub-voxel), ``z_px, y_px, x_px`` (trackpy's voxel
        coordinates) and trackpy's characterisation columns (``mass``, per-axis ``size_*`` in voxels, ``ecc``
        when defined, ``signal``, ``raw_mass``, ``ep*``: static error estimate in voxels) and
        ``local_noise`` (noise SD of the band-passed volume around the feature, units of ``volume``).
        Sorted by decreasing mass. Empty, with the position columns, when nothing is found.
    """
    import trackpy

    arr = _check_volume(volume)
    voxel = _voxel3(voxel_size_um)
    origin = _origin3(origin_um)
    diam = diameter_px(diameter_um, voxel)
    pct = float(percentile)
    if not 0 <= pct < 100:
        raise LlsmflowError(f"percentile {percentile!r} is invalid; expected a value in [0, 100)")
    if min_mass is not None:
        min_mass = float(min_mass)
        if not math.isfinite(min_mass):
            raise LlsmflowError(f"min_mass {min_mass!r} is invalid; expected a finite number or None (auto)")
    separation = None
    if separation_um is not None:
        sep = _per_axis_um(separation_um, "separation")
        separation = tuple(s / v for s, v in zip(sep, voxel, strict=True))
    if any(n > s for n, s in zip(diam, arr.shape, strict=True)):
        raise LlsmflowError(
            f"volume of shape {arr.shape} is smaller than the feature diameter {diam} voxels; "
            "expected a volume larger than the particles (check diameter_um and voxel size)"
        )

    image, scale, _offset = _as_uint16(arr)
    with _quiet_trackpy():
        found = trackpy.locate(image, diam, minmass=None, separation=separation, percentile=pct)
    if len(found) == 0:
        return _empty_features()
    found = found.rename(columns={"z": "z_px", "y": "y_px", "x": "x_px"})
    for col in ("mass", "signal", "raw_mass"):
        if col in found:
            found[col] = found[col] / scale
    coords = found[["z_px", "y_px", "x_px"]].to_numpy(dtype=np.float64)
    sigma, block = local_noise(arr, diam)
    found["local_noise"] = _noise_at(sigma, block, coords)
    if min_mass is not None:
        keep = found["mass"].to_numpy() > min_mass
    else:
        keep = _auto_keep(found, arr.shape, diam, pct, separation)
    found = found[keep]
    for name, o, v in zip(POS_COLUMNS, origin, voxel, strict=True):
        found[name] = o + found[f"{name[0]}_px"].to_numpy(dtype=np.float64) * v
    first = [*POS_COLUMNS, "z_px", "y_px", "x_px"]
    found = found[first + [c for c in found.columns if c not in first]]
    return found.sort_values("mass", ascending=False, kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------
# linking


def _frames(volumes, n_frames) -> tuple[Iterable, int | None]:
    if callable(volumes):
        if n_frames is None:
            raise LlsmflowError("volumes is a callable frame -> array but n_frames is missing; expected both")
        n = _int_at_least(n_frames, 1, "n_frames")
        return (volumes(i) for i in range(n)), n
    if isinstance(volumes, np.ndarray):
        if volumes.ndim != 4:
            raise LlsmflowError(f"volumes array has shape {volumes.shape}; expected 4-D TZYX")
        return iter(volumes), volumes.shape[0] if n_frames is None else min(int(n_frames), volumes.shape[0])
    try:
        iterator = iter(volumes)
    except TypeError:
        raise LlsmflowError(
            f"volumes of type {type(volumes).__name__} given; expected ZYX arrays (iterable) or a callable"
        ) from None
    if n_frames is None:
        try:
            n_frames = len(volumes)
        except TypeError:
            n_frames = None
    return iterator, n_frames


def track_particles(
    volumes,
    voxel_size_um,
    time_interval_s,
    diameter_um=0.5,
    search_range_um=1.0,
    memory=2,
    min_track_length=3,
    min_mass=None,
    percentile=64.0,
    origin_um=(0.0, 0.0, 0.0),
    progress: Callable[[int, int | None], object] | None = None,
    n_frames: int | None = None,
    separation_um=None,
) -> pd.DataFrame:
    """Detect particles in every frame and link them into tracks in physical units.

    Each frame goes through :func:`detect_particles`; the detections are then linked by :func:`trackpy.link`
    on the µm columns (so the search sphere is isotropic in space even though voxels are not) and short
    tracks are dropped by :func:`trackpy.filter_stubs`.

    Parameters
    ----------
    volumes : iterable of ndarray, 4-D ndarray (T, Z, Y, X) or callable
        The frames, in time order; or a callable ``frame_index -> ZYX array`` together with ``n_frames``
        (only one frame is held in memory at a time).
    voxel_size_um : sequence of 3 floats
        ``(dz, dy, dx)`` in µm.
    time_interval_s : float
        Time between consecutive frames in s; ``t_s = frame * time_interval_s``.
    diameter_um, min_mass, percentile, origin_um, separation_um
        As for :func:`detect_particles` (``min_mass=None`` chooses a threshold per frame).
    search_range_um : float
        Largest displacement in µm between linked positions (between consecutive detections of a track,
        even across frames skipped under ``memory``).
    memory : int
        Number of consecutive frames a particle may be missing and still keep its identity.
    min_track_length : int
        Tracks with fewer detections are discarded.
    progress : callable or None
        Called as ``progress(frames_done, n_frames)`` after each frame is detected (1, 2, …; ``n_frames``
        may be None for an iterator of unknown length).
    n_frames : int or None
        Number of frames; required with a callable, optional otherwise (limits an array's frames).

    Returns
    -------
    pandas.DataFrame
        ``particle`` (0, 1, ... in order of first appearance), ``frame``, ``t_s``, ``z_um``, ``y_um``,
        ``x_um``, then trackpy's per-feature columns; sorted by ``particle`` then ``frame``.
    """
    import trackpy

    voxel = _voxel3(voxel_size_um)
    dt = _positive(time_interval_s, "time interval", "s")
    search = _positive(search_range_um, "search range", "µm")
    mem = _int_at_least(memory, 0, "memory")
    min_len = _int_at_least(min_track_length, 1, "min_track_length")
    origin = _origin3(origin_um)
    diameter_px(diameter_um, voxel)  # validate before the (long) detection loop
    frames, total = _frames(volumes, n_frames)

    detections = []
    for index, vol in enumerate(frames):
        if total is not None and index >= total:
            break
        try:
            found = detect_particles(
                vol,
                voxel,
                diameter_um=diameter_um,
                min_mass=min_mass,
                percentile=percentile,
                separation_um=separation_um,
                origin_um=origin,
            )
        except LlsmflowError as exc:
            raise LlsmflowError(f"frame {index}: {exc.message}", exc.path) from exc
        found.insert(0, "frame", np.full(len(found), index, dtype=np.int64))
        detections.append(found)
        if progress is not None:
            progress(index + 1, total)
    if not detections:
        raise LlsmflowError("no frames given; expected at least one ZYX volume")

    features = pd.concat(detections, ignore_index=True)
    base = ["particle", "frame", "t_s", *POS_COLUMNS]
    extra = [c for c in features.columns if c not in base]
    if features.empty:
        empty = pd.DataFrame(
            {c: pd.Series(dtype="int64" if c in ("particle", "frame") else "float64") for c in base}
        )
        return pd.concat([empty, features[extra].iloc[:0]], axis=1)

    from trackpy.linking import SubnetOversizeException

    try:
        with _quiet_trackpy():
            # In dense spots (particles passing close, maxima along static structure) trackpy shrinks the
            # search range locally instead of giving up on an oversized subnetwork.
            linked = trackpy.link(
                features,
                search,
                pos_columns=list(POS_COLUMNS),
                t_column="frame",
                memory=mem,
                adaptive_stop=ADAPTIVE_STOP_FRACTION * search,
                adaptive_step=0.95,
            )
            linked = trackpy.filter_stubs(linked, threshold=min_len)
    except SubnetOversizeException as exc:
        raise LlsmflowError(
            f"search range {search} µm links too many candidate particles at once ({exc}); expected a search "
            "range well below the typical distance between particles: reduce it or raise the mass threshold"
        ) from exc
    linked = linked.reset_index(drop=True)
    # Relabel 0..n-1 by first appearance so identifiers do not depend on trackpy's internal numbering.
    first = linked.groupby("particle")["frame"].min().sort_values(kind="stable")
    mapping = pd.Series(np.arange(len(first), dtype=np.int64), index=first.index)
    linked["particle"] = linked["particle"].map(mapping).astype(np.int64)
    linked["frame"] = linked["frame"].astype(np.int64)
    linked["t_s"] = linked["frame"].to_numpy(dtype=np.float64) * dt
    linked = linked[base + extra]
    return linked.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------
# statistics


def _track_arrays(tracks: pd.DataFrame) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(particle, frames, positions)`` per track, sorted by frame."""
    ordered = tracks.sort_values(["particle", "frame"], kind="stable")
    particles = ordered["particle"].to_numpy()
    frames = ordered["frame"].to_numpy(dtype=np.int64)
    pos = ordered[POS_COLUMNS].to_numpy(dtype=np.float64)
    if len(particles) == 0:
        return
    cuts = np.flatnonzero(particles[1:] != particles[:-1]) + 1
    for sl_start, sl_end in zip(np.r_[0, cuts], np.r_[cuts, len(particles)], strict=True):
        yield particles[sl_start], frames[sl_start:sl_end], pos[sl_start:sl_end]


def _lag_sums(frames: np.ndarray, pos: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squared 3-D displacements and number of pairs per lag 1..max_lag (gaps respected)."""
    span = int(frames[-1] - frames[0]) + 1
    dense = np.full((span, 3), np.nan)
    dense[frames - frames[0]] = pos
    sums = np.zeros(max_lag)
    counts = np.zeros(max_lag, dtype=np.int64)
    for lag in range(1, min(max_lag, span - 1) + 1):
        sq = np.sum((dense[lag:] - dense[:-lag]) ** 2, axis=1)
        ok = np.isfinite(sq)
        sums[lag - 1] = sq[ok].sum()
        counts[lag - 1] = int(ok.sum())
    return sums, counts


def _drift(tracks: pd.DataFrame) -> pd.DataFrame:
    """Cumulative mean frame-to-frame displacement (µm) of particles present in consecutive frames."""
    ordered = tracks.sort_values(["particle", "frame"], kind="stable")
    step = ordered.groupby("particle")[[*POS_COLUMNS, "frame"]].diff()
    step["frame"] = ordered["frame"]
    step = step[ordered.groupby("particle")["frame"].diff() == 1]
    mean_step = step.groupby("frame")[POS_COLUMNS].mean()
    frames = np.arange(int(tracks["frame"].min()), int(tracks["frame"].max()) + 1)
    mean_step = mean_step.reindex(frames).fillna(0.0)
    return mean_step.cumsum()


def subtract_drift(tracks: pd.DataFrame) -> pd.DataFrame:
    """Remove the ensemble drift: the cumulative mean step of all particles between consecutive frames.

    With N particles this also removes 1/N of their independent motion, so MSDs of drift-corrected tracks
    are biased low by about 1/N; use it only when the drift matters more than that.
    """
    tracks = _check_tracks(tracks)
    if tracks.empty:
        return tracks.copy()
    drift = _drift(tracks)
    out = tracks.copy()
    offsets = drift.loc[out["frame"].to_numpy()].to_numpy()
    out[POS_COLUMNS] = out[POS_COLUMNS].to_numpy(dtype=np.float64) - offsets
    return out


def track_msd(frames, positions_um, max_lag_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared 3-D displacement of one track for lags 1..max_lag_frames.

    Parameters
    ----------
    frames : array_like of int, shape (N,)
        Frame indices, increasing; gaps (missed detections) are allowed and never bridged by interpolation.
    positions_um : array_like, shape (N, 3)
        Positions (z, y, x) in µm.
    max_lag_frames : int
        Largest lag in frames.

    Returns
    -------
    msd_um2, n : ndarray
        MSD per lag (NaN where no pair of detections is that far apart) and the number of pairs.
    """
    frames = np.asarray(frames, dtype=np.int64)
    pos = np.asarray(positions_um, dtype=np.float64)
    max_lag = _int_at_least(max_lag_frames, 1, "max_lag_frames")
    if frames.ndim != 1 or pos.shape != (len(frames), 3):
        raise LlsmflowError(
            f"track of {frames.shape} frames and {pos.shape} positions given; expected N frames and N x 3 µm"
        )
    if len(frames) == 0:
        return np.full(max_lag, np.nan), np.zeros(max_lag, dtype=np.int64)
    if np.any(np.diff(frames) <= 0):
        raise LlsmflowError(
            "track frames are not strictly increasing; expected one position per frame, in order"
        )
    sums, counts = _lag_sums(frames, pos, max_lag)
    with np.errstate(invalid="ignore", divide="ignore"):
        msd = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return msd, counts


def _fit_line(lag_s: np.ndarray, msd: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(lag_s, msd, 1)
    return float(slope) / 6.0, float(intercept)


def summarise_tracks(tracks, time_interval_s, max_lag_frames=None) -> pd.DataFrame:
    """Per-track statistics.

    Parameters
    ----------
    tracks : pandas.DataFrame
        As returned by :func:`track_particles` (needs ``particle``, ``frame``, ``z_um``, ``y_um``, ``x_um``).
    time_interval_s : float
        Time between frames in s.
    max_lag_frames : int or None
        Largest lag used for each track's diffusion fit. None uses up to 4 lags, and never more than the
        track spans.

    Returns
    -------
    pandas.DataFrame
        One row per track: ``particle``, ``n_points`` (detections), ``first_frame``, ``last_frame``,
        ``length_frames`` (last - first + 1), ``duration_s`` ((last - first) * dt), ``mean_speed_um_s``
        (mean over consecutive detections of distance / elapsed time), ``net_displacement_um`` (first to last
        position), ``diffusion_um2_s`` (from a least-squares line ``MSD = 6 D t + offset`` through the track's
        3-D MSD at lags 1..max_lag; NaN when fewer than 2 lags have data; single tracks give noisy,
        occasionally negative values), ``n_lags_fit`` and ``mean_mass`` (when ``mass`` is present).
    """
    tracks = _check_tracks(tracks)
    dt = _positive(time_interval_s, "time interval", "s")
    if max_lag_frames is not None:
        max_lag_frames = _int_at_least(max_lag_frames, 2, "max_lag_frames")
    rows = []
    mean_mass = tracks.groupby("particle")["mass"].mean() if "mass" in tracks else None
    for particle, frames, pos in _track_arrays(tracks):
        span = int(frames[-1] - frames[0])
        row = {
            "particle": particle,
            "n_points": len(frames),
            "first_frame": int(frames[0]),
            "last_frame": int(frames[-1]),
            "length_frames": span + 1,
            "duration_s": span * dt,
        }
        if len(frames) > 1:
            steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
            row["mean_speed_um_s"] = float(np.mean(steps / (np.diff(frames) * dt)))
            row["net_displacement_um"] = float(np.linalg.norm(pos[-1] - pos[0]))
        else:
            row["mean_speed_um_s"] = np.nan
            row["net_displacement_um"] = 0.0
        max_lag = min(4 if max_lag_frames is None else max_lag_frames, max(span, 1))
        msd, counts = track_msd(frames, pos, max_lag)
        ok = counts > 0
        if ok.sum() >= 2:
            lags = np.arange(1, max_lag + 1)[ok]
            row["diffusion_um2_s"] = _fit_line(lags * dt, msd[ok])[0]
            row["n_lags_fit"] = int(ok.sum())
        else:
            row["diffusion_um2_s"] = np.nan
            row["n_lags_fit"] = 0
        if mean_mass is not None:
            row["mean_mass"] = float(mean_mass.loc[particle])
        rows.append(row)
    columns = [
        "particle", "n_points", "first_frame", "last_frame", "length_frames", "duration_s",
        "mean_speed_um_s", "net_displacement_um", "diffusion_um2_s", "n_lags_fit",
    ] + (["mean_mass"] if mean_mass is not None else [])  # fmt: skip
    out = pd.DataFrame(rows, columns=columns)
    return out.astype({"particle": np.int64, "n_points": np.int64, "length_frames": np.int64})


def ensemble_msd(tracks, time_interval_s, max_lag_frames=10, drift_correct=False) -> pd.DataFrame:
    """Ensemble mean squared 3-D displacement against lag.

    Every pair of detections of the same track ``lag`` frames apart counts once, so long tracks weigh more
    (as :func:`trackpy.emsd` does). Missed frames are skipped, never interpolated.

    Parameters
    ----------
    tracks : pandas.DataFrame
        Needs ``particle``, ``frame``, ``z_um``, ``y_um``, ``x_um``.
    time_interval_s : float
        Time between frames in s.
    max_lag_frames : int
        Largest lag in frames.
    drift_correct : bool
        Subtract the ensemble drift first (see :func:`subtract_drift`; biases MSD low by ~1/N particles).

    Returns
    -------
    pandas.DataFrame
        ``lag_frames``, ``lag_s``, ``msd_um2`` and ``n`` (number of displacement pairs), for the lags that
        have at least one pair.
    """
    tracks = _check_tracks(tracks)
    dt = _positive(time_interval_s, "time interval", "s")
    max_lag = _int_at_least(max_lag_frames, 1, "max_lag_frames")
    if drift_correct and not tracks.empty:
        tracks = subtract_drift(tracks)
    sums = np.zeros(max_lag)
    counts = np.zeros(max_lag, dtype=np.int64)
    for _particle, frames, pos in _track_arrays(tracks):
        s, c = _lag_sums(frames, pos, max_lag)
        sums += s
        counts += c
    lags = np.arange(1, max_lag + 1)
    ok = counts > 0
    return pd.DataFrame(
        {
            "lag_frames": lags[ok].astype(np.int64),
            "lag_s": lags[ok] * dt,
            "msd_um2": sums[ok] / counts[ok],
            "n": counts[ok],
        }
    )


def fit_diffusion(msd_df, n_lags=4) -> dict:
    """Fit ``MSD = 6 D t + offset`` (3-D free diffusion) to the first lags of an MSD curve.

    The offset absorbs localisation error (``+6 σ²``) and motion blur (negative), so D is the slope over 6.
    Only the first few lags are used: they carry the most independent displacements.

    Parameters
    ----------
    msd_df : pandas.DataFrame
        With ``lag_s`` and ``msd_um2`` (as from :func:`ensemble_msd`); rows with no data or non-finite MSD
        are ignored.
    n_lags : int
        Number of shortest lags to fit, at least 2.

    Returns
    -------
    dict
        ``diffusion_um2_s``, ``offset_um2`` and ``n_lags`` (lags actually used). When fewer than 2 lags
        are available (e.g. no tracks) D and offset are NaN.
    """
    n_lags = _int_at_least(n_lags, 2, "n_lags")
    if not isinstance(msd_df, pd.DataFrame) or not {"lag_s", "msd_um2"} <= set(msd_df.columns):
        raise LlsmflowError("msd table lacks lag_s/msd_um2 columns; expected the output of ensemble_msd")
    data = msd_df.sort_values("lag_s")
    ok = np.isfinite(data["msd_um2"].to_numpy(dtype=np.float64)) & np.isfinite(data["lag_s"].to_numpy(float))
    if "n" in data:
        ok &= data["n"].to_numpy() > 0
    data = data[ok].head(n_lags)
    if len(data) < 2:
        return {"diffusion_um2_s": float("nan"), "offset_um2": float("nan"), "n_lags": int(len(data))}
    d, c = _fit_line(data["lag_s"].to_numpy(dtype=np.float64), data["msd_um2"].to_numpy(dtype=np.float64))
    return {"diffusion_um2_s": d, "offset_um2": c, "n_lags": int(len(data))}


# ----------------------------------------------------------------------------------------------------
# output


def _agg_figure(size: tuple[float, float]):
    """A figure drawn by the Agg backend, independent of pyplot and of the session's chosen backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save_figure(fig, out_png) -> Path:
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return out_png


def plot_tracks(tracks, projection_yx, voxel_size_um, origin_um, out_png) -> Path:
    """Draw tracks (Y, X in µm) over a maximum projection of the volume, and save a PNG atomically.

    Parameters
    ----------
    tracks : pandas.DataFrame
        Needs ``particle``, ``frame``, ``y_um``, ``x_um``.
    projection_yx : ndarray, shape (Y, X)
        Background image, e.g. the maximum projection along Z of the first frame.
    voxel_size_um, origin_um : sequence of 3 floats
        Of the volume that was projected, ``(z, y, x)``; they place the image in µm.
    out_png : path
        Output file.
    """
    tracks = _check_tracks(tracks, need=("particle", "frame", "y_um", "x_um"))
    image = np.asarray(projection_yx)
    if image.ndim != 2 or image.size == 0:
        raise LlsmflowError(f"projection of shape {image.shape} given; expected a non-empty 2-D YX image")
    _dz, dy, dx = _voxel3(voxel_size_um)
    _oz, oy, ox = _origin3(origin_um)
    ny, nx = image.shape
    extent = (ox - dx / 2, ox + (nx - 0.5) * dx, oy + (ny - 0.5) * dy, oy - dy / 2)
    fig, ax = _agg_figure((7.0, float(np.clip(7.0 * ny * dy / (nx * dx), 2.5, 14.0)) + 0.6))
    try:
        finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
        vmin, vmax = np.percentile(finite, [1, 99.8]) if finite.size else (0, 1)
        ax.imshow(image, cmap="gray", extent=extent, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1,
                  interpolation="nearest")  # fmt: skip
        from matplotlib import colormaps

        cmap = colormaps["tab20"]
        ordered = tracks.sort_values(["particle", "frame"], kind="stable")
        for i, (_p, grp) in enumerate(ordered.groupby("particle", sort=True)):
            ax.plot(grp["x_um"].to_numpy(), grp["y_um"].to_numpy(), "-", lw=1.0, color=cmap(i % 20))
            ax.plot(grp["x_um"].iloc[0], grp["y_um"].iloc[0], "o", ms=2.5, color=cmap(i % 20))
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        ax.set_title(f"{tracks['particle'].nunique()} tracks over the maximum projection")
        fig.tight_layout()
        return _save_figure(fig, out_png)
    finally:
        fig.clear()


def plot_msd(msd_df, fit, out_png) -> Path:
    """Plot the ensemble MSD against lag with the fitted line ``6 D t + offset``; save a PNG atomically.

    Parameters
    ----------
    msd_df : pandas.DataFrame
        From :func:`ensemble_msd`.
    fit : dict or None
        From :func:`fit_diffusion`; drawn over the lags it used (and dashed beyond) when D is finite.
    out_png : path
        Output file.
    """
    if not isinstance(msd_df, pd.DataFrame) or not {"lag_s", "msd_um2"} <= set(msd_df.columns):
        raise LlsmflowError("msd table lacks lag_s/msd_um2 columns; expected the output of ensemble_msd")
    fig, ax = _agg_figure((5.5, 4.2))
    try:
        lag = msd_df["lag_s"].to_numpy(dtype=np.float64)
        msd = msd_df["msd_um2"].to_numpy(dtype=np.float64)
        ax.plot(lag, msd, "o", color="C0", label="ensemble MSD")
        if fit and np.isfinite(fit.get("diffusion_um2_s", np.nan)) and len(lag):
            d = float(fit["diffusion_um2_s"])
            c = float(fit.get("offset_um2", 0.0))
            n = int(fit.get("n_lags", len(lag)))
            t = np.linspace(0, float(np.nanmax(lag)), 100)
            t_fit = float(np.sort(lag)[min(n, len(lag)) - 1])
            ax.plot(t[t <= t_fit], 6 * d * t[t <= t_fit] + c, "-", color="C3",
                    label=f"6Dt + c, D = {d:.3g} µm²/s ({n} lags)")  # fmt: skip
            ax.plot(t[t >= t_fit], 6 * d * t[t >= t_fit] + c, "--", color="C3", lw=0.8)
        if not len(lag):
            ax.text(0.5, 0.5, "no tracks: no MSD", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("lag (s)")
        ax.set_ylabel("MSD (µm²)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", frameon=False)
        fig.tight_layout()
        return _save_figure(fig, out_png)
    finally:
        fig.clear()


def write_tracks(tracks, out_parquet, out_csv) -> tuple[Path | None, Path | None]:
    """Write tracks as Parquet and CSV, each atomically (complete file or none).

    Parameters
    ----------
    tracks : pandas.DataFrame
        Any table, typically from :func:`track_particles`; written without its index.
    out_parquet, out_csv : path or None
        Destinations; None skips that format.

    Returns
    -------
    tuple of Path or None
        The paths written.
    """
    if not isinstance(tracks, pd.DataFrame):
        raise LlsmflowError(f"tracks of type {type(tracks).__name__} given; expected a pandas DataFrame")
    if out_parquet is None and out_csv is None:
        raise LlsmflowError("no output path given; expected a Parquet path, a CSV path or both")
    table = tracks.reset_index(drop=True)
    written: list[Path | None] = []
    for path, kind in ((out_parquet, "parquet"), (out_csv, "csv")):
        if path is None:
            written.append(None)
            continue
        path = Path(path)
        try:
            with atomic_output(path) as tmp:
                if kind == "parquet":
                    table.to_parquet(tmp, index=False)
                else:
                    table.to_csv(tmp, index=False)
        except OSError as exc:
            raise LlsmflowError(
                f"cannot write {kind} ({exc.strerror or exc}); expected a writable path", path
            ) from exc
        written.append(path)
    return written[0], written[1]
