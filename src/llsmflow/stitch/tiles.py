"""Tiles: the :class:`Tile` model (a ZYX volume, its nominal position, its validity mask) and the ways to get
tiles: from a deskewed OME-TIFF written by the workflow (:func:`tile_from_deskewed`) or from a mosaic table
(:func:`read_tiles_csv`); and the one voxel size of a mosaic (:func:`mosaic_voxel_size`).
"""

from __future__ import annotations

import csv
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llsmflow.errors import LlsmflowError
from llsmflow.io import read_volume
from llsmflow.stitch._tilefile import _ContiguousTiff, _is_zarr_path, _open_lazy, _volume_peek
from llsmflow.stitch.grid import _voxel3

__all__ = ["Tile", "mosaic_voxel_size", "read_tiles_csv", "tile_from_deskewed"]

_LOAD_LOCK = threading.Lock()


@dataclass
class Tile:
    """One tile of a mosaic: a ZYX volume and its nominal position.

    Parameters
    ----------
    key:
        Unique name of the tile (``read_tiles_csv`` uses the path as written in the CSV).
    origin_um:
        Nominal physical position ``(z, y, x)`` in µm of the centre of voxel ``(0, 0, 0)``.
    shape:
        ``(nz, ny, nx)`` in voxels. May be None when ``data`` is given; it is then taken from ``data``.
    data:
        The ZYX volume (a numpy array, or any array supporting numpy slicing such as a Zarr or dask array),
        or None to read ``path`` lazily on first use.
    path:
        An OME-TIFF/TIFF readable by :func:`llsmflow.io.read_volume`, or a ZYX Zarr array (a directory); used
        when ``data`` is None, read window by window (a ZYX TIFF through tifffile's Zarr interface, which
        decodes only the strips or tiles a window needs).
    voxel_size_um:
        ``(dz, dy, dx)`` in µm as recorded in the file, if known (informative; see :func:`mosaic_voxel_size`).
    valid:
        Where the volume holds data, or None (everywhere). Either a boolean array of the tile's shape (numpy,
        Zarr, dask: anything sliceable, read block by block) or a callable ``valid(slices) -> bool array``
        that returns the block ``slices`` (a tuple of three ``slice(start, stop)`` with int bounds), so that
        a large tile's mask need never exist whole (it must pickle for the ``"processes"`` scheduler of
        :func:`fuse_to_zarr`, e.g. a :func:`functools.partial`, not a lambda). A deskewed tile holds data
        only inside a parallelogram in (z, scan axis), see :func:`llsmflow.deskew.deskewed_valid_mask`; the
        wedges beside it are fill values that must neither drive registration nor enter the fused volume.
        Registration compares only voxels valid in both tiles, and fusion gives invalid voxels weight 0,
        ramping up over the blending width inside the valid region.
    """

    key: str
    origin_um: tuple[float, float, float]
    shape: tuple[int, int, int] | None
    data: np.ndarray | None = None
    path: str | None = None
    voxel_size_um: tuple[float, float, float] | None = None
    valid: np.ndarray | Callable[[tuple[slice, ...]], np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )
    _lazy: object = field(default=None, init=False, repr=False, compare=False)
    _lock: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self._lock = threading.Lock()
        self.key = str(self.key)
        try:
            origin = tuple(float(v) for v in self.origin_um)
        except (TypeError, ValueError):
            origin = ()
        if len(origin) != 3 or not all(math.isfinite(v) for v in origin):
            raise LlsmflowError(
                f"tile {self.key!r}: origin {self.origin_um!r} is invalid; "
                "expected three finite (z, y, x) µm",
                self.path,
            )
        self.origin_um = origin
        if self.data is not None:
            if getattr(self.data, "ndim", None) != 3:
                raise LlsmflowError(
                    f"tile {self.key!r}: data of shape {getattr(self.data, 'shape', None)} given; "
                    "expected 3-D ZYX",
                    self.path,
                )
            data_shape = tuple(int(n) for n in self.data.shape)
            if self.shape is not None and tuple(int(n) for n in self.shape) != data_shape:
                raise LlsmflowError(
                    f"tile {self.key!r}: shape {tuple(self.shape)} does not match "
                    f"its data's shape {data_shape}",
                    self.path,
                )
            self.shape = data_shape
        elif self.path is None:
            raise LlsmflowError(f"tile {self.key!r} has neither data nor a path; expected one of them")
        if self.shape is None:
            raise LlsmflowError(
                f"tile {self.key!r}: shape is missing; expected (nz, ny, nx) voxels", self.path
            )
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise LlsmflowError(
                f"tile {self.key!r}: shape {tuple(self.shape)} is invalid; "
                "expected three positive voxel counts",
                self.path,
            )
        self.shape = shape
        if self.valid is not None and not callable(self.valid):
            valid_shape = tuple(int(n) for n in getattr(self.valid, "shape", ()))
            if getattr(self.valid, "ndim", None) != 3 or valid_shape != shape:
                raise LlsmflowError(
                    f"tile {self.key!r}: validity mask of shape {valid_shape or None} given; "
                    f"expected a boolean array of the tile's shape {shape} or a callable",
                    self.path,
                )

    def __getstate__(self):  # an opened file handle does not travel to other processes; reopen there
        state = dict(self.__dict__)
        state["_lazy"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def array(self):
        """Return the tile's volume as an array supporting numpy slicing, opening ``path`` on first use.

        A ZYX OME-TIFF is opened through tifffile's Zarr interface so that slicing decodes only the strips
        or tiles needed, a Zarr array directly; any other layout is read whole with
        :func:`llsmflow.io.read_volume`.
        """
        if self.data is not None:
            return self.data
        with _LOAD_LOCK:
            if self._lazy is None:
                self._lazy = _open_lazy(Path(self.path), self.shape)
        return self._lazy

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """Read ``array()[slices]`` as a float32 numpy array."""
        arr = self.array()
        if self.data is None and not (isinstance(arr, _ContiguousTiff) or _is_zarr_path(self.path)):
            with self._lock:  # one tifffile handle per tile: serialise its reads
                block = np.asarray(arr[slices])
        else:
            block = np.asarray(arr[slices])
        return block.astype(np.float32, copy=False)

    def read_valid(self, slices: tuple[slice, ...]) -> np.ndarray | None:
        """The validity mask on ``slices`` as a bool numpy array, or None if the tile has no mask."""
        if self.valid is None:
            return None
        # explicit start and stop, as callables are promised
        slices = tuple(slice(*s.indices(n)[:2]) for s, n in zip(slices, self.shape, strict=True))
        expected = tuple(max(0, s.stop - s.start) for s in slices)
        block = self.valid(slices) if callable(self.valid) else self.valid[slices]
        block = np.asarray(block).astype(bool, copy=False)
        if block.shape != expected:
            raise LlsmflowError(
                f"tile {self.key!r}: validity mask gave a block of shape {block.shape} for {slices}; "
                f"expected {expected}",
                self.path,
            )
        return block


def tile_from_deskewed(
    path: str | Path, key: str, nominal_origin_um, origin_is_volume: bool = False, lazy: bool = False
) -> Tile:
    """A :class:`Tile` from a deskewed (or deskewed then deconvolved) OME-TIFF written by the workflow.

    The file's metadata (written by ``llsmflow deskew`` / the deskew rule) gives the offset of its first voxel
    from the raw stack's origin and the deskew parameters, from which the tile's validity mask (the
    parallelogram the stage scan imaged; the empty wedges are not data) is rebuilt.

    Parameters
    ----------
    path:
        The deskewed OME-TIFF.
    key:
        The tile's name.
    nominal_origin_um:
        The objective-frame position (z, y, x, µm) of the raw stack's origin, e.g. from the stage position;
        with ``origin_is_volume`` it is already the position of the deskewed volume's first voxel (as in
        ``tiles.csv``).
    origin_is_volume:
        See ``nominal_origin_um``.
    lazy:
        Leave the pixels on disk (``data=None``): they are then read window by window when used, as
        :func:`fuse_to_zarr` with a memory budget needs. By default the volume is read into memory, which
        suits registration (it reads each overlap several times).

    Returns
    -------
    Tile
        With ``path``, ``voxel_size_um`` from the file and, if the file records its deskew parameters, a
        validity mask. The mask is constant along the axis across the scan, and is stored as a broadcast view
        of one (z, scan axis) plane, so that it costs no memory per voxel.
    """
    from llsmflow.deskew.shear import deskewed_valid_mask
    from llsmflow.io import read_volume_description

    path = Path(path)
    if lazy:
        if not path.is_file():
            raise LlsmflowError("tile file not found; expected a deskewed OME-TIFF", path)
        shape, voxel = _volume_peek(path)
        data = None
    else:
        volume = read_volume(path)
        data, shape, voxel = volume.data, volume.data.shape, volume.voxel_size_um
    description = read_volume_description(path)
    offset = (0.0, 0.0, 0.0) if origin_is_volume else description.get("origin_offset_um", (0.0, 0.0, 0.0))
    deskew_params = description.get("deskew")
    if deskew_params and deskew_params.get("rotate"):
        return _tile_from_rotated(path, key, nominal_origin_um, origin_is_volume, data, shape, voxel, description)
    origin = tuple(float(a + b) for a, b in zip(nominal_origin_um, offset, strict=True))
    valid = None
    if deskew_params and "raw_shape_zyx" in description:
        scan_axis = deskew_params.get("scan_axis", "x")
        raw_shape = [int(n) for n in description["raw_shape_zyx"]]
        across = 1 if scan_axis == "x" else 2  # the axis along which the mask is constant
        one_plane = list(raw_shape)
        one_plane[across] = 1
        plane = deskewed_valid_mask(
            tuple(one_plane),
            deskew_params["dz_um"],
            deskew_params["dx_um"],
            deskew_params["angle_deg"],
            scan_axis=scan_axis,
            dy_um=deskew_params.get("dy_um"),
        )
        full_shape = list(plane.shape)
        full_shape[across] = raw_shape[across]
        if tuple(full_shape) != tuple(shape):
            raise LlsmflowError(
                f"deskew metadata gives a volume of shape {tuple(full_shape)} but the data are {tuple(shape)}; "
                "expected a file written by llsmflow deskew",
                path,
            )
        valid = np.broadcast_to(plane, tuple(full_shape))
    return Tile(
        key=key,
        origin_um=origin,
        shape=tuple(shape),
        data=data,
        path=str(path),
        voxel_size_um=voxel,
        valid=valid,
    )


def _tile_from_rotated(path, key, nominal_origin_um, origin_is_volume, data, shape, voxel, description) -> Tile:
    """:func:`tile_from_deskewed` for a volume deskewed and rotated to the coverslip frame (``deskew.rotate``).

    The nominal origin is the objective-frame position the ingest step computes from the stage position
    (:func:`llsmflow.deskew.stage_to_objective_um`); its inverse gives back the stage position, which *is*
    the coverslip-frame position (Z normal to the coverslip, Y and X the stage axes) whichever the scan axis.
    The file's ``origin_offset_um`` (coverslip frame) is then added. The validity mask is the rotated
    volume's (:func:`llsmflow.deskew.rotated_valid_mask`): its empty wedges are not data.
    """
    from llsmflow.deskew.frames import objective_to_coverslip_matrix
    from llsmflow.deskew.rotate import rotated_valid_mask

    params = description["deskew"]
    scan_axis = params.get("scan_axis", "x")
    if origin_is_volume:
        origin = tuple(float(v) for v in nominal_origin_um)
    else:
        rotated = objective_to_coverslip_matrix(params["angle_deg"]) @ np.asarray(nominal_origin_um, float)
        offset = description.get("origin_offset_um", (0.0, 0.0, 0.0))
        origin = tuple(float(a + b) for a, b in zip(rotated, offset, strict=True))
    valid = None
    if "raw_shape_zyx" in description:
        valid = rotated_valid_mask(
            tuple(int(n) for n in description["raw_shape_zyx"]),
            params["dz_um"],
            params["dx_um"],
            params["angle_deg"],
            dy_um=params.get("dy_um"),
            output_voxel_um=voxel[2] if voxel is not None else None,
            scan_axis=scan_axis,
        )
        if tuple(valid.shape) != tuple(shape):
            raise LlsmflowError(
                f"deskew metadata gives a rotated volume of shape {tuple(valid.shape)} but the data are "
                f"{tuple(shape)}; expected a file written by llsmflow deskew --rotate",
                path,
            )
    return Tile(
        key=key, origin_um=origin, shape=tuple(shape), data=data, path=str(path), voxel_size_um=voxel, valid=valid
    )


def read_tiles_csv(path: str | Path) -> list[Tile]:
    """Read a mosaic description: one tile per row, columns ``path,x_um,y_um,z_um``.

    Parameters
    ----------
    path:
        The CSV file. Tile paths may be absolute or relative to the CSV's directory. Other columns are
        ignored, but for an optional ``tile`` column naming each tile: names (rather than paths) key the
        registered positions in ``transforms.json``, so the positions registered at one timepoint apply to the
        files of every timepoint. ``x_um, y_um, z_um`` are the nominal stage positions (µm) of the centre of
        each tile's voxel (0, 0, 0).

    Returns
    -------
    list of Tile
        In file order, with ``key`` the tile name (else the path as written in the CSV), ``path`` the resolved
        file, ``shape`` and
        ``voxel_size_um`` read from the file's header (pixels are read lazily, later).

    Raises
    ------
    LlsmflowError
        If the CSV is missing or empty, a column is missing, a position is not a finite number, a tile path is
        listed twice, or a tile file is missing or neither a single-channel ZYX TIFF nor a ZYX Zarr array.
    """
    path = Path(path)
    if not path.is_file():
        raise LlsmflowError("tiles table not found; expected a CSV with columns path,x_um,y_um,z_um", path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LlsmflowError(
            f"cannot parse as CSV ({exc}); expected columns path,x_um,y_um,z_um", path
        ) from exc
    required = ["path", "x_um", "y_um", "z_um"]
    missing = [c for c in required if c not in columns]
    if missing:
        raise LlsmflowError(
            f"missing column(s) {', '.join(missing)} (found {', '.join(columns) or 'none'}); "
            "expected columns path,x_um,y_um,z_um",
            path,
        )
    if not rows:
        raise LlsmflowError("has no tile rows; expected at least one tile", path)
    tiles: list[Tile] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise LlsmflowError(f"line {line}: empty path; expected a tile file", path)
        key = row.get("tile") or row["path"]
        if key in seen:
            raise LlsmflowError(
                f"line {line}: tile {key!r} already listed on line {seen[key]}; expected unique tiles", path
            )
        seen[key] = line
        position = []
        for col in ("z_um", "y_um", "x_um"):
            try:
                value = float(row[col])
            except ValueError:
                value = float("nan")
            if not math.isfinite(value):
                raise LlsmflowError(f"line {line}: {col}={row[col]!r}; expected a finite number of µm", path)
            position.append(value)
        tile_path = Path(row["path"])
        if not tile_path.is_absolute():
            tile_path = path.parent / tile_path
        if not (tile_path.is_file() or _is_zarr_path(tile_path)):
            raise LlsmflowError(
                f"tile file not found (listed in {path}, line {line}); expected a TIFF volume", tile_path
            )
        shape, voxel = _volume_peek(tile_path)
        tiles.append(
            Tile(key=key, origin_um=tuple(position), shape=shape, path=str(tile_path), voxel_size_um=voxel)
        )
    return tiles


def mosaic_voxel_size(tiles: Sequence[Tile], voxel_size_um=None) -> tuple[float, float, float]:
    """Return the one voxel size ``(dz, dy, dx)`` in µm of a mosaic.

    ``voxel_size_um`` (an override, e.g. from the command line) wins; otherwise every tile must record the
    same voxel size in its file (equal to 0.1 %).
    """
    if voxel_size_um is not None:
        return _voxel3(voxel_size_um)
    sizes = [(t.key, t.voxel_size_um) for t in _check_tiles(tiles)]
    unknown = [k for k, v in sizes if v is None]
    if unknown:
        raise LlsmflowError(
            f"voxel size unknown for tile(s) {', '.join(unknown)}; "
            "expected it in the files or given explicitly"
        )
    first_key, first = sizes[0]
    for key, v in sizes[1:]:
        if not np.allclose(v, first, rtol=1e-3, atol=0):
            raise LlsmflowError(
                f"tile {key!r} has voxel size {tuple(v)} µm but {first_key!r} has {tuple(first)} µm; "
                "expected one voxel size for all tiles of a mosaic"
            )
    return _voxel3(first)


def _check_tiles(tiles: Sequence[Tile]) -> list[Tile]:
    tiles = list(tiles)
    if not tiles:
        raise LlsmflowError("no tiles given; expected at least one")
    keys = [t.key for t in tiles]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise LlsmflowError(f"tile key(s) {', '.join(dup)} repeated; expected unique keys")
    return tiles
