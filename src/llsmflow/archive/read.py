"""Reading an OME-Zarr image back: level 0 as a dask array (TCZYX), voxel sizes in µm, times in s.

Kept apart from the writer (:mod:`llsmflow.archive.ome_zarr`) so that each stays a readable size.
:func:`read_ome_zarr` uses ome-zarr-py, :class:`ome_zarr.reader.Reader`, so that any NGFF 0.4/0.5 image written
by another tool reads as the specification says, not as our writer happens to write it.

:func:`max_projection_yx` is the light path for a job that needs one projection of a local image (the QC
mosaic): it reads the multiscales and omero JSON with zarr alone and reduces the chunks itself, because
importing ome-zarr-py (with scikit-image, pydantic models and dask) costs about 0.8 s of a job's start-up;
its metadata comes from the same conversion as :func:`read_ome_zarr`'s (``tests/test_archive_light_read.py``
checks both against each other). ome-zarr-py and dask are imported by :func:`read_ome_zarr` only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from llsmflow.archive.remote import is_url, redact, unreachable
from llsmflow.errors import LlsmflowError

if TYPE_CHECKING:
    import dask.array as da

#: axis order of the images written and read here (t and c optional when reading)
AXES = ("t", "c", "z", "y", "x")

_LENGTH_TO_UM = {
    "micrometer": 1.0,
    "nanometer": 1e-3,
    "angstrom": 1e-4,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
_TIME_TO_S = {"second": 1.0, "millisecond": 1e-3, "microsecond": 1e-6, "minute": 60.0, "hour": 3600.0}


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def _transforms(transforms: list[dict] | None, ndim: int) -> tuple[list[float], list[float]]:
    scale, translation = [1.0] * ndim, [0.0] * ndim
    for tr in transforms or []:
        if tr.get("type") == "scale" and "scale" in tr:
            scale = [float(v) for v in tr["scale"]]
        elif tr.get("type") == "translation" and "translation" in tr:
            translation = [float(v) for v in tr["translation"]]
    return scale, translation


def _is_connection_error(exc: BaseException) -> bool:
    """True for a server that does not answer (aiohttp, botocore and the OS name theirs differently)."""
    while exc is not None:
        if isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, FileNotFoundError):
            return True
        if "Connect" in type(exc).__name__ or "Timeout" in type(exc).__name__:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def read_ome_zarr(path: str | Path) -> tuple[da.Array, dict]:
    """Open an OME-Zarr image: level 0 as a lazy TCZYX dask array, plus its physical metadata.

    Images without a ``t`` or ``c`` axis get one of size 1. Lengths in other units are converted to µm and
    times to s.

    Parameters
    ----------
    path : str or Path
        The OME-Zarr image group (NGFF 0.4 or 0.5): a directory, or a URL (``https://…``; ``s3://…`` with
        s3fs installed) read through fsspec, which fetches the metadata now and only the chunks computed later.

    Returns
    -------
    data : dask.array.Array
        Level 0, axes (T, C, Z, Y, X).
    metadata : dict
        ``voxel_size_um`` (dz, dy, dx), ``time_interval_s`` (None without a ``t`` axis), ``channel_names``,
        ``wavelengths_nm`` (list or None), ``origin_um`` (z, y, x), ``ngff_version``, ``n_levels``,
        ``level_shapes`` and ``llsmflow`` (the stored attributes, ``{}`` if none).

    Raises
    ------
    LlsmflowError
        If the path is missing, not an OME-Zarr image, or lacks z, y and x axes.
    """
    import dask.array as da

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # as in the writer: ome_zarr 0.18 at import time
        from ome_zarr.format import FormatV05, format_from_version
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Multiscales, Reader

    remote = is_url(path)
    if remote:
        from llsmflow.archive.remote import filesystem

        filesystem(path)  # one clear line when fsspec or the protocol's package is missing
        path = str(path).rstrip("/")
    else:
        path = Path(path)
        if not path.is_dir():
            raise LlsmflowError("not found or not a directory; expected an OME-Zarr image", path)
    try:
        try:
            root_attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
        except FileNotFoundError:
            raise LlsmflowError("no zarr group metadata; expected an OME-Zarr image", redact(path)) from None
        # NGFF 0.5 nests its metadata under "ome"; 0.4 keeps it at the top level.
        ome = root_attrs["ome"] if isinstance(root_attrs.get("ome"), dict) else root_attrs
        multiscale = (ome.get("multiscales") or [{}])[0]
        version = str(ome.get("version") or multiscale.get("version") or "")
        # Tell ome-zarr-py the version we found, so it neither guesses nor logs a "version mismatch".
        location = parse_url(path, mode="r", fmt=format_from_version(version) if version else FormatV05())
        if location is None:
            raise LlsmflowError("no zarr group metadata; expected an OME-Zarr image", path)
        nodes = [n for n in Reader(location)() if n.load(Multiscales) is not None]
    except LlsmflowError:
        raise
    except Exception as exc:  # zarr/ome-zarr raise many types for corrupt or missing metadata
        if remote and _is_connection_error(exc):
            raise unreachable(path, exc) from exc
        where = redact(path) if remote else path
        raise LlsmflowError(f"cannot read as OME-Zarr ({type(exc).__name__}: {redact(exc)})", where) from exc
    if remote:
        path = redact(path)  # names it in the errors below, without credentials
    if not nodes:
        raise LlsmflowError("has no multiscales metadata; expected an OME-Zarr image", path)
    node = nodes[0]
    names, metadata = _metadata(
        root_attrs,
        node.metadata.get("axes") or [],
        node.metadata.get("coordinateTransformations"),
        node.metadata.get("channel_names"),
        [tuple(int(s) for s in d.shape) for d in node.data],
        path,
        location.version,
    )
    data = node.data[0]
    for i, axis in enumerate(AXES[:2]):
        if axis not in names:
            data = da.expand_dims(data, axis=i)
    return data, metadata


def _metadata(
    root_attrs: dict, axes, dataset_transforms, channel_names, level_shapes: list[tuple[int, ...]], path, version
) -> tuple[list[str], dict]:
    """The axis names and :func:`read_ome_zarr`'s metadata from the image's multiscales ``axes``, each
    level's ``coordinateTransformations``, the omero channel names (None without) and the levels' shapes."""
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    if (
        not set("zyx") <= set(names)
        or not set(names) <= set(AXES)
        or names != [a for a in AXES if a in names]
    ):
        raise LlsmflowError(
            f"has axes {names}; expected t, c, z, y, x (t and c optional) in that order", path
        )

    ome = root_attrs["ome"] if isinstance(root_attrs.get("ome"), dict) else root_attrs  # 0.5 nests under "ome"
    multiscale = (ome.get("multiscales") or [{}])[0]
    version = ome.get("version") or multiscale.get("version") or version
    all_transforms = dataset_transforms or [None]
    scale, translation = _transforms(all_transforms[0], len(names))
    global_scale, global_translation = _transforms(multiscale.get("coordinateTransformations"), len(names))
    scale = [s * g for s, g in zip(scale, global_scale, strict=True)]
    translation = [t * g + u for t, g, u in zip(translation, global_scale, global_translation, strict=True)]

    def factor(axis: str) -> float:
        unit = units[names.index(axis)]
        table = _TIME_TO_S if axis == "t" else _LENGTH_TO_UM
        if unit is None:
            return 1.0
        if unit not in table:
            raise LlsmflowError(f"axis {axis!r} has unit {unit!r}; expected one of {sorted(table)}", path)
        return table[unit]

    voxel = tuple(scale[names.index(a)] * factor(a) for a in "zyx")
    origin = tuple(translation[names.index(a)] * factor(a) for a in "zyx")
    dt = scale[names.index("t")] * factor("t") if "t" in names else None
    n_c = level_shapes[0][names.index("c")] if "c" in names else 1
    omero_channels = (ome.get("omero") or {}).get("channels") or []
    waves = [ch.get("emission_wavelength_nm") for ch in omero_channels]
    metadata = {
        "voxel_size_um": voxel,
        "time_interval_s": dt,
        "channel_names": list(channel_names or [f"channel_{i}" for i in range(n_c)]),
        "wavelengths_nm": waves if waves and all(w is not None for w in waves) else None,
        "origin_um": origin,
        "ngff_version": str(version),
        "n_levels": len(level_shapes),
        "level_shapes": level_shapes,
        "llsmflow": root_attrs.get("llsmflow", {}),
    }
    return names, metadata


def max_projection_yx(path: str | Path, t: int = 0, c: int = 0) -> tuple[np.ndarray, dict]:
    """Maximum projection along z of level 0 at timepoint ``t``, channel ``c`` of a local OME-Zarr image.

    Reads with zarr alone (no ome-zarr-py, no dask: the light path of a QC job), one block of the stored chunks'
    z × y size at a time, so memory stays at a block however large the image.

    Returns
    -------
    projection : numpy.ndarray
        (Y, X), the image's dtype.
    metadata : dict
        As :func:`read_ome_zarr` returns it.

    Raises
    ------
    LlsmflowError
        If the path is not a local OME-Zarr image (NGFF 0.4 or 0.5) with z, y and x axes, or ``t``/``c`` are
        out of range.
    """
    path = Path(path)
    if not path.is_dir():
        raise LlsmflowError("not found or not a directory; expected an OME-Zarr image", path)
    try:
        group = zarr.open_group(str(path), mode="r")
        root_attrs = group.attrs.asdict()
        ome = root_attrs["ome"] if isinstance(root_attrs.get("ome"), dict) else root_attrs
        multiscale = ome["multiscales"][0]
        datasets = multiscale["datasets"]
        arrays = [group[d["path"]] for d in datasets]
    except Exception as exc:  # zarr raises many types for missing or corrupt metadata
        raise LlsmflowError(f"cannot read as OME-Zarr ({type(exc).__name__}: {exc})", path) from exc
    channels = (ome.get("omero") or {}).get("channels")
    labels = None
    if isinstance(channels, list) and channels:  # as ome-zarr-py's OMERO spec: a label, else channel_<i>
        labels = [f"channel_{i}" if ch.get("label") is None else ch["label"] for i, ch in enumerate(channels)]
    transforms = [d.get("coordinateTransformations") for d in datasets]
    names, metadata = _metadata(
        root_attrs,
        multiscale.get("axes") or [],
        transforms if any(tr is not None for tr in transforms) else None,
        labels,
        [tuple(int(s) for s in a.shape) for a in arrays],
        path,
        "",
    )
    level = arrays[0]
    index: list = []
    for axis, value in (("t", t), ("c", c)):
        if axis in names:
            size = level.shape[names.index(axis)]
            if not 0 <= value < size:
                raise LlsmflowError(f"{axis} = {value} is out of range; expected 0 to {size - 1}", path)
            index.append(value)
        elif value != 0:
            raise LlsmflowError(f"{axis} = {value} is out of range; the image has no {axis} axis", path)
    n_z, n_y, n_x = level.shape[-3:]
    step_z, step_y = level.chunks[-3], level.chunks[-2]
    out = np.empty((n_y, n_x), dtype=level.dtype)
    for y0 in range(0, n_y, step_y):
        y1 = min(y0 + step_y, n_y)
        for z0 in range(0, n_z, step_z):
            block = np.asarray(level[(*index, slice(z0, min(z0 + step_z, n_z)), slice(y0, y1))]).max(axis=0)
            out[y0:y1] = block if z0 == 0 else np.maximum(out[y0:y1], block)
    return out, metadata
