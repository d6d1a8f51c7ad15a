"""Quality-control previews: maximum projections as PNG, written with matplotlib (Agg, no display needed).

Figures are made as :class:`matplotlib.figure.Figure` on an Agg canvas, not through ``pyplot`` (whose state
machine and backend selection no preview needs: about 0.2 s of each QC job's start-up).

Every projection carries a scale bar (µm, in :data:`SCALE_BAR_RGB`, lower right) and its display range (the
intensities shown from black to white, upper left). What was drawn is stated in the PNG itself: a text chunk
:data:`PANELS_KEY` holds, per panel, the pixel size, the scale bar's length in µm and where it lies in the
image's pixels, and the display range (:func:`read_panels`), so the QC report can caption them and a test can
check the bar's pixels against the data's voxel size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from llsmflow.io import atomic_output

#: colour of the scale bars (a grey colour map never produces it, so the bar can be found in the pixels)
SCALE_BAR_RGB = (255, 200, 0)
#: the PNG text chunk that describes the panels of a preview (JSON)
PANELS_KEY = "llsmflow-panels"
_DPI = 110  # figures are laid out at the resolution they are saved with, so that pixel positions hold


def nice_length(longest_um: float) -> float:
    """The longest of 1, 2, 5 × 10^k µm that is at most ``longest_um`` (a scale bar's length)."""
    if not longest_um > 0:
        raise ValueError(f"scale bar room {longest_um} µm is invalid; expected > 0")
    power = 10.0 ** math.floor(math.log10(longest_um))
    for step in (5.0, 2.0, 1.0):
        if step * power <= longest_um * (1 + 1e-9):
            return step * power
    return power  # pragma: no cover - 1 × 10^k always fits


def _format_intensity(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3g}"


def _annotate(ax, image: np.ndarray, px_um: float | None, lo: float, hi: float, extent=None) -> dict:
    """Draw the display range (upper left) and, given the column pixel size ``px_um``, a scale bar of a
    quarter of the width at most (lower right); return the panel's description (bar position filled in by
    :func:`_locate`)."""
    from matplotlib import patheffects

    rows, cols = image.shape
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    ax.text(
        0.02,
        0.97,
        f"{_format_intensity(lo)}–{_format_intensity(hi)}",
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=7,
        color="white",
        path_effects=outline,
    )
    panel = {"shape": [rows, cols], "range": [lo, hi], "pixel_um": px_um}
    if px_um is None or px_um <= 0:
        return panel
    if extent is None:
        left, right, bottom, top = -0.5, cols - 0.5, rows - 0.5, -0.5
        per_um = 1.0 / px_um  # data units (columns) per µm
    else:
        left, right, bottom, top = extent
        per_um = 1.0
    width_um = (right - left) / per_um
    bar_um = nice_length(width_um / 4)
    margin = 0.04 * (right - left)
    x1 = right - margin
    x0 = x1 - bar_um * per_um
    y = bottom + 0.08 * (top - bottom)
    rgb = tuple(c / 255 for c in SCALE_BAR_RGB)
    ax.plot([x0, x1], [y, y], color=rgb, linewidth=3, solid_capstyle="butt", antialiased=False)
    label = f"{bar_um:g} µm"
    ax.text(
        (x0 + x1) / 2,
        y + 0.05 * (top - bottom),
        label,
        ha="center",
        va="bottom",
        fontsize=7,
        color="white",
        path_effects=outline,
    )
    panel.update(bar_um=bar_um, _bar_data=[x0, x1, y], _extent=[left, right])
    return panel


def _locate(fig, axes_panels: list) -> list[dict]:
    """The panels with the scale bar's and the image's position in the saved PNG's pixels (after layout)."""
    fig.canvas.draw()
    height = fig.canvas.get_width_height()[1]
    panels = []
    for ax, panel in axes_panels:
        panel = dict(panel)
        bar = panel.pop("_bar_data", None)
        extent = panel.pop("_extent", None)
        if bar is not None:
            (bx0, by), (bx1, _) = ax.transData.transform([(bar[0], bar[2]), (bar[1], bar[2])])
            (ix0, _), (ix1, _) = ax.transData.transform([(extent[0], bar[2]), (extent[1], bar[2])])
            panel["bar_px"] = [round(float(bx0), 1), round(float(bx1), 1), round(height - float(by), 1)]
            panel["image_px"] = [round(float(ix0), 1), round(float(ix1), 1)]
        panels.append(panel)
    return panels


def read_panels(path: str | Path) -> list[dict]:
    """The panel descriptions a preview PNG carries (:data:`PANELS_KEY`); empty when it has none."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get(PANELS_KEY)
    return json.loads(text) if text else []


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
    projections of anisotropic data are shown in physical proportions, or ``(title, image_2d, aspect,
    column_pixel_um)`` to draw a scale bar.
    """
    return save_projection_grid([panels], out_png, title)


def save_projection_grid(
    rows: list[list[tuple[str, np.ndarray, float]]], out_png: str | Path, title: str = ""
) -> Path:
    """Save rows of maximum projections (e.g. YX above ZX), every row with the same number of panels.

    Each panel is ``(title, image_2d, aspect[, column_pixel_um])`` as in :func:`save_projection_panel`. Row
    heights follow the physical height of their first panel, so a thin ZX projection takes less room than a YX
    one. Each panel shows its display range, and a scale bar when its pixel size is given.
    """
    ncols = len(rows[0])
    if any(len(row) != ncols for row in rows):
        raise ValueError(f"rows of {[len(r) for r in rows]} panels given; expected the same number in each")
    heights = [max(0.25, row[0][1].shape[0] * row[0][2] / max(row[0][1].shape[1], 1)) for row in rows]
    width = 4.2 * ncols
    fig = _figure((width, sum(heights) * 4.0 + 0.5 * len(rows) + (0.4 if title else 0)))
    axes = fig.subplots(len(rows), ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    drawn = []
    for row_axes, row in zip(axes, rows, strict=True):
        for ax, panel in zip(row_axes, row, strict=True):
            name, image, aspect = panel[:3]
            px_um = panel[3] if len(panel) > 3 else None
            lo, hi = contrast_limits(image)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            drawn.append((ax, {"title": name, **_annotate(ax, np.asarray(image), px_um, lo, hi)}))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png, _locate(fig, drawn))


def tile_projection_rows(
    raw_zyx: np.ndarray,
    deskewed_zyx: np.ndarray,
    deconvolved_zyx: np.ndarray,
    voxel_size_um,
    scan_axis: str = "x",
) -> list[list[tuple[str, np.ndarray, float]]]:
    """Panels for one tile: raw, deskewed and deconvolved, as YX (max over z) and side projections, each
    ``(title, image, aspect, column pixel size in µm)``.

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
    yx = [(f"{name}, max over z (YX)", vol.max(axis=0), dy / dx, dx) for name, vol in volumes]
    if scan_axis == "y":
        side = [(f"{name}, max over x (ZY)", vol.max(axis=2), dz / dy, dy) for name, vol in volumes]
    else:
        side = [(f"{name}, max over y (ZX)", vol.max(axis=1), dz / dx, dx) for name, vol in volumes]
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
    fig = _figure((7, 7 * ny * dy / max(nx * dx, 1e-9) + 0.8))
    ax = fig.subplots()
    lo, hi = contrast_limits(projection_yx)
    ax.imshow(projection_yx, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    colours = matplotlib.colormaps["tab10"].colors
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
    view = (ax.get_xlim()[0], ax.get_xlim()[1], ax.get_ylim()[0], ax.get_ylim()[1])
    panel = {"title": title or "mosaic", **_annotate(ax, projection_yx, dx, lo, hi, extent=view)}
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png, _locate(fig, [(ax, panel)]))


def _centre_yx(ty: int, tx: int, shape, uy: float, ux: float) -> tuple[float, float]:
    """Centre (y, x) in µm of a tile whose origin is ``(ty, tx)`` quantised units and ``shape`` (z, y, x)."""
    return (ty + (shape[1] - 1) * _QUANTUM / 2) * uy, (tx + (shape[2] - 1) * _QUANTUM / 2) * ux


def _figure(size_in: tuple[float, float]) -> Figure:
    """A figure of ``size_in`` inches at :data:`_DPI` on its own Agg canvas."""
    fig = Figure(figsize=size_in, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png, panels: list[dict] | None = None) -> Path:
    out_png = Path(out_png)
    metadata = {PANELS_KEY: json.dumps(panels, ensure_ascii=True)} if panels is not None else None
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png", metadata=metadata)
    return out_png
