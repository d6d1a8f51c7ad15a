"""Global optimisation of tile positions over the tile graph (least squares with residual rejection), and
:func:`register_tiles`, the registration step end to end: every overlapping pair, then the optimisation,
as the JSON-serialisable transforms that :mod:`.transforms` writes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from llsmflow.errors import LlsmflowError
from llsmflow.stitch.grid import _voxel3
from llsmflow.stitch.pairwise import PairLink, _overlapping_pairs, register_pair
from llsmflow.stitch.tiles import Tile, _check_tiles

__all__ = ["StitchWarning", "optimise_positions", "register_tiles"]


class StitchWarning(UserWarning):
    """A tile could not be connected to the reference tile and was placed without registration."""


def _components(keys: Sequence[str], links: Sequence[PairLink]) -> list[list[str]]:
    """The connected components of the tile graph (tiles ``keys``, edges ``links``): each in the order of
    ``keys``, the components in the order of their first key (so the reference, listed first, heads its own)."""
    index = {k: i for i, k in enumerate(keys)}
    rows = [index[link.a] for link in links]
    cols = [index[link.b] for link in links]
    graph = coo_array((np.ones(len(links)), (rows, cols)), shape=(len(keys), len(keys)))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[str]] = {}
    for key, label in zip(keys, labels, strict=True):
        members.setdefault(int(label), []).append(key)
    return list(members.values())


def _solve(component: Sequence[str], links: Sequence[PairLink]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Least-squares corrections (µm) of the tiles of one component, its first tile fixed at 0.

    Returns the corrections and the residual vectors (µm) of ``links`` (whose tiles are all in the component).
    """
    index = {k: i for i, k in enumerate(component)}
    n = len(component)
    if n == 1 or not links:
        return {k: np.zeros(3) for k in component}, np.zeros((len(links), 3))
    design = np.zeros((len(links), n))
    target = np.zeros((len(links), 3))
    weights = np.zeros(len(links))
    for row, link in enumerate(links):
        design[row, index[link.b]] = 1.0
        design[row, index[link.a]] = -1.0
        target[row] = link.shift_um
        weights[row] = math.sqrt(max(link.quality, 1e-3))
    solution = np.zeros((n, 3))
    solution[1:], *_ = np.linalg.lstsq(
        design[:, 1:] * weights[:, None], target * weights[:, None], rcond=None
    )
    residuals = design @ solution - target
    return {k: solution[i] for k, i in index.items()}, residuals


def optimise_positions(
    tiles: Sequence[Tile],
    links: Sequence[PairLink],
    voxel_size_um,
    min_quality: float = 0.5,
    max_residual_um: float | None = None,
    reference: str | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Globally consistent tile positions from pairwise links, by least squares over the tile graph.

    Each link says ``c_b - c_a = shift_um`` for the corrections ``c`` (µm) of the tiles' nominal origins.
    Links with quality below ``min_quality`` (or 0) are dropped; the rest are solved in the least-squares
    sense (weighted by the square root of their quality) with the reference tile's correction fixed at 0.
    Then, while the largest residual (Euclidean length, µm) exceeds ``max_residual_um``, that link is dropped
    and the system solved again. A link that is the only path to a tile (a bridge) always has zero residual,
    so residual rejection never disconnects the graph.

    Tiles not connected to the reference keep their nominal position (a group of tiles connected among
    themselves but not to the reference is aligned internally, its first tile at its nominal position), and a
    :class:`StitchWarning` names them.

    Parameters
    ----------
    tiles:
        The tiles, at their nominal positions.
    links:
        Pairwise registrations (:func:`register_pair`). Their ``used`` and ``residual_um`` attributes are
        updated in place to say which links the solution rests on.
    voxel_size_um:
        ``(dz, dy, dx)`` in µm.
    min_quality:
        Lowest link quality (NCC, 0..1) accepted (default as the workflow's ``stitch.min_quality``).
    max_residual_um:
        Largest residual accepted, µm; default twice the largest voxel dimension.
    reference:
        Key of the tile fixed at its nominal position; default the first tile.

    Returns
    -------
    dict
        Tile key -> optimised origin ``(z, y, x)`` in µm.
    """
    tiles = _check_tiles(tiles)
    voxel = np.array(_voxel3(voxel_size_um))
    keys = [t.key for t in tiles]
    nominal = {t.key: np.array(t.origin_um) for t in tiles}
    reference = keys[0] if reference is None else str(reference)
    if reference not in nominal:
        raise LlsmflowError(f"reference tile {reference!r} is not among the tiles; expected one of {keys}")
    if max_residual_um is None:
        max_residual_um = 2.0 * float(voxel.max())
    if not (max_residual_um >= 0):
        raise LlsmflowError(
            f"max_residual_um={max_residual_um!r} is invalid; expected a non-negative number of µm"
        )
    for link in links:
        for k in (link.a, link.b):
            if k not in nominal:
                raise LlsmflowError(
                    f"link {link.a!r}-{link.b!r} names unknown tile {k!r}; expected one of {keys}"
                )
    active = []
    for link in links:
        ok = (
            link.a != link.b
            and link.quality > 0
            and link.quality >= min_quality
            and all(math.isfinite(v) for v in link.shift_um)
        )
        link.used = bool(ok)
        link.residual_um = None
        if ok:
            active.append(link)

    order = [reference] + [k for k in keys if k != reference]
    while True:
        corrections: dict[str, np.ndarray] = {}
        worst: tuple[float, PairLink] | None = None
        for component in _components(order, active):
            members = set(component)
            comp_links = [lk for lk in active if lk.a in members]
            solved, residuals = _solve(component, comp_links)
            corrections.update(solved)
            for link, r in zip(comp_links, residuals, strict=True):
                link.residual_um = float(np.linalg.norm(r))
                if worst is None or link.residual_um > worst[0]:
                    worst = (link.residual_um, link)
        if worst is None or worst[0] <= max_residual_um + 1e-9:
            break
        worst[1].used = False
        worst[1].residual_um = None
        active.remove(worst[1])

    connected = next(c for c in _components(order, active) if reference in c)
    lost = [k for k in keys if k not in connected]
    if lost:
        warnings.warn(
            f"tile(s) {', '.join(repr(k) for k in lost)} not connected to reference tile {reference!r} "
            f"by any link of quality >= {min_quality} and residual <= {max_residual_um:.3g} µm; "
            "placed at their nominal position",
            StitchWarning,
            stacklevel=2,
        )
    return {k: tuple(float(v) for v in nominal[k] + corrections[k]) for k in keys}


def register_tiles(
    tiles: Sequence[Tile],
    voxel_size_um,
    min_quality: float = 0.5,
    upsample_factor: int = 10,
    max_shift_um=3.0,
    max_residual_um: float | None = None,
    reference: str | None = None,
) -> dict:
    """Register every pair of overlapping tiles and optimise all positions.

    Pairs are the tiles whose nominal boxes overlap by at least 3 voxels along every axis. See
    :func:`register_pair` and :func:`optimise_positions` for the parameters. The defaults are the
    workflow's (config/schema.yaml, ``stitch``): ``max_shift_um`` 3 µm bounds a stage's positioning error;
    ``None`` searches a quarter of the smaller tile, as :func:`register_pair` does by default.

    Returns
    -------
    dict
        JSON-serialisable transforms::

            {"voxel_size_um": [dz, dy, dx], "reference": key,
             "tiles": {key: {"nominal_origin_um": [z, y, x], "origin_um": [z, y, x], "shape": [nz, ny, nx],
                             "path": str | None}},
             "pairs": [{"a", "b", "shift_um", "quality", "used", "residual_um"}]}
    """
    tiles = _check_tiles(tiles)
    voxel = _voxel3(voxel_size_um)
    links = [
        register_pair(tiles[i], tiles[j], voxel, upsample_factor=upsample_factor, max_shift_um=max_shift_um)
        for i, j in _overlapping_pairs(tiles, np.array(voxel))
    ]
    reference = tiles[0].key if reference is None else str(reference)
    positions = optimise_positions(
        tiles, links, voxel, min_quality=min_quality, max_residual_um=max_residual_um, reference=reference
    )
    return {
        "voxel_size_um": list(voxel),
        "reference": reference,
        "tiles": {
            t.key: {
                "nominal_origin_um": list(t.origin_um),
                "origin_um": list(positions[t.key]),
                "shape": list(t.shape),
                "path": t.path,
            }
            for t in tiles
        },
        "pairs": [
            {
                "a": lk.a,
                "b": lk.b,
                "shift_um": list(lk.shift_um),
                "quality": lk.quality,
                "used": lk.used,
                "residual_um": lk.residual_um,
            }
            for lk in links
        ],
    }
