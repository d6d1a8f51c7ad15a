"""Quality-control previews: maximum projections as PNG, written with matplotlib (Agg, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from llsmflow.io import atomic_output  # noqa: E402


def contrast_limits(image: np.ndarray, low: float = 0.5, high: float = 99.8) -> tuple[float, float]:
    """Percentile display limits of the non-empty part of an image."""
    values = image[image != 0] if np.any(image != 0) else image.ravel()
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(max(hi, lo + 1e-6))


def save_projection_panel(
    panels: list[tuple[str, np.ndarray, float]], out_png: str | Path, title: str = ""
) -> Path:
    """Save maximum projections side by side.

    ``panels`` holds ``(title, image_2d, aspect)`` with ``aspect`` = row pixel size / column pixel size, so that
    projections of anisotropic data are shown in physical proportions.
    """
    return save_projection_grid([panels], out_png, title)


def save_projection_grid(
    rows: list[list[tuple[str, np.ndarray, float]]], out_png: str | Path, title: str = ""
) -> Path:
    """Save rows of maximum projections (e.g. YX above ZX), every row with the same number of panels.

    Each panel is ``(title, image_2d, aspect)`` as in :func:`save_projection_panel`. Row heights follow the
    physical height of their first panel, so a thin ZX projection takes less room than a YX one.
    """
    ncols = len(rows[0])
    if any(len(row) != ncols for row in rows):
        raise ValueError(f"rows of {[len(r) for r in rows]} panels given; expected the same number in each")
    heights = [max(0.25, row[0][1].shape[0] * row[0][2] / max(row[0][1].shape[1], 1)) for row in rows]
    width = 4.2 * ncols
    fig, axes = plt.subplots(
        len(rows),
        ncols,
        figsize=(width, sum(heights) * 4.0 + 0.5 * len(rows) + (0.4 if title else 0)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for row_axes, row in zip(axes, rows, strict=True):
        for ax, (name, image, aspect) in zip(row_axes, row, strict=True):
            lo, hi = contrast_limits(image)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def tile_projection_rows(
    raw_zyx: np.ndarray,
    deskewed_zyx: np.ndarray,
    deconvolved_zyx: np.ndarray,
    voxel_size_um,
    scan_axis: str = "x",
) -> list[list[tuple[str, np.ndarray, float]]]:
    """Panels for one tile: raw, deskewed and deconvolved, as YX (max over z) and side projections.

    ``voxel_size_um`` is the deskewed voxel size ``(dz', dy, dx)`` in µm. The side view is the (Z, scan axis)
    plane, where deskewing changes something: ZX (max over y) for scan axis x, ZY (max over x) for scan axis
    y. The raw stack is shown with the same aspect, so its side view shows the stage-scan shear that
    deskewing removes.
    """
    if scan_axis not in ("x", "y"):
        raise ValueError(f"scan axis {scan_axis!r} given; expected 'x' or 'y'")
    dz, dy, dx = (float(v) for v in voxel_size_um)
    volumes = (
        ("raw (skewed)", np.asarray(raw_zyx)),
        ("deskewed", np.asarray(deskewed_zyx)),
        ("deconvolved", np.asarray(deconvolved_zyx)),
    )
    yx = [(f"{name}, max over z (YX)", vol.max(axis=0), dy / dx) for name, vol in volumes]
    if scan_axis == "y":
        side = [(f"{name}, max over x (ZY)", vol.max(axis=2), dz / dy) for name, vol in volumes]
    else:
        side = [(f"{name}, max over y (ZX)", vol.max(axis=1), dz / dx) for name, vol in volumes]
    return [yx, side]


# Mosaic positions are drawn on a grid of 1/_QUANTUM voxel (integer units), so that round-off in the
# registered origins (a resumed run re-registers: last-bit differences) cannot move a drawn edge.
_QUANTUM = 64


def _units(value_um: float, voxel_um: float) -> int:
    """``value_um`` in integer units of ``voxel_um / _QUANTUM``."""
    return round(float(value_um) / float(voxel_um) * _QUANTUM)


def save_mosaic(
    projection_yx: np.ndarray,
    origin_um,
    voxel_size_um,
    tiles: dict,
    out_png: str | Path,
    title: str = "",
    pairs: list[dict] | None = None,
) -> Path:
    """Save a fused maximum projection (YX, axes in µm) with each tile's registered outline.

    ``tiles`` maps tile name to ``(origin_um (z, y, x), shape (z, y, x))``. ``pairs`` (optional, the ``pairs``
    of a transforms file: ``a``, ``b``, ``quality``, ``used``) draws a line between the centres of each
    registered pair, labelled with its correlation quality (solid: used, dashed: rejected).

    The figure cannot move under round-off: positions (the projection's origin, the tile outlines, the pair
    lines) are drawn on a grid of 1/64 voxel, and the plot's extent is the projection's rounded outward to
    whole voxels of the mosaic's nominal grid (multiples of the voxel size from the stage origin). Two calls
    whose origins differ by round-off (a re-registration after a resume) write byte-identical PNGs.
    """
    dy, dx = float(voxel_size_um[1]), float(voxel_size_um[2])
    uy, ux = dy / _QUANTUM, dx / _QUANTUM
    half = _QUANTUM // 2
    ny, nx = projection_yx.shape
    oy, ox = _units(origin_um[1], dy), _units(origin_um[2], dx)
    left, right = ox - half, ox + nx * _QUANTUM - half
    top, bottom = oy - half, oy + ny * _QUANTUM - half
    extent = (left * ux, right * ux, bottom * uy, top * uy)
    fig, ax = plt.subplots(figsize=(7, 7 * ny * dy / max(nx * dx, 1e-9) + 0.8))
    lo, hi = contrast_limits(projection_yx)
    ax.imshow(projection_yx, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    colours = plt.cm.tab10.colors
    boxes = {
        name: (_units(origin[1], dy), _units(origin[2], dx), shape) for name, (origin, shape) in tiles.items()
    }
    for i, (name, (ty, tx, shape)) in enumerate(sorted(boxes.items())):
        ax.add_patch(
            Rectangle(
                ((tx - half) * ux, (ty - half) * uy),
                shape[2] * dx,
                shape[1] * dy,
                fill=False,
                edgecolor=colours[i % 10],
                linewidth=1.2,
                label=name,
            )
        )
    for pair in pairs or []:
        if pair.get("a") not in tiles or pair.get("b") not in tiles:
            continue
        (ya, xa), (yb, xb) = (_centre_yx(*boxes[pair["a"]], uy, ux), _centre_yx(*boxes[pair["b"]], uy, ux))
        used = bool(pair.get("used", True))
        ax.plot([xa, xb], [ya, yb], "-" if used else "--", color="yellow" if used else "red", linewidth=1.0)
        ax.annotate(
            f"q = {float(pair.get('quality', float('nan'))):.2f}",
            ((xa + xb) / 2, (ya + yb) / 2),
            color="yellow" if used else "red",
            fontsize=8,
            ha="center",
            va="center",
            bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0, "pad": 1.5},
        )
    # whole voxels of the nominal grid, outward (integer arithmetic on the quantised units)
    ax.set_xlim(math.floor(left / _QUANTUM) * dx, math.ceil(right / _QUANTUM) * dx)
    ax.set_ylim(math.ceil(bottom / _QUANTUM) * dy, math.floor(top / _QUANTUM) * dy)
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def _centre_yx(ty: int, tx: int, shape, uy: float, ux: float) -> tuple[float, float]:
    """Centre (y, x) in µm of a tile whose origin is ``(ty, tx)`` quantised units and ``shape`` (z, y, x)."""
    return (ty + (shape[1] - 1) * _QUANTUM / 2) * uy, (tx + (shape[2] - 1) * _QUANTUM / 2) * ux


def _save(fig, out_png) -> Path:
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
