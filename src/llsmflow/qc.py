"""Quality-control previews: maximum projections as PNG, written with matplotlib (Agg, no display needed)."""

from __future__ import annotations

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
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (name, image, aspect) in zip(axes[0], panels, strict=True):
        lo, hi = contrast_limits(image)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def save_mosaic(
    projection_yx: np.ndarray, origin_um, voxel_size_um, tiles: dict, out_png: str | Path, title: str = ""
) -> Path:
    """Save a fused maximum projection (YX, axes in µm) with each tile's registered outline.

    ``tiles`` maps tile name to ``(origin_um (z, y, x), shape (z, y, x))``.
    """
    dy, dx = voxel_size_um[1], voxel_size_um[2]
    ny, nx = projection_yx.shape
    extent = (
        origin_um[2] - dx / 2,
        origin_um[2] + (nx - 0.5) * dx,
        origin_um[1] + (ny - 0.5) * dy,
        origin_um[1] - dy / 2,
    )
    fig, ax = plt.subplots(figsize=(7, 7 * ny * dy / max(nx * dx, 1e-9) + 0.8))
    lo, hi = contrast_limits(projection_yx)
    ax.imshow(projection_yx, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    colours = plt.cm.tab10.colors
    for i, (name, (origin, shape)) in enumerate(sorted(tiles.items())):
        ax.add_patch(
            Rectangle(
                (origin[2] - dx / 2, origin[1] - dy / 2),
                shape[2] * dx,
                shape[1] * dy,
                fill=False,
                edgecolor=colours[i % 10],
                linewidth=1.2,
                label=name,
            )
        )
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def _save(fig, out_png) -> Path:
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
