"""Figures of tracks and MSD curves (matplotlib, Agg backend), saved as PNG atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llsmflow.errors import LlsmflowError
from llsmflow.io import atomic_output
from llsmflow.track._common import _origin3, _voxel3
from llsmflow.track.tables import _check_tracks


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
