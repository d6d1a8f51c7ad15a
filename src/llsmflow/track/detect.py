"""Particle detection in one ZYX volume: µm → voxel diameters, trackpy's locate, automatic mass threshold.

trackpy does the detection (Crocker–Grier centroids, :func:`trackpy.locate`); this module converts a feature
size in µm to trackpy's odd per-axis diameter in voxels (anisotropic light-sheet voxels), rescales the
volume to 16 bits, maps positions to µm in stage coordinates, and chooses a mass threshold per volume when
none is given (local noise map, white-noise reference, population gap of deconvolved data).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import special

from llsmflow.errors import LlsmflowError
from llsmflow.track._common import (
    _check_volume,
    _origin3,
    _per_axis_um,
    _quiet_trackpy,
    _voxel3,
    import_trackpy,
)
from llsmflow.track.tables import POS_COLUMNS

AUTO_MASS_FALSE_POSITIVES = 0.01
"""Expected number of noise maxima per volume passing the automatic mass threshold (Gaussian model)."""

AUTO_MASS_MARGIN = 1.0
"""Extra robust standard deviations added to the automatic threshold for tails heavier than Gaussian."""

AUTO_MASS_MIN_SDS = 7.0
"""The automatic threshold is never closer to the background median than this many robust SDs."""

_MIN_CANDIDATES_FOR_AUTO = 20

_NOISE_DOMINATED = 0.25
"""Candidates are taken as mostly noise maxima when at least this fraction of the number white noise gives."""


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
    # Φ⁻¹(1 - p) as -ndtri(p): what scipy.stats.norm.isf computes, without importing scipy.stats (~0.5 s).
    z = float(-special.ndtri(AUTO_MASS_FALSE_POSITIVES / n))
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
    trackpy = import_trackpy()

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
    trackpy = import_trackpy()

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
