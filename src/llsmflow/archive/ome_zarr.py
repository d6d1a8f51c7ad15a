"""OME-Zarr images with physical metadata: writing (multiscale pyramid, channel colours, contrast
windows); reading back is :mod:`llsmflow.archive.read`.

An archive is one OME-Zarr image, axes ``t c z y x`` (time in seconds, space in micrometres), with a
multiscale pyramid, ``omero`` channel metadata (names, colours, contrast windows, emission wavelengths) and
the acquisition metadata and processing history under an ``"llsmflow"`` key of the root group's attributes.
NGFF 0.5 (zarr v3) is the default; NGFF 0.4 (zarr v2) stays selectable because Fiji/MoBIE cannot read
zarr v3 yet (field notes, "OME-Zarr").

Library used: **ome-zarr-py** (``ome_zarr``), the OME reference implementation, writes the NGFF metadata
and the arrays, so that the JSON follows the specification as that library implements it rather than as we
would hand-write it. In 0.18, :func:`ome_zarr.writer.write_image` is a thin wrapper around the
:class:`ome_zarr.OMEZarrImage` / :class:`ome_zarr.OMEZarrMultiscale` classes; we call those classes
directly because ``write_image`` cannot add an origin translation (its ``coordinate_transformations``
argument is deprecated and ignored) and derives each level's scale from the ratio of array shapes, which is
inexact for odd sizes. The multiscale metadata there is an ``ome_zarr_models`` pydantic model; we replace
each level's ``scale``/``translation`` in that model (and re-validate it) before ome-zarr-py writes
it. The ``omero`` block is validated with the ``ome_zarr_models`` ``Omero`` model and stored with
:func:`ome_zarr.writer.add_metadata`.

Pyramid levels are block means (``Methods.LOCAL_MEAN``, i.e. ``skimage.transform.downscale_local_mean``;
a trailing odd row/plane is dropped), cast back to the input dtype (integers truncate). A level of block
factor ``f`` has voxel size ``f·d`` and a translation of ``origin + (f - 1)·d/2`` so that voxel centres
line up with level 0. Writing goes from dask, chunk by chunk, into a temporary directory that is renamed
into place only when complete (:func:`llsmflow.io.atomic_output`); the chunks are computed on a private
thread pool that is drained before the temporary directory is removed on failure.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from dask.threaded import get as threaded_get

from llsmflow.archive.read import AXES
from llsmflow.errors import LlsmflowError, require_positive_voxel_size
from llsmflow.io import atomic_output

with warnings.catch_warnings():
    # ome_zarr.writer evaluates a deprecated ``Scaler()`` default argument at import time (0.18).
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr import OMEZarrImage, OMEZarrMultiscale
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.scale import Methods
    from ome_zarr.writer import add_metadata
from ome_zarr_models.common.omero import Omero
from ome_zarr_models.v05.coordinate_transformations import VectorScale, VectorTranslation

NGFF_VERSIONS = ("0.4", "0.5")
#: Stop adding pyramid levels once the largest lateral size of the coarsest level is below this.
MIN_LATERAL_PX = 64
#: Colours for channels without a wavelength (green, magenta first: distinguishable by most people).
DEFAULT_COLORS = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF8000", "0080FF", "FFFFFF")
#: Largest number of voxels per (t, c) volume read to estimate contrast windows.
_WINDOW_LEVEL_VOXELS = 1 << 24
_WINDOW_SAMPLE_VALUES = 1 << 22


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def wavelength_color(wavelength_nm: float) -> str:
    """Return a display colour (``RRGGBB``) for an emission wavelength in nm.

    Blue below 490 nm (DAPI, BFP), green to 560 nm (GFP, Alexa 488), orange to 600 nm (mScarlet, TMR),
    red to 650 nm (mCherry, Alexa 594), magenta beyond (Cy5, far red).
    """
    w = float(wavelength_nm)
    if w < 490:
        return "0000FF"
    if w < 560:
        return "00FF00"
    if w < 600:
        return "FFA500"
    if w < 650:
        return "FF0000"
    return "FF00FF"


def pyramid_factors(
    shape_zyx: Sequence[int], voxel_size_um: Sequence[float], n_levels: int | None = None
) -> list[tuple[int, int, int]]:
    """Cumulative ``(fz, fy, fx)`` block factors of each pyramid level, level 0 = ``(1, 1, 1)``.

    Each level halves y and x. It halves z too when that keeps the voxels closer to isotropic: when the
    current ``dz / dy`` ratio is below √2 (then ``2·dz`` is nearer to the new ``2·dy`` than ``dz`` is, on a
    log scale).
    Without ``n_levels``, levels are added until the largest lateral size is below :data:`MIN_LATERAL_PX`.

    Parameters
    ----------
    shape_zyx : sequence of int
        Level-0 shape ``(Z, Y, X)``.
    voxel_size_um : sequence of float
        Level-0 voxel size ``(dz, dy, dx)`` in µm.
    n_levels : int, optional
        Exact number of levels (1 = no pyramid).

    Returns
    -------
    list of tuple of int
        One ``(fz, fy, fx)`` per level.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    dz, dy, dx = (float(v) for v in voxel_size_um)
    factors = [(1, 1, 1)]
    while True:
        fz, fy, fx = factors[-1]
        ly, lx, lz = ny // fy, nx // fx, nz // fz
        if n_levels is None:
            if max(ly, lx) < MIN_LATERAL_PX:
                break
        elif len(factors) >= n_levels:
            break
        if ly < 2 and lx < 2:
            if n_levels is None:
                break
            raise LlsmflowError(
                f"n_levels={n_levels} is too many for a lateral size of {ny}x{nx} px; "
                f"expected at most {len(factors)}"
            )
        lateral = min(dy * fy, dx * fx)
        halve_z = lz >= 2 and (dz * fz) / lateral < math.sqrt(2.0)
        factors.append((fz * 2 if halve_z else fz, fy * 2 if ly >= 2 else fy, fx * 2 if lx >= 2 else fx))
    return factors


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _as_json(attributes: Mapping | None, path: Path) -> dict | None:
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise LlsmflowError(f"attributes of type {type(attributes).__name__} given; expected a dict", path)
    try:
        return json.loads(json.dumps(dict(attributes), default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise LlsmflowError(
            f"attributes are not JSON serialisable ({exc}); expected JSON values", path
        ) from exc


def _finite(values, what: str, n: int, path: Path) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise LlsmflowError(
            f"{what} {values!r} is not a sequence of numbers; expected {n} numbers", path
        ) from exc
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise LlsmflowError(f"{what} {values!r} is invalid; expected {n} finite numbers", path)
    return out


def _image_name(path: Path) -> str:
    name = path.name
    for suffix in (".zarr", ".ome"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or "image"


#: The multiscales' ``type`` and ``metadata`` (how the pyramid was made): the NGFF specification says each
#: SHOULD be there, and strict validators (ngff-zarr's ``validate(strict=True)``) require them.
PYRAMID_TYPE = "local_mean"
PYRAMID_METADATA = {
    "description": "block means over (fz, fy, fx) voxels; a trailing odd row or plane is dropped",
    "method": "skimage.transform.downscale_local_mean",
}


def _name_multiscales(group, name: str) -> None:
    """Set the multiscales' name: ome-zarr-models names it after the store written, here the temporary directory
    of :func:`atomic_output`, which made the archive differ from run to run. Also states how the pyramid was
    made (``type``, ``metadata``: :data:`PYRAMID_TYPE`, :data:`PYRAMID_METADATA`)."""
    attrs = group.attrs.asdict()
    key = "ome" if "ome" in attrs else None
    ome = attrs["ome"] if key else attrs
    for multiscale in ome.get("multiscales", []):
        multiscale["name"] = name
        multiscale.setdefault("type", PYRAMID_TYPE)
        multiscale.setdefault("metadata", dict(PYRAMID_METADATA))
    if key:
        group.attrs["ome"] = ome
    else:
        group.attrs["multiscales"] = ome.get("multiscales", [])


def _compressors(ngff_version: str):
    # Blosc-zstd with shuffle: good ratio on microscopy data at a moderate cost, readable everywhere.
    if ngff_version == "0.5":
        from zarr.codecs import BloscCodec

        return [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")]
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)


def _contrast_windows(group: zarr.Group, level_paths: list[str], dtype: np.dtype) -> list[dict]:
    """Contrast window per channel from the 0.1/99.9 percentiles of a subsample of the written data.

    Reads back the finest level whose (t, c) volume has at most 2**24 voxels, at up to three timepoints
    (first, middle, last), so the input graph is not recomputed and memory stays bounded.
    """
    chosen = level_paths[-1]
    for p in level_paths:
        if math.prod(group[p].shape[2:]) <= _WINDOW_LEVEL_VOXELS:
            chosen = p
            break
    arr = group[chosen]
    n_t, n_c = arr.shape[:2]
    timepoints = sorted({0, n_t // 2, n_t - 1})
    windows = []
    for c in range(n_c):
        values = np.concatenate([np.asarray(arr[t, c]).ravel() for t in timepoints])
        step = max(1, values.size // _WINDOW_SAMPLE_VALUES)
        values = values[::step].astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            start, end = (float(v) for v in np.percentile(values, [0.1, 99.9]))
            lo, hi = float(values.min()), float(values.max())
        else:
            start, end, lo, hi = 0.0, 1.0, 0.0, 1.0
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            lo, hi = float(info.min), float(info.max)
        if end <= start:
            end = start + 1.0
        windows.append({"min": min(lo, start), "max": max(hi, end), "start": start, "end": end})
    return windows


def _compute_and_wait(tasks: list) -> None:
    """Compute dask tasks on a private thread pool, and on failure wait for tasks still running.

    Dask's threaded scheduler re-raises the first failure at once while tasks already handed to the pool go on
    writing chunks; without waiting, they would recreate files in the temporary directory after
    :func:`atomic_output` removed it.
    """
    if not tasks:
        return
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="llsmflow-archive")
    try:
        # the threaded scheduler's function, not its name: given a name, dask imports distributed only to look
        # for a client (0.1-0.2 s per job), which this private pool does not use
        dask.compute(*tasks, scheduler=threaded_get, pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_ome_zarr(
    out_path: str | Path,
    image_tczyx,
    voxel_size_um: Sequence[float],
    time_interval_s: float,
    channel_names: Sequence[str],
    wavelengths_nm: Sequence[float] | None = None,
    ngff_version: str = "0.5",
    chunks_zyx: Sequence[int] = (32, 256, 256),
    n_levels: int | None = None,
    attributes: Mapping | None = None,
    origin_um: Sequence[float] = (0.0, 0.0, 0.0),
) -> Path:
    """Write a TCZYX image as a multiscale OME-Zarr archive, atomically.

    Parameters
    ----------
    out_path : str or Path
        Destination directory (conventionally ``<name>.ome.zarr``). Replaced only once the new archive is
        complete; an interrupted write leaves nothing at this path.
    image_tczyx : numpy.ndarray or dask.array.Array
        Image with axes (T, C, Z, Y, X); integer or floating point. A dask array is written chunk by chunk and
        never materialised whole.
    voxel_size_um : sequence of float
        ``(dz, dy, dx)`` of level 0 in µm.
    time_interval_s : float
        Time between timepoints in s (the ``t`` scale).
    channel_names : list of str
        One unique name per channel.
    wavelengths_nm : list of float, optional
        Emission wavelength per channel in nm; chooses the display colour and is stored in the ``omero``
        channel as ``emission_wavelength_nm``. ``None`` for a channel whose emission is unknown (default
        colour, no wavelength stored).
    ngff_version : {"0.5", "0.4"}
        "0.5" writes zarr v3; "0.4" writes zarr v2 (for Fiji/MoBIE).
    chunks_zyx : sequence of int
        Chunk shape in (Z, Y, X) (T and C chunks are 1), clipped to each level's shape.
    n_levels : int, optional
        Number of pyramid levels; by default levels are added until the coarsest is below 64 px laterally.
    attributes : dict, optional
        JSON metadata (acquisition metadata, processing history) stored under ``"llsmflow"`` in the root
        group's attributes. NumPy scalars/arrays and paths are converted.
    origin_um : sequence of float
        Physical position ``(z, y, x)`` in µm of the centre of voxel (0, 0, 0), written as a translation.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    LlsmflowError
        On invalid input (shape, dtype, sizes, names, version, attributes). An exception raised while
        computing the dask input propagates unchanged, after the temporary output is removed.

    Notes
    -----
    Chunks are computed on a private thread pool (``dask.config`` ``num_workers``, else one thread per CPU),
    not on a distributed client that may be active, so that a failure can wait for running tasks before the
    temporary directory is removed. Contrast windows are computed afterwards from the written data (the
    finest level with at most 2**24 voxels per (t, c), at up to three timepoints), so the input is computed
    only once.
    """
    out_path = Path(out_path)
    if isinstance(ngff_version, float):  # YAML reads ``ngff_version: 0.5`` as a number
        ngff_version = str(ngff_version)
    if ngff_version not in NGFF_VERSIONS:
        raise LlsmflowError(
            f"NGFF version {ngff_version!r} is not supported; expected one of {NGFF_VERSIONS}", out_path
        )
    if isinstance(image_tczyx, da.Array):
        image = image_tczyx
    else:
        image = np.asarray(image_tczyx)
    if image.ndim != 5:
        raise LlsmflowError(
            f"image of shape {tuple(image.shape)} given; expected 5-D (T, C, Z, Y, X)", out_path
        )
    if min(image.shape) < 1:
        raise LlsmflowError(
            f"image of shape {tuple(image.shape)} is empty; expected every axis >= 1", out_path
        )
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "uif":
        raise LlsmflowError(f"image has dtype {dtype}; expected an integer or floating point image", out_path)
    voxel = require_positive_voxel_size(voxel_size_um, out_path)
    if len(voxel) != 3:
        raise LlsmflowError(f"voxel size {voxel} µm given; expected three values (dz, dy, dx)", out_path)
    dz, dy, dx = voxel
    try:
        dt = float(time_interval_s)
    except (TypeError, ValueError) as exc:
        raise LlsmflowError(
            f"time interval {time_interval_s!r} is not a number; expected seconds > 0", out_path
        ) from exc
    if not (dt > 0 and math.isfinite(dt)):
        raise LlsmflowError(
            f"time interval {time_interval_s!r} s is invalid; expected a finite value > 0", out_path
        )
    n_t, n_c, n_z, n_y, n_x = (int(s) for s in image.shape)
    names = list(channel_names) if channel_names is not None else []
    if len(names) != n_c or not all(isinstance(n, str) and n for n in names):
        raise LlsmflowError(
            f"channel names {names!r} given for {n_c} channel(s); expected {n_c} non-empty strings", out_path
        )
    if len(set(names)) != len(names):
        raise LlsmflowError(f"channel names {names!r} repeat; expected unique names", out_path)
    waves = None
    if wavelengths_nm is not None:
        # an instrument may not know a channel's emission (Zeiss CZIs hold NaN for some): None stays None
        if isinstance(wavelengths_nm, str) or not isinstance(wavelengths_nm, Sequence):
            wavelengths_nm = [wavelengths_nm]  # named as not a sequence of n numbers below
        known = _finite(
            [w for w in wavelengths_nm if w is not None],
            "wavelengths (nm)",
            n_c - sum(w is None for w in wavelengths_nm),
            out_path,
        )
        if len(wavelengths_nm) != n_c or not all(w > 0 for w in known):
            raise LlsmflowError(
                f"wavelengths {list(wavelengths_nm)} nm are invalid; expected {n_c} positive values (None for "
                "an unknown one)",
                out_path,
            )
        values = iter(known)
        waves = [None if w is None else next(values) for w in wavelengths_nm]
    try:
        chunks = tuple(int(c) for c in chunks_zyx)
    except (TypeError, ValueError) as exc:
        raise LlsmflowError(
            f"chunks {chunks_zyx!r} are not integers; expected (z, y, x) sizes >= 1", out_path
        ) from exc
    if len(chunks) != 3 or min(chunks) < 1:
        raise LlsmflowError(
            f"chunks {chunks_zyx!r} are invalid; expected three sizes >= 1 (z, y, x)", out_path
        )
    if n_levels is not None and (
        isinstance(n_levels, bool) or not isinstance(n_levels, int | np.integer) or n_levels < 1
    ):
        raise LlsmflowError(f"n_levels={n_levels!r} is invalid; expected an integer >= 1", out_path)
    origin = _finite(origin_um, "origin (µm)", 3, out_path)
    llsm_attrs = _as_json(attributes, out_path)

    factors = pyramid_factors((n_z, n_y, n_x), (dz, dy, dx), None if n_levels is None else int(n_levels))
    base_chunks = (1, 1, min(chunks[0], n_z), min(chunks[1], n_y), min(chunks[2], n_x))
    if isinstance(image, da.Array):
        # "tasks": the chunks are computed on a private thread pool, never by a distributed client (whose "p2p"
        # rechunk dask would otherwise pick, importing distributed to look for one)
        with dask.config.set({"array.rechunk.method": "tasks"}):
            image = image.rechunk(base_chunks)
    else:
        image = da.from_array(image, chunks=base_chunks)

    single = OMEZarrImage(
        data=image,
        axes=list(AXES),
        scale={"t": dt, "c": 1.0, "z": dz, "y": dy, "x": dx},
        axes_units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
        name=_image_name(out_path),
    )
    multiscale = OMEZarrMultiscale(
        image=single,
        scale_factors=[{"z": fz, "y": fy, "x": fx} for fz, fy, fx in factors[1:]],
        method=Methods.LOCAL_MEAN,
    )
    # Exact block-mean geometry: scale f·d, translation origin + (f-1)·d/2 (voxel centres of level 0).
    datasets = []
    for dataset, (fz, fy, fx) in zip(multiscale.metadata.datasets, factors, strict=True):
        scale = [dt, 1.0, fz * dz, fy * dy, fx * dx]
        translation = [0.0, 0.0] + [
            o + (f - 1) * d / 2 for o, f, d in zip(origin, (fz, fy, fx), (dz, dy, dx), strict=True)
        ]
        datasets.append(
            dataset.model_copy(
                update={
                    "coordinateTransformations": (
                        VectorScale(type="scale", scale=scale),
                        VectorTranslation(type="translation", translation=translation),
                    )
                }
            )
        )
    # model_copy does not validate: validate the edited multiscale against the NGFF model before writing.
    edited = multiscale.metadata.model_copy(update={"datasets": tuple(datasets)})
    multiscale.metadata = type(edited).model_validate(edited.model_dump(by_alias=True, exclude_none=True))

    storage_options = []
    for img in multiscale.images:
        shape = img.data.shape
        level_chunks = (1, 1, min(chunks[0], shape[2]), min(chunks[1], shape[3]), min(chunks[2], shape[4]))
        storage_options.append({"chunks": level_chunks, "compressors": _compressors(ngff_version)})

    fmt = FormatV05() if ngff_version == "0.5" else FormatV04()
    with atomic_output(out_path) as tmp:
        # Arrays and NGFF metadata are created now; chunks are written when the delayed tasks run.
        tasks = multiscale.to_ome_zarr(
            str(tmp), storage_options=storage_options, version=ngff_version, compute=False
        )
        _compute_and_wait(tasks)
        group = zarr.open_group(str(tmp), mode="r+", zarr_format=fmt.zarr_format)
        level_paths = [d.path for d in multiscale.metadata.datasets]
        channels = []
        for c, (name, window) in enumerate(
            zip(names, _contrast_windows(group, level_paths, dtype), strict=True)
        ):
            channel = {
                "label": name,
                "active": True,
                "color": wavelength_color(waves[c])
                if waves and waves[c] is not None
                else DEFAULT_COLORS[c % len(DEFAULT_COLORS)],
                "window": window,
            }
            if waves and waves[c] is not None:
                channel["emission_wavelength_nm"] = waves[c]
            channels.append(channel)
        omero = Omero.model_validate({"channels": channels})
        add_metadata(group, {"omero": omero.model_dump(mode="json", exclude_none=True)}, fmt=fmt)
        _name_multiscales(group, _image_name(out_path))
        if llsm_attrs is not None:
            group.attrs["llsmflow"] = llsm_attrs
    return out_path
