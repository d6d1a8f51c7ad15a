"""Pairwise registration: the correction of one tile's position relative to another's, and its quality.

:func:`register_pair` searches integer shifts by masked normalised cross-correlation (FFT), refines below the
voxel (:mod:`._refine`) and scores the overlap after alignment (:func:`_overlap_ncc`); :class:`PairLink` is
its result, the edge of the tile graph that :mod:`.optimise` solves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage as ndi

from llsmflow.errors import LlsmflowError
from llsmflow.stitch._filters import _bandpass, _masked_bandpass, _masked_smooth
from llsmflow.stitch._refine import _refine, _refine_masked
from llsmflow.stitch.grid import (
    _MIN_NCC_VOXELS,
    _MIN_OVERLAP_VOX,
    _sample,
    _sample_valid,
    _tile_range,
    _voxel3,
)
from llsmflow.stitch.tiles import Tile

__all__ = ["PairLink", "register_pair"]

_COARSE_MAX_VOXELS = 2**23  # larger coarse-search boxes are binned (memory: ~100 bytes per voxel)
# tiles with validity masks: a correction's prior weight is a Gaussian whose sigma is this fraction of the
# search margin, per axis (see register_pair)
_PRIOR_SIGMA_OF_MARGIN = 0.5


@dataclass
class PairLink:
    """The registration of tile ``b`` against tile ``a``.

    Attributes
    ----------
    a, b:
        Tile keys.
    shift_um:
        ``(z, y, x)`` correction in µm of ``b``'s position relative to ``a``'s beyond their nominal offset:
        ``true_origin_b - true_origin_a = nominal_origin_b - nominal_origin_a + shift_um``.
    quality:
        Normalised cross-correlation (0..1, negative values clipped to 0) of the overlap after alignment.
    used:
        Whether the link is (still) usable; :func:`optimise_positions` sets it to whether it used the link.
    residual_um:
        Length in µm of the link's residual in the final least-squares solution (None if not used).
    """

    a: str
    b: str
    shift_um: tuple[float, float, float]
    quality: float
    used: bool = True
    residual_um: float | None = None


def _as_max_shift_vox(max_shift_um, voxel: np.ndarray) -> np.ndarray | None:
    if max_shift_um is None:
        return None
    values = np.broadcast_to(np.asarray(max_shift_um, dtype=float), (3,))
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise LlsmflowError(
            f"max_shift_um {max_shift_um!r} is invalid; expected non-negative µm (scalar or z, y, x)"
        )
    return values / voxel


def _masked_ncc(f1, m1, f2, m2, fft_shape, min_overlap: float) -> np.ndarray:
    """Normalised cross-correlation of ``f1`` and ``f2`` for every integer shift, over the voxels where both
    masks are set (Padfield 2012, "Masked object registration in the Fourier domain").

    Entry ``s`` (FFT order) compares ``f1(x)`` with ``f2(x - s)``; shifts whose overlap has fewer than
    ``min_overlap`` voxels are -1.
    """

    def spectrum(x):
        return sp_fft.rfftn(np.asarray(x, dtype=np.float64), fft_shape)

    def corr(x_hat, y_hat):
        return sp_fft.irfftn(x_hat * np.conj(y_hat), s=fft_shape)

    f1 = f1 * m1
    f2 = f2 * m2
    f1_hat, f2_hat, m1_hat, m2_hat = spectrum(f1), spectrum(f2), spectrum(m1), spectrum(m2)
    n = np.rint(corr(m1_hat, m2_hat))
    valid = n >= max(min_overlap, 2.0)
    n = np.where(valid, n, 1.0)
    s1 = corr(f1_hat, m2_hat)
    s2 = corr(m1_hat, f2_hat)
    num = corr(f1_hat, f2_hat) - s1 * s2 / n
    var1 = corr(spectrum(f1 * f1), m2_hat) - s1 * s1 / n
    var2 = corr(m1_hat, spectrum(f2 * f2)) - s2 * s2 / n
    floor = 1e-9 * max(
        float(np.max(var1, where=valid, initial=0.0)), float(np.max(var2, where=valid, initial=0.0))
    )
    valid &= (var1 > floor) & (var2 > floor)
    ncc = np.full(n.shape, -1.0)
    ncc[valid] = num[valid] / np.sqrt(var1[valid] * var2[valid])
    return np.clip(ncc, -1.0, 1.0)


def _bin(block: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean over ``factor`` blocks of voxels (trailing voxels that do not fill a block are dropped)."""
    if all(f == 1 for f in factor):
        return block
    shape = [n // f for n, f in zip(block.shape, factor, strict=True)]
    block = block[tuple(slice(0, n * f) for n, f in zip(shape, factor, strict=True))]
    return block.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2]).mean(axis=(1, 3, 5))


def _prior_weight(correction_vox, sigma_vox) -> float:
    """Gaussian prior weight ``exp(-|c/σ|²/2)`` of a correction (voxels) with per-axis ``sigma_vox``."""
    z = np.asarray(correction_vox, dtype=float) / np.asarray(sigma_vox, dtype=float)
    return float(np.exp(-0.5 * float(z @ z)))


def _coarse_shift(
    tile_a: Tile,
    tile_b: Tile,
    di: np.ndarray,
    margin: np.ndarray,
    prior_sigma: np.ndarray | None = None,
    prior_centre: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Integer shift of b (placed at integer offset ``di`` in a's grid) within ``margin`` voxels.

    Maximises the masked NCC of the band-passed tiles over the nominal overlap extended by ``margin``, each
    tile taken where it has data, so that content moved by up to ``margin`` is seen by both. Boxes larger than
    ``_COARSE_MAX_VOXELS`` (with FFT padding) are binned first. Returns the shift and the precision (voxels).
    With ``prior_sigma`` (voxels, per axis) the peak maximises the NCC times the Gaussian prior weight of the
    correction ``shift - prior_centre`` (see :func:`register_pair`).

    "Where it has data" is the tile's extent and, if the tile has one, its validity mask: the band-pass is
    then computed over valid voxels only (normalised convolution), so the border of the valid region, the same
    in both tiles of a deskewed mosaic, adds no edge that would pull the peak to the nominal shift.
    """
    na, nb = np.array(tile_a.shape), np.array(tile_b.shape)
    lo = np.maximum(0, di)
    hi = np.minimum(na, di + nb)
    box_lo = np.maximum(lo - margin, np.minimum(0, di))
    box_hi = np.minimum(hi + margin, np.maximum(na, di + nb))
    box_shape = box_hi - box_lo
    factor = np.ones(3, int)
    while np.prod((box_shape + margin + 1) / factor) > _COARSE_MAX_VOXELS:
        axis = int(np.argmax((box_shape + margin + 1) / factor))
        factor[axis] *= 2
    binned_shape = tuple(int(n) for n in box_shape // factor)
    images, masks = [], []
    for tile, start in ((tile_a, np.zeros(3, int)), (tile_b, di)):
        t_lo = np.maximum(box_lo, start)
        t_hi = np.minimum(box_hi, start + np.array(tile.shape))
        box = np.zeros(tuple(int(n) for n in box_shape), np.float32)
        mask = np.zeros_like(box)
        inside = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(t_lo, t_hi, box_lo, strict=True))
        source = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(t_lo, t_hi, start, strict=True))
        box[inside] = tile.read(source)
        valid_block = tile.read_valid(source)
        mask[inside] = 1.0 if valid_block is None else valid_block
        mask = (_bin(mask, factor) > 0.999).astype(np.float32)
        box = _bin(box, factor)
        if not mask.any():
            return np.zeros(3, int), int(factor.max())
        if valid_block is not None:
            image = _masked_bandpass(box, mask > 0)
        else:
            where = np.argwhere(mask)
            valid = tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0), strict=True))
            image = np.zeros(binned_shape, np.float32)
            image[valid] = _bandpass(box[valid])  # filter the data only, not the zeros around it
        images.append(image)
        masks.append(mask)
    reach = np.ceil(margin / factor).astype(int)
    fft_shape = tuple(
        int(sp_fft.next_fast_len(int(n + r + 1), real=True)) for n, r in zip(binned_shape, reach, strict=True)
    )
    if tile_a.valid is None and tile_b.valid is None:
        min_overlap = 0.25 * float(np.prod((hi - lo) / factor))
    else:  # a quarter of the valid voxels the nominal placement has in common
        min_overlap = 0.25 * float(np.sum(masks[0] * masks[1]))
    ncc = _masked_ncc(images[0], masks[0], images[1], masks[1], fft_shape, min_overlap)
    signed = [np.fft.fftfreq(n, 1.0 / n) for n in fft_shape]
    allowed = [np.abs(s) <= r + 0.5 for s, r in zip(signed, reach, strict=True)]
    ncc = np.where(
        allowed[0][:, None, None] & allowed[1][None, :, None] & allowed[2][None, None, :], ncc, -1.0
    )
    score = ncc
    if prior_sigma is not None:
        centre = np.zeros(3) if prior_centre is None else np.asarray(prior_centre, dtype=float)
        prior = np.ones((1, 1, 1))
        for axis, (s, f, c, sigma) in enumerate(zip(signed, factor, centre, prior_sigma, strict=True)):
            shape = [1, 1, 1]
            shape[axis] = len(s)
            prior = prior * np.exp(-0.5 * ((s * f - c) / sigma) ** 2).reshape(shape)
        score = np.where(ncc > 0, ncc * prior, ncc)
    peak = np.unravel_index(int(np.argmax(score)), ncc.shape)
    shift = np.array([int(s[p]) for s, p in zip(signed, peak, strict=True)]) * factor
    return shift, int(factor.max())


def _overlap_ncc(tile_a: Tile, tile_b: Tile, offset_vox: np.ndarray) -> float:
    """NCC (clipped to 0..1) of a and b over their overlap, b's voxel 0 at ``offset_vox`` in a's grid."""
    ranges = [
        _tile_range(off, n, 0, na) for off, n, na in zip(offset_vox, tile_b.shape, tile_a.shape, strict=True)
    ]
    if (
        any(b - a < _MIN_OVERLAP_VOX for a, b in ranges)
        or math.prod(b - a for a, b in ranges) < _MIN_NCC_VOXELS
    ):
        return 0.0
    if tile_a.valid is not None or tile_b.valid is not None:
        return _overlap_ncc_masked(tile_a, tile_b, [offset_vox])[0]
    # light smoothing (1 voxel) so that shot noise does not hide common structure; independent noise stays
    # uncorrelated, so an overlap without common content still scores about 0
    block_a = ndi.gaussian_filter(tile_a.read(tuple(slice(a, b) for a, b in ranges)).astype(np.float64), 1.0)
    block_b = ndi.gaussian_filter(_sample(tile_b, offset_vox, ranges).astype(np.float64), 1.0)
    block_a -= block_a.mean()
    block_b -= block_b.mean()
    denom = math.sqrt(float((block_a * block_a).sum()) * float((block_b * block_b).sum()))
    if denom == 0:
        return 0.0
    return float(np.clip((block_a * block_b).sum() / denom, 0.0, 1.0))


def _overlap_ncc_masked(tile_a: Tile, tile_b: Tile, offsets: Sequence[np.ndarray]) -> list[float]:
    """:func:`_overlap_ncc` over the voxels valid in both tiles (smoothing within them only), at each of
    ``offsets`` but all over the same voxels: those in the overlap and valid at every offset, so that the
    scores compare the offsets rather than the regions they happen to cover."""
    ranges = [(0, n) for n in tile_a.shape]
    for offset in offsets:
        ranges = [
            (max(lo, a), min(hi, b))
            for (lo, hi), (a, b) in zip(
                ranges,
                (
                    _tile_range(o, n, 0, na)
                    for o, n, na in zip(offset, tile_b.shape, tile_a.shape, strict=True)
                ),
                strict=True,
            )
        ]
    if any(b - a < _MIN_OVERLAP_VOX for a, b in ranges):
        return [0.0] * len(offsets)
    window = tuple(slice(a, b) for a, b in ranges)
    block_a = tile_a.read(window)
    mask = np.ones(block_a.shape, bool)
    valid_a = tile_a.read_valid(window)
    if valid_a is not None:
        mask &= valid_a
    blocks_b = []
    for offset in offsets:
        blocks_b.append(_sample(tile_b, offset, ranges))
        valid_b = _sample_valid(tile_b, offset, ranges)
        if valid_b is not None:
            mask &= valid_b
    if mask.sum() < _MIN_NCC_VOXELS:
        return [0.0] * len(offsets)
    values_a = _masked_smooth(block_a, mask, 1.0)[mask].astype(np.float64)
    values_a -= values_a.mean()
    scores = []
    for block_b in blocks_b:
        values_b = _masked_smooth(block_b, mask, 1.0)[mask].astype(np.float64)
        values_b -= values_b.mean()
        denom = math.sqrt(float(values_a @ values_a) * float(values_b @ values_b))
        scores.append(float(np.clip((values_a @ values_b) / denom, 0.0, 1.0)) if denom > 0 else 0.0)
    return scores


def register_pair(
    tile_a: Tile,
    tile_b: Tile,
    voxel_size_um,
    upsample_factor: int = 10,
    max_shift_um=None,
) -> PairLink:
    """Register tile ``b`` against tile ``a`` on their overlap.

    1. Coarse, to the nearest voxel: the masked normalised cross-correlation (Padfield 2012), computed for all
       shifts at once by FFT, of the band-passed tiles over their nominal overlap extended by a search margin
       (``max_shift_um``, by default a quarter of the smaller tile along each axis), each tile taken only
       where it has data. Large boxes are binned first (precision then a few voxels, recovered by step 2).
    2. Fine, sub-voxel: :func:`skimage.registration.phase_cross_correlation` with DFT upsampling on the exact
       overlap, then Gauss-Newton polishing of the overlap's squared difference (see :func:`_refine`), kept
       only if it does not lower the quality.

    ``quality`` is the normalised cross-correlation of the overlap at the final position (b linearly
    interpolated, both smoothed by a 1-voxel Gaussian against shot noise), clipped to 0..1. Slowly varying
    content keeps it well above 0 even a few voxels off: it separates overlaps with common content from
    those without, while wrong but plausible links are left to the residual test of
    :func:`optimise_positions`.

    Tiles with validity masks (``Tile.valid``, e.g. deskewed tiles and their empty wedges) are registered on
    the voxels valid in both tiles only: the coarse NCC band-passes each tile over its valid voxels
    (normalised convolution) and masks by extent and validity; the sub-voxel step is Gauss-Newton over the
    voxels valid in both (:func:`_refine_masked`), kept if it does not lower the NCC compared on the voxels
    both positions share; and the quality's NCC is taken over the voxels valid in both. Such tiles, deskewed
    light-sheet volumes, often overlap on little content (a few sparse spots), where a chance coincidence of
    two unrelated spots anywhere in the search range correlates as well as the true match. So the coarse peak
    is chosen, and the link's quality is scored, as the NCC times a Gaussian prior weight of the correction,
    ``exp(-½ Σ (c_i / σ_i)²)`` with ``σ_i`` half the search margin along each axis: a correction of half the
    margin along one axis costs a factor 0.61, the full margin 0.14. Corrections well inside the margin keep
    most of their NCC, and a chance match far out no longer beats a weaker true match near the nominal
    position, nor passes ``min_quality`` without strong support. ``max_shift_um`` therefore also sets the
    prior: about twice the largest stage error expected is a good value.

    Parameters
    ----------
    tile_a, tile_b:
        The tiles, at their nominal positions (``origin_um``).
    voxel_size_um:
        ``(dz, dy, dx)`` in µm, shared by both tiles.
    upsample_factor:
        DFT upsampling of the phase correlation (its precision is ``1 / upsample_factor`` voxel, before
        polishing).
    max_shift_um:
        Largest correction in µm (scalar or per axis ``(z, y, x)``) searched; a link whose final estimate
        exceeds it by more than one voxel is returned with quality 0 and ``used=False``. None: no limit beyond
        the margin.

    Returns
    -------
    PairLink
        ``shift_um`` is the correction of b relative to a (µm); ``quality`` the NCC (0..1) of the overlap
        after applying it (times the prior weight for tiles with validity masks). Tiles whose nominal boxes
        overlap by fewer than 3 voxels along an axis give ``quality=0, used=False``.
    """
    voxel = np.array(_voxel3(voxel_size_um))
    max_shift_vox = _as_max_shift_vox(max_shift_um, voxel)
    d = (np.array(tile_b.origin_um) - np.array(tile_a.origin_um)) / voxel  # nominal offset of b in a's grid
    di = np.round(d).astype(int)
    na, nb = np.array(tile_a.shape), np.array(tile_b.shape)
    overlap = np.minimum(na, di + nb) - np.maximum(0, di)
    failed = PairLink(a=tile_a.key, b=tile_b.key, shift_um=(0.0, 0.0, 0.0), quality=0.0, used=False)
    if np.any(overlap < _MIN_OVERLAP_VOX):
        return failed
    if max_shift_vox is not None:
        margin = np.ceil(max_shift_vox).astype(int)
    else:
        margin = np.ceil(np.minimum(na, nb) / 4).astype(int)
    if tile_a.valid is None and tile_b.valid is None:
        shift, precision = _coarse_shift(tile_a, tile_b, di, margin)
        offset = (di + shift).astype(float)
        quality = _overlap_ncc(tile_a, tile_b, offset)
        refined = _refine(tile_a, tile_b, offset, upsample_factor, reach=max(2.0, precision + 1.0))
        if refined is not None:
            refined_quality = _overlap_ncc(tile_a, tile_b, refined)
            if refined_quality >= quality - 0.01:  # linear interpolation smooths noise: allow a little less
                quality, offset = refined_quality, refined
    else:
        prior_sigma = _PRIOR_SIGMA_OF_MARGIN * np.maximum(margin, 1)
        shift, precision = _coarse_shift(tile_a, tile_b, di, margin, prior_sigma, prior_centre=d - di)
        offset = (di + shift).astype(float)
        refined = _refine_masked(tile_a, tile_b, offset, reach=max(2.0, precision + 1.0))
        if refined is not None:
            # compare on the voxels both positions have in common: the overlap's edge moves with the offset
            before, after = _overlap_ncc_masked(tile_a, tile_b, [offset, refined])
            if after >= before - 0.01:
                offset = refined
        quality = _overlap_ncc(tile_a, tile_b, offset) * _prior_weight(offset - d, prior_sigma)
    correction = offset - d
    used = quality > 0
    if max_shift_vox is not None and np.any(np.abs(correction) > max_shift_vox + 1.0):
        quality, used = 0.0, False
    shift_um = tuple(float(v) for v in correction * voxel)
    return PairLink(a=tile_a.key, b=tile_b.key, shift_um=shift_um, quality=float(quality), used=used)


def _overlapping_pairs(tiles: Sequence[Tile], voxel: np.ndarray) -> list[tuple[int, int]]:
    pairs = []
    for i, ta in enumerate(tiles):
        for j in range(i + 1, len(tiles)):
            tb = tiles[j]
            d = np.round((np.array(tb.origin_um) - np.array(ta.origin_um)) / voxel).astype(int)
            overlap = np.minimum(np.array(ta.shape), d + np.array(tb.shape)) - np.maximum(0, d)
            if np.all(overlap >= _MIN_OVERLAP_VOX):
                pairs.append((i, j))
    return pairs
