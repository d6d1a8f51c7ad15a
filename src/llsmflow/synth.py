"""A synthetic stage-scanned LLSM acquisition with known ground truth.

Written as an instrument writes it, so that ingest, deskew, deconvolution, stitching and tracking are exercised
on realistic files:

- ``raw/``: one uint16 TIFF stack per (tile, channel, timepoint) with Janelia-style names
  (``Scan_Iter_0000_CamA_ch0_CAM1_stack0003_488nm_0006000msec_0000006000msecAbs_000x_001y_000z_0003t.tif``),
  skewed (raw camera frames of a stage scan), camera offset, Poisson and read noise;
- ``raw/acquisition.json``: the instrument metadata (angle, stage step, pixel size, wavelengths, nominal stage
  positions, time interval, camera offset, PSF files and their voxel sizes);
- ``raw/PSF_ch{c}_{λ}nm.tif``: a bead stack per channel acquired by objective scan (no skew), dz_psf = 0.1 µm;
- ``truth/``: particle trajectories (µm, s, objective frame, origin = tile (0, 0)), exact tile positions,
  static structures, and noise-free deskewed volumes.

The image model is hand-written because no library renders a skewed LLSM acquisition: each emitter is
rendered analytically in every raw plane it reaches (a sheet-plane Gaussian in y, x at the sheared camera
position, weighted by the axial profile of the light-sheet PSF: a main lobe plus two weak side lobes, as a
lattice sheet has), so the raw data contain no interpolation error and the truth is exact.
Everything is seeded: the same parameters give byte-identical files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from llsmflow.deskew import (
    deskewed_plane_spacing_um,
    deskewed_valid_mask,
    shear_px_per_plane,
    stage_to_objective_um,
)
from llsmflow.errors import LlsmflowError
from llsmflow.io import atomic_output, write_json, write_volume

FILE_TEMPLATE = (
    "Scan_Iter_0000_CamA_ch{channel}_CAM1_stack{timepoint:04d}_{wavelength}nm_{time_ms:07d}msec_"
    "{abs_ms:010d}msecAbs_{ix:03d}x_{iy:03d}y_000z_{timepoint:04d}t.tif"
)
FILE_REGEX = (
    r"^(?P<prefix>.*?)_ch(?P<channel>\d+)_.*stack(?P<timepoint>\d+)_(?P<wavelength>\d+)nm_.*?"
    r"(?P<ix>\d+)x_(?P<iy>\d+)y_(?P<iz>\d+)z_(?P<t>\d+)t\.tiff?$"
)


@dataclass
class SynthParams:
    """Parameters of the synthetic acquisition (µm, s, degrees, nm).

    ``tiles_y × tiles_x`` tiles: y runs across the scan direction, x along it. Raw stacks are
    ``raw_shape_zyx`` (planes × camera rows × camera columns). Stage errors are uniform in
    ±``stage_error_um`` (half that in z), capped at a third of the overlap width so that tiles still overlap.
    """

    tiles_y: int = 2
    tiles_x: int = 1
    channels: int = 2
    timepoints: int = 5
    angle_deg: float = 31.5
    dz_um: float = 0.3
    dx_um: float = 0.104
    raw_shape_zyx: tuple[int, int, int] = (40, 96, 128)
    overlap: float = 0.15
    time_interval_s: float = 2.0
    wavelengths_nm: tuple[int, ...] = (488, 560, 642)
    emission_nm: tuple[int, ...] = (510, 605, 680)
    particles_per_tile: int = 10
    diffusion_um2_s: tuple[float, ...] = (0.02, 0.01, 0.015)
    drift_um_s: tuple[float, float, float] = (0.0, 0.02, 0.03)
    particle_photons: tuple[float, float] = (250.0, 500.0)
    filaments: int = 3
    filament_photons: float = 60.0
    texture_photons: float = 25.0
    texture_scale_um: float = 0.35
    background_photons: float = 4.0
    camera_offset: float = 100.0
    read_noise: float = 2.0
    stage_error_um: float = 0.6
    numerical_aperture: float = 1.0
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.tiles_y < 1 or self.tiles_x < 1:
            raise LlsmflowError(f"tile grid {self.tiles_y}x{self.tiles_x} is invalid; expected at least 1x1")
        if not 1 <= self.channels <= len(self.wavelengths_nm):
            raise LlsmflowError(f"{self.channels} channels requested; expected 1..{len(self.wavelengths_nm)}")
        if self.timepoints < 1:
            raise LlsmflowError(f"{self.timepoints} timepoints requested; expected at least 1")
        if not 0 <= self.overlap < 0.5:
            raise LlsmflowError(f"tile overlap {self.overlap} is invalid; expected a fraction in [0, 0.5)")
        if self.time_interval_s <= 0:
            raise LlsmflowError(f"time interval {self.time_interval_s} s is invalid; expected > 0")
        shear_px_per_plane(self.dz_um, self.dx_um, self.angle_deg)  # validates angle and sizes


def psf_sigmas_um(emission_nm: float, numerical_aperture: float) -> tuple[float, float]:
    """(axial, lateral) Gaussian sigmas (µm) of the main lobe of the light-sheet PSF.

    Lateral: the detection PSF, FWHM ≈ 0.51·λ/NA. Axial: set by the lattice sheet thickness, ≈ 3× the lateral
    sigma (a lattice sheet is ~1 µm thick), scaled with wavelength.
    """
    lateral = 0.51 * emission_nm * 1e-3 / numerical_aperture / 2.3548
    return 3.0 * lateral, lateral


SIDE_LOBE_OFFSET_FACTOR = 3.2  # side lobes sit at ±3.2 axial sigmas (≈ ±1.2 µm at 510 nm)
SIDE_LOBE_AMPLITUDE = 0.08


def _axial_profile(dz_um: np.ndarray, sigma_z: float) -> np.ndarray:
    offset = SIDE_LOBE_OFFSET_FACTOR * sigma_z
    main = np.exp(-0.5 * (dz_um / sigma_z) ** 2)
    side = np.exp(-0.5 * ((np.abs(dz_um) - offset) / (0.6 * sigma_z)) ** 2)
    return main + SIDE_LOBE_AMPLITUDE * side


def render_emitters(
    shape_zyx: tuple[int, int, int],
    positions_zyx_um: np.ndarray,
    photons: np.ndarray,
    plane_spacing_um: float,
    pixel_um: float,
    shear_px: float,
    sigma_z_um: float,
    sigma_xy_um: float,
) -> np.ndarray:
    """Render point emitters (objective-frame µm) into a stack, analytically, plane by plane.

    Plane ``k`` holds the sheet at ``z = k·plane_spacing_um``; an emitter at objective ``x`` appears at camera
    column ``x/pixel_um − k·shear_px``. With ``shear_px = 0`` this renders the deskewed volume.
    ``photons`` is the peak amplitude of the main lobe (photons per voxel). Returns float64, ZYX.
    """
    nz, ny, nx = shape_zyx
    out = np.zeros(shape_zyx, dtype=np.float64)
    reach_z = SIDE_LOBE_OFFSET_FACTOR * sigma_z_um + 2.5 * sigma_z_um
    reach_xy = max(2, math.ceil(4 * sigma_xy_um / pixel_um))
    for (pz, py, px), amplitude in zip(positions_zyx_um, photons, strict=True):
        k_lo = max(0, math.ceil((pz - reach_z) / plane_spacing_um))
        k_hi = min(nz - 1, math.floor((pz + reach_z) / plane_spacing_um))
        if k_lo > k_hi:
            continue
        ks = np.arange(k_lo, k_hi + 1)
        axial = amplitude * _axial_profile(pz - ks * plane_spacing_um, sigma_z_um)
        cy = py / pixel_um
        y0, y1 = max(0, math.floor(cy) - reach_xy), min(ny, math.floor(cy) + reach_xy + 1)
        if y0 >= y1:
            continue
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - cy) * pixel_um / sigma_xy_um) ** 2)
        for k, a in zip(ks, axial, strict=True):
            cx = px / pixel_um - k * shear_px
            x0, x1 = max(0, math.floor(cx) - reach_xy), min(nx, math.floor(cx) + reach_xy + 1)
            if x0 >= x1:
                continue
            gx = np.exp(-0.5 * ((np.arange(x0, x1) - cx) * pixel_um / sigma_xy_um) ** 2)
            out[k, y0:y1, x0:x1] += a * np.outer(gy, gx)
    return out


@dataclass
class _Tile:
    ix: int
    iy: int
    stage_nominal_um: tuple[float, float, float]  # stage x, y, z
    origin_nominal_um: tuple[float, float, float]  # objective z, y, x
    origin_true_um: tuple[float, float, float]


def _tile_layout(p: SynthParams, rng: np.random.Generator) -> list[_Tile]:
    nz, ny, nx = p.raw_shape_zyx
    step_y = (1 - p.overlap) * ny * p.dx_um
    # Along the scan, a tile covers the scan range plus the camera field projected on the stage axis.
    scan_extent = nz * p.dz_um + nx * p.dx_um / abs(math.cos(math.radians(p.angle_deg)))
    step_x = (1 - p.overlap) * scan_extent
    tiles = []
    for iy in range(p.tiles_y):
        for ix in range(p.tiles_x):
            stage = (ix * step_x, iy * step_y, 0.0)
            nominal = stage_to_objective_um(stage, p.angle_deg)
            if ix == 0 and iy == 0:
                error = np.zeros(3)  # the stage is zeroed on the first tile: errors are relative to it
            else:
                # An acquisition keeps its overlap: errors stay below a third of the overlap width.
                amplitude = min(p.stage_error_um, p.overlap * ny * p.dx_um / 3)
                error = rng.uniform(-amplitude, amplitude, 3) * np.array([0.5, 1.0, 1.0])
            true = tuple(float(a + e) for a, e in zip(nominal, error, strict=True))
            tiles.append(_Tile(ix, iy, stage, nominal, true))
    return tiles


def _inside_any_tile(
    points_um: np.ndarray, tiles: list[_Tile], p: SynthParams, margin_um: float
) -> np.ndarray:
    """Which objective-frame points lie inside the imaged parallelogram of at least one tile (with margin)."""
    nz, ny, nx = p.raw_shape_zyx
    dzp = deskewed_plane_spacing_um(p.dz_um, p.angle_deg)
    shear_um = shear_px_per_plane(p.dz_um, p.dx_um, p.angle_deg) * p.dx_um / dzp  # x shift per µm of z
    inside = np.zeros(len(points_um), dtype=bool)
    for tile in tiles:
        rel = points_um - np.asarray(tile.origin_true_um)
        z, y, x = rel[:, 0], rel[:, 1], rel[:, 2]
        u = x - z * shear_um  # camera-column coordinate (µm) of the point in the plane it is seen in
        inside |= (
            (z >= margin_um)
            & (z <= (nz - 1) * dzp - margin_um)
            & (y >= margin_um)
            & (y <= (ny - 1) * p.dx_um - margin_um)
            & (u >= margin_um)
            & (u <= (nx - 1) * p.dx_um - margin_um)
        )
    return inside


def _sample_inside(
    n: int, tiles, p: SynthParams, rng, margin_um: float, min_separation_um: float
) -> np.ndarray:
    nz, ny, nx = p.raw_shape_zyx
    dzp = deskewed_plane_spacing_um(p.dz_um, p.angle_deg)
    origins = np.array([t.origin_true_um for t in tiles])
    lo = origins.min(axis=0)
    hi = origins.max(axis=0) + np.array(
        [(nz - 1) * dzp, (ny - 1) * p.dx_um, (nx - 1) * p.dx_um + nz * p.dz_um]
    )
    chosen: list[np.ndarray] = []
    for _ in range(200 * n):
        if len(chosen) == n:
            break
        candidate = rng.uniform(lo, hi)
        if not _inside_any_tile(candidate[None], tiles, p, margin_um)[0]:
            continue
        if chosen and np.min(np.linalg.norm(np.array(chosen) - candidate, axis=1)) < min_separation_um:
            continue
        chosen.append(candidate)
    if len(chosen) < n:
        raise LlsmflowError(
            f"could not place {n} particles {min_separation_um} µm apart in the imaged volume; "
            "expected fewer particles or a larger volume"
        )
    return np.array(chosen)


def _simulate_trajectories(start_um: np.ndarray, p: SynthParams, diffusion: float, tiles, rng) -> np.ndarray:
    """Brownian motion + drift, steps that would leave the imaged region are redrawn. Returns (T, N, 3) µm."""
    n = len(start_um)
    positions = np.empty((p.timepoints, n, 3))
    positions[0] = start_um
    sigma = math.sqrt(2 * diffusion * p.time_interval_s)
    drift = np.asarray(p.drift_um_s) * p.time_interval_s
    for t in range(1, p.timepoints):
        current = positions[t - 1]
        proposal = current + drift + rng.normal(0, sigma, (n, 3))
        for _ in range(50):
            bad = ~_inside_any_tile(proposal, tiles, p, margin_um=0.6)
            if not bad.any():
                break
            proposal[bad] = current[bad] + drift + rng.normal(0, sigma, (int(bad.sum()), 3))
        bad = ~_inside_any_tile(proposal, tiles, p, margin_um=0.6)
        proposal[bad] = current[bad]
        positions[t] = proposal
    return positions


def _filament_points(tiles, p: SynthParams, rng) -> np.ndarray:
    """Points sampled every 0.04 µm along a few straight static filaments inside the imaged region."""
    points = []
    starts = (
        _sample_inside(p.filaments, tiles, p, rng, margin_um=1.0, min_separation_um=1.0)
        if p.filaments
        else []
    )
    for start in starts:
        direction = rng.normal(size=3) * np.array([0.3, 1.0, 1.0])
        direction /= np.linalg.norm(direction)
        length = rng.uniform(4.0, 8.0)
        samples = start + np.outer(np.arange(0, length, 0.04), direction)
        points.append(samples[_inside_any_tile(samples, tiles, p, margin_um=0.3)])
    return np.concatenate(points) if points else np.zeros((0, 3))


def _noisy_camera_frames(expected_photons: np.ndarray, p: SynthParams, rng) -> np.ndarray:
    counts = rng.poisson(expected_photons + p.background_photons).astype(np.float64)
    counts += p.camera_offset + rng.normal(0, p.read_noise, counts.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def _psf_stack(sigma_z: float, sigma_xy: float, p: SynthParams, rng, dz_psf: float = 0.1) -> np.ndarray:
    half_z, half_xy = 30, 15
    shape = (2 * half_z + 1, 2 * half_xy + 1, 2 * half_xy + 1)
    centre = np.array([half_z * dz_psf, half_xy * p.dx_um, half_xy * p.dx_um])
    bead = render_emitters(shape, centre[None], np.array([3000.0]), dz_psf, p.dx_um, 0.0, sigma_z, sigma_xy)
    return _noisy_camera_frames(bead, p, rng)


class _Texture:
    """A static, dim, textured "cell body" filling the imaged region, blurred by each channel's PSF.

    It gives every tile overlap content to register on, as real cells do, while staying far dimmer than the
    particles. The field lives on a 0.1 µm grid over the objective-frame bounding box of all tiles and is
    sampled (linear interpolation of a field much smoother than the grid) at each voxel's objective position.
    """

    spacing_um = 0.1

    def __init__(self, tiles, p: SynthParams, rng: np.random.Generator):
        nz, ny, nx = p.raw_shape_zyx
        dzp = deskewed_plane_spacing_um(p.dz_um, p.angle_deg)
        deskewed_width = (
            nx + math.floor(nz * abs(shear_px_per_plane(p.dz_um, p.dx_um, p.angle_deg)))
        ) * p.dx_um
        origins = np.array([t.origin_true_um for t in tiles])
        margin = 1.0
        self.lo = origins.min(axis=0) - margin
        hi = origins.max(axis=0) + np.array([nz * dzp, ny * p.dx_um, deskewed_width]) + margin
        shape = tuple(int(math.ceil(v / self.spacing_um)) + 1 for v in hi - self.lo)
        field = ndimage.gaussian_filter(rng.normal(size=shape), p.texture_scale_um / self.spacing_um)
        field /= field.std() or 1.0
        self.field = np.clip(field, 0.0, None).astype(np.float32)  # patches of label, dark gaps between
        self.amplitude = p.texture_photons
        self._blurred: dict[tuple[float, float], np.ndarray] = {}

    def _for_psf(self, sigma_z: float, sigma_xy: float) -> np.ndarray:
        key = (sigma_z, sigma_xy)
        if key not in self._blurred:
            sigmas = (sigma_z / self.spacing_um, sigma_xy / self.spacing_um, sigma_xy / self.spacing_um)
            self._blurred[key] = ndimage.gaussian_filter(self.field, sigmas) * np.float32(self.amplitude)
        return self._blurred[key]

    def sample(self, shape_zyx, origin_um, plane_spacing_um, pixel_um, shear_px, sigma_z, sigma_xy):
        """Expected photons of the texture in a stack whose plane ``k`` is sheared by ``k·shear_px`` pixels."""
        nz, ny, nx = shape_zyx
        k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij", sparse=True)
        z = origin_um[0] + k * plane_spacing_um
        y = origin_um[1] + j * pixel_um
        x = origin_um[2] + (i + k * shear_px) * pixel_um
        coords = [
            np.broadcast_to((c - lo) / self.spacing_um, shape_zyx)
            for c, lo in zip((z, y, x), self.lo, strict=True)
        ]
        return ndimage.map_coordinates(self._for_psf(sigma_z, sigma_xy), coords, order=1, mode="nearest")


def generate(outdir: str | Path, params: SynthParams | None = None, progress=None) -> dict:
    """Write the synthetic acquisition to ``outdir`` (``raw/`` and ``truth/``) and return a summary.

    ``progress`` is an optional callable(done, total) called after each raw stack.
    """
    p = params or SynthParams()
    p.validate()
    outdir = Path(outdir)
    if (outdir / "raw" / "acquisition.json").exists():
        raise LlsmflowError(
            "already holds a synthetic acquisition; expected an empty or new directory", outdir
        )
    rng = np.random.default_rng(p.seed)
    raw_dir, truth_dir = outdir / "raw", outdir / "truth"
    (truth_dir / "noisefree").mkdir(parents=True, exist_ok=True)
    raw_dir.mkdir(parents=True, exist_ok=True)

    tiles = _tile_layout(p, rng)
    nz, ny, nx = p.raw_shape_zyx
    dzp = deskewed_plane_spacing_um(p.dz_um, p.angle_deg)
    shear = shear_px_per_plane(p.dz_um, p.dx_um, p.angle_deg)
    deskewed_nx = nx + math.floor(nz * abs(shear))
    filaments = _filament_points(tiles, p, rng)
    texture = _Texture(tiles, p, rng) if p.texture_photons > 0 else None
    n_particles = p.particles_per_tile * len(tiles)

    trajectories, channels_meta = [], []
    per_channel_positions = []
    for c in range(p.channels):
        start = _sample_inside(n_particles, tiles, p, rng, margin_um=0.8, min_separation_um=1.6)
        positions = _simulate_trajectories(start, p, p.diffusion_um2_s[c], tiles, rng)
        photons = rng.uniform(*p.particle_photons, n_particles)
        per_channel_positions.append((positions, photons))
        for t in range(p.timepoints):
            for i in range(n_particles):
                z, y, x = positions[t, i]
                trajectories.append(
                    {
                        "channel": c,
                        "particle": i,
                        "frame": t,
                        "t_s": t * p.time_interval_s,
                        "z_um": z,
                        "y_um": y,
                        "x_um": x,
                        "photons": photons[i],
                    }
                )
        sigma_z, sigma_xy = psf_sigmas_um(p.emission_nm[c], p.numerical_aperture)
        psf_name = f"PSF_ch{c}_{p.wavelengths_nm[c]}nm.tif"
        psf = _psf_stack(sigma_z, sigma_xy, p, rng)
        with atomic_output(raw_dir / psf_name) as tmp:
            tifffile.imwrite(
                tmp,
                psf,
                imagej=True,
                resolution=(1 / p.dx_um, 1 / p.dx_um),
                metadata={"spacing": 0.1, "unit": "um", "axes": "ZYX"},
            )
        channels_meta.append(
            {
                "index": c,
                "name": f"ch{c}_{p.wavelengths_nm[c]}nm",
                "excitation_nm": p.wavelengths_nm[c],
                "emission_nm": p.emission_nm[c],
                "psf": psf_name,
                "psf_voxel_size_um": [0.1, p.dx_um, p.dx_um],
            }
        )

    files, total, done = [], len(tiles) * p.channels * p.timepoints, 0
    for tile in tiles:
        tile_key = f"{tile.ix:03d}x_{tile.iy:03d}y_000z"
        for c in range(p.channels):
            sigma_z, sigma_xy = psf_sigmas_um(p.emission_nm[c], p.numerical_aperture)
            positions, photons = per_channel_positions[c]
            for t in range(p.timepoints):
                emitters = np.concatenate([positions[t], filaments]) - np.asarray(tile.origin_true_um)
                amplitudes = np.concatenate(
                    [
                        photons,
                        np.full(
                            len(filaments), p.filament_photons * 0.04 / (math.sqrt(2 * math.pi) * sigma_xy)
                        ),
                    ]
                )
                raw_expected = render_emitters(
                    p.raw_shape_zyx, emitters, amplitudes, dzp, p.dx_um, shear, sigma_z, sigma_xy
                )
                if texture is not None:
                    raw_expected += texture.sample(
                        p.raw_shape_zyx, tile.origin_true_um, dzp, p.dx_um, shear, sigma_z, sigma_xy
                    )
                name = FILE_TEMPLATE.format(
                    channel=c,
                    timepoint=t,
                    wavelength=p.wavelengths_nm[c],
                    time_ms=round(t * p.time_interval_s * 1000),
                    abs_ms=round(t * p.time_interval_s * 1000) + 1000 * c,
                    ix=tile.ix,
                    iy=tile.iy,
                )
                with atomic_output(raw_dir / name) as tmp:
                    tifffile.imwrite(
                        tmp, _noisy_camera_frames(raw_expected, p, rng), photometric="minisblack"
                    )
                truth = render_emitters(
                    (nz, ny, deskewed_nx), emitters, amplitudes, dzp, p.dx_um, 0.0, sigma_z, sigma_xy
                )
                if texture is not None:
                    truth += texture.sample(
                        (nz, ny, deskewed_nx), tile.origin_true_um, dzp, p.dx_um, 0.0, sigma_z, sigma_xy
                    )
                    # the noise-free deskewed volume only holds what the stage scan imaged
                    truth *= deskewed_valid_mask(p.raw_shape_zyx, p.dz_um, p.dx_um, p.angle_deg, margin_px=0)
                write_volume(
                    truth_dir / "noisefree" / f"{tile_key}_ch{c}_t{t:04d}.tif",
                    truth.astype(np.float32),
                    (dzp, p.dx_um, p.dx_um),
                    {"origin_um": tile.origin_true_um},
                )
                files.append(name)
                done += 1
                if progress:
                    progress(done, total)

    acquisition = {
        "format": "llsmflow-acquisition/1",
        "instrument": "synthetic stage-scan lattice light-sheet (llsmflow synth)",
        "scan": "stage",
        "scan_axis": "x",
        "angle_deg": p.angle_deg,
        "dz_um": p.dz_um,
        "dx_um": p.dx_um,
        "dy_um": p.dx_um,
        "raw_shape_zyx": list(p.raw_shape_zyx),
        "time_interval_s": p.time_interval_s,
        "timepoints": p.timepoints,
        "camera_offset": p.camera_offset,
        "channels": channels_meta,
        "tiles": [
            {
                "ix": t.ix,
                "iy": t.iy,
                "iz": 0,
                "stage_x_um": t.stage_nominal_um[0],
                "stage_y_um": t.stage_nominal_um[1],
                "stage_z_um": t.stage_nominal_um[2],
            }
            for t in tiles
        ],
        "file_regex": FILE_REGEX,
    }
    write_json(raw_dir / "acquisition.json", acquisition)
    truth_frame = pd.DataFrame(trajectories)
    with atomic_output(truth_dir / "trajectories.csv") as tmp:
        truth_frame.to_csv(tmp, index=False)
    write_json(
        truth_dir / "tiles.json",
        {
            "frame": "objective (deskewed) frame, µm, ZYX; origin = true position of tile 000x_000y",
            "tiles": {
                f"{t.ix:03d}x_{t.iy:03d}y_000z": {
                    "origin_um": t.origin_true_um,
                    "nominal_origin_um": t.origin_nominal_um,
                }
                for t in tiles
            },
        },
    )
    write_json(truth_dir / "static.json", {"filament_points_zyx_um": filaments.round(4).tolist()})
    write_json(
        truth_dir / "params.json",
        asdict(p)
        | {
            "diffusion_um2_s_per_channel": list(p.diffusion_um2_s[: p.channels]),
            "deskewed_voxel_size_um": [dzp, p.dx_um, p.dx_um],
        },
    )
    return {
        "raw_dir": str(raw_dir),
        "truth_dir": str(truth_dir),
        "files": len(files),
        "particles_per_channel": n_particles,
        "tiles": len(tiles),
        "metadata": str(raw_dir / "acquisition.json"),
    }
