"""The transforms file: registered tile positions as JSON (``transforms.json``), written and read back.

Its own module because the QC and archive jobs read it and nothing else: importing it costs json and numpy,
not the registration or fusion libraries (dask, Zarr, scikit-image, scipy).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.io import write_json
from llsmflow.stitch.grid import _voxel3

__all__ = ["positions_from_transforms", "read_transforms", "write_transforms"]


def write_transforms(path: str | Path, transforms: Mapping) -> Path:
    """Write a transforms dict (from :func:`register_tiles`) as JSON, atomically."""
    return write_json(path, dict(transforms))


def read_transforms(path: str | Path) -> dict:
    """Read and check a transforms JSON written by :func:`write_transforms`.

    Raises
    ------
    LlsmflowError
        If the file is missing, not JSON, or lacks ``voxel_size_um`` or a tile's ``origin_um``.
    """
    path = Path(path)
    if not path.is_file():
        raise LlsmflowError("transforms file not found; expected JSON written by llsmflow stitch", path)
    try:
        transforms = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlsmflowError(f"cannot parse as JSON ({exc}); expected a transforms file", path) from exc
    if not isinstance(transforms, dict) or not isinstance(transforms.get("tiles"), dict):
        raise LlsmflowError(
            "has no 'tiles' mapping; expected a transforms file written by llsmflow stitch", path
        )
    try:
        _voxel3(transforms.get("voxel_size_um"))
    except LlsmflowError as exc:
        raise LlsmflowError(f"'voxel_size_um': {exc.message}", path) from exc
    for key, entry in transforms["tiles"].items():
        origin = entry.get("origin_um") if isinstance(entry, dict) else None
        if (
            not isinstance(origin, list)
            or len(origin) != 3
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in origin)
        ):
            raise LlsmflowError(
                f"tile {key!r}: origin_um {origin!r} is invalid; expected [z, y, x] in µm", path
            )
    return transforms


def positions_from_transforms(transforms: Mapping) -> dict[str, tuple[float, float, float]]:
    """Tile key -> registered origin ``(z, y, x)`` µm, from a transforms dict."""
    return {k: tuple(float(v) for v in e["origin_um"]) for k, e in transforms["tiles"].items()}
