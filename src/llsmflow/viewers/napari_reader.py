"""The napari reader of llsmflow archives: channels and tracks in one world coordinate system (µm, s).

napari's own OME-Zarr readers either read a plain Zarr group (napari's builtins) or, with napari-ome-zarr, the
image without its translation (field notes; docs/viewers.md measures it), and neither opens the tracks
tables. This reader opens what llsmflow writes and nothing else (:func:`get_reader` declines any directory
without the ``llsmflow`` root attributes, so other OME-Zarr images go to other readers):

* one image layer per channel (``channel_axis``), multiscale when the archive has a pyramid, named after the
  channel, coloured as in the ``omero`` metadata (black to the channel's colour), with its contrast window,
  ``scale = (dt, dz, dy, dx)`` in s and µm and ``translate = (0, z0, y0, x0)`` µm, the origin of voxel
  (0, 0, 0);
* one tracks layer per ``tracks_<channel>`` table of the archive: ``(particle, frame, z_um, y_um, x_um)``
  with ``scale = (dt, 1, 1, 1)``, so that a track point lands where its particle is in the image layers.

The layer data are plain napari layer-data tuples (no napari import here); ``napari.yaml`` in this package is
the npe2 manifest that points napari at :func:`get_reader`. An archive may be a URL (``https://…``,
``s3://…``, e.g. typed into napari's "Open from URL"): the arrays are read lazily through zarr's fsspec store,
the tracks tables fetched whole (:mod:`llsmflow.archive.remote`).
"""

from __future__ import annotations

import io
from pathlib import Path

#: Prefix of the archive's tracks tables (``tables/tracks_<channel>.parquet``).
TRACKS_PREFIX = "tracks_"


def _root_attrs(path) -> dict | None:
    """Root attributes of an llsmflow archive, or None for anything else (not a directory or URL of a Zarr
    group, not written by llsmflow)."""
    from llsmflow.io import is_url

    remote = is_url(path)
    if not remote:
        path = Path(path)
        if not path.is_dir() or not any((path / n).is_file() for n in ("zarr.json", ".zattrs")):
            return None
    import zarr

    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:  # not a readable Zarr group (or no answer): another reader's business
        return None
    return attrs if isinstance(attrs.get("llsmflow"), dict) else None


def get_reader(path):
    """napari reader hook: a function reading ``path`` when it is an llsmflow archive, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if _root_attrs(path) is None:
        return None
    return lambda p: archive_layers(p[0] if isinstance(p, list | tuple) else p)


def _rgb(color: str) -> list[float]:
    value = str(color).lstrip("#")
    return [int(value[i : i + 2], 16) / 255.0 for i in (0, 2, 4)]


def archive_layers(path) -> list[tuple]:
    """napari layer data (``(data, kwargs, layer_type)``) for an llsmflow archive: image channels, then tracks.

    Parameters
    ----------
    path : str or Path
        The ``.ome.zarr`` archive (NGFF 0.4 or 0.5): a folder or a URL.

    Returns
    -------
    list of tuple
        ``(levels, image kwargs, "image")`` with ``channel_axis=1``, then one ``(array, kwargs, "tracks")``
        per tracks table. World coordinates: time in s, space in µm (ZYX).
    """
    import dask.array as da
    import pandas as pd
    import zarr

    from llsmflow.archive.read import read_ome_zarr
    from llsmflow.archive.remote import is_url, read_member, redact
    from llsmflow.errors import LlsmflowError

    path = str(path) if is_url(path) else Path(path)
    attrs = _root_attrs(path)
    if attrs is None:
        raise LlsmflowError(
            "is not an llsmflow archive (no llsmflow root attributes); expected one", redact(str(path))
        )
    _, meta = read_ome_zarr(path)
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    group = zarr.open_group(str(path), mode="r")
    levels = [da.from_zarr(group[d["path"]]) for d in ome["multiscales"][0]["datasets"]]
    channels = (ome.get("omero") or {}).get("channels") or []
    n_c = levels[0].shape[1]
    dt = meta["time_interval_s"] or 1.0
    scale = (dt, *meta["voxel_size_um"])
    translate = (0.0, *meta["origin_um"])
    colormaps, limits = [], []
    for c in range(n_c):
        channel = channels[c] if c < len(channels) else {}
        color = channel.get("color", "FFFFFF")
        colormaps.append({"name": f"llsmflow {color}", "colors": [[0.0, 0.0, 0.0, 1.0], [*_rgb(color), 1.0]]})
        window = channel.get("window") or {}
        limits.append([float(window.get("start", 0.0)), float(window.get("end", 1.0))])
    image = (
        levels if len(levels) > 1 else levels[0],
        {
            "channel_axis": 1,
            "name": list(meta["channel_names"]),
            "colormap": colormaps,
            "contrast_limits": limits,
            "scale": scale,
            "translate": translate,
            "blending": "additive",
            "multiscale": len(levels) > 1,
            "metadata": {"llsmflow_archive": redact(str(path)), "voxel_size_um": meta["voxel_size_um"]},
        },
        "image",
    )
    layers = [image]
    names = list(meta["channel_names"])
    for table, entry in sorted((attrs["llsmflow"].get("tables") or {}).items()):
        if not table.startswith(TRACKS_PREFIX):
            continue
        table_bytes = read_member(path, entry["path"])
        if table_bytes is None:
            raise LlsmflowError(
                f"lists table {table!r} at {entry['path']}, which is missing; expected an intact archive "
                "(`llsmflow verify`)",
                redact(str(path)),
            )
        tracks = pd.read_parquet(io.BytesIO(table_bytes))
        if tracks.empty:
            continue
        key = table[len(TRACKS_PREFIX) :]
        index = int(key[2:]) if key.startswith("ch") and key[2:].isdigit() else None
        label = names[index] if index is not None and index < len(names) else key
        data = tracks[["particle", "frame", "z_um", "y_um", "x_um"]].to_numpy(dtype=float)
        layers.append(
            (
                data,
                {"name": f"tracks {label}", "scale": (dt, 1.0, 1.0, 1.0), "translate": (0.0, 0.0, 0.0, 0.0)},
                "tracks",
            )
        )
    return layers
