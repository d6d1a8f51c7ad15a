"""Reading ``acquisition.json``: the generic acquisition metadata format, checked before anything uses it.

The file is read with a size cap, its types are checked with a JSON schema (:data:`ACQUISITION_SCHEMA`; JSON
Schema does not count ``true`` as a number, so ``"dz_um": true`` is refused instead of meaning 1 µm), and
what a schema cannot say is checked in code: the ``file_regex`` compiles and has the named groups ingest
needs, overrides have the right types, ranges whose messages name several values (voxel sizes). Every fault
is one :class:`~llsmflow.errors.LlsmflowError` naming the file, the field, the value and the expectation.

Fields (µm, s, degrees, nm): ``angle_deg``, ``dz_um`` (stage step), ``dx_um``, ``dy_um``, ``scan_axis``,
``time_interval_s``, ``timepoints``, ``camera_offset``, ``raw_shape_zyx``, ``channels`` (``index``, ``name``,
``excitation_nm``, ``emission_nm``, ``psf``, ``psf_voxel_size_um``), ``tiles`` (``ix``, ``iy``, ``iz``,
``stage_x_um``, ``stage_y_um``, ``stage_z_um``) and ``file_regex``. Other keys are kept as they are (the
archive records the whole file).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from llsmflow.errors import LlsmflowError

METADATA_NAME = "acquisition.json"
OVERRIDABLE = ("angle_deg", "dz_um", "dx_um", "dy_um", "time_interval_s", "scan_axis", "camera_offset")
# An acquisition.json of thousands of tiles is a few MB; anything far larger is not metadata.
MAX_METADATA_BYTES = 16 * 2**20
# Emission/excitation wavelengths: nm, from UV to near infrared (catches µm, 0.51, and Hz-like mistakes).
WAVELENGTH_RANGE_NM = (200, 2000)

_LENGTH = {"type": "number", "x-expected": "a length in µm (a number)"}
_STAGE = {"type": "number", "x-expected": "a stage position in µm (a number)"}
_INDEX = {"type": "integer", "minimum": 0, "x-expected": "a tile index (an integer >= 0)"}
_WAVELENGTH = {
    "type": "number",
    "minimum": WAVELENGTH_RANGE_NM[0],
    "maximum": WAVELENGTH_RANGE_NM[1],
    "x-expected": f"a wavelength in nm between {WAVELENGTH_RANGE_NM[0]} and {WAVELENGTH_RANGE_NM[1]}",
}

ACQUISITION_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "x-expected": "a JSON object of acquisition fields (angle_deg, dz_um, channels, …; see config/README.md)",
    "properties": {
        "format": {"type": "string", "x-expected": "text"},
        "instrument": {"type": "string", "x-expected": "text"},
        "scan": {"type": "string", "x-expected": "text ('stage')"},
        "scan_axis": {"enum": ["x", "y"], "x-expected": "'x' or 'y'"},
        "angle_deg": {"type": "number", "x-expected": "an angle in degrees (a number, 0 < |angle| < 90)"},
        "dz_um": _LENGTH,
        "dx_um": _LENGTH,
        "dy_um": _LENGTH,
        "time_interval_s": {"type": "number", "x-expected": "seconds between timepoints (a number > 0)"},
        "timepoints": {
            "type": "integer",
            "minimum": 1,
            "x-expected": "the number of timepoints acquired (an integer >= 1)",
        },
        "camera_offset": {
            "type": "number",
            "minimum": 0,
            "x-expected": "the camera's dark level in counts (a number >= 0)",
        },
        "raw_shape_zyx": {
            "type": "array",
            "minItems": 3,
            "maxItems": 3,
            "items": {"type": "integer", "minimum": 1, "x-expected": "a number of voxels (an integer >= 1)"},
            "x-expected": "three integers (planes, rows, columns)",
        },
        "channels": {
            "type": "array",
            "x-expected": "a list of channel entries (objects with psf, psf_voxel_size_um, emission_nm)",
            "items": {
                "type": "object",
                "x-expected": "a channel entry (an object with psf, psf_voxel_size_um, emission_nm)",
                "properties": {
                    "index": {
                        "type": "integer",
                        "x-expected": "the channel's position in the list (an integer)",
                    },
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "x-expected": "a channel name (non-empty text)",
                    },
                    "excitation_nm": _WAVELENGTH,
                    "emission_nm": _WAVELENGTH,
                    "psf": {
                        "type": "string",
                        "minLength": 1,
                        "x-expected": "a PSF file name relative to the raw directory (text)",
                    },
                    "psf_voxel_size_um": {
                        "type": "array",
                        "minItems": 3,
                        "maxItems": 3,
                        "items": {"type": "number", "x-expected": "a length in µm (a number)"},
                        "x-expected": "three lengths in µm [dz, dy, dx]",
                    },
                },
            },
        },
        "tiles": {
            "type": "array",
            "x-expected": "a list of tile entries (objects with ix, iy, iz, stage_x_um, stage_y_um, stage_z_um)",
            "items": {
                "type": "object",
                "x-expected": "a tile entry (an object with ix, iy, iz, stage_x_um, stage_y_um, stage_z_um)",
                "properties": {
                    "ix": _INDEX,
                    "iy": _INDEX,
                    "iz": _INDEX,
                    "stage_x_um": _STAGE,
                    "stage_y_um": _STAGE,
                    "stage_z_um": _STAGE,
                },
            },
        },
        "file_regex": {
            "type": "string",
            "x-expected": "a regular expression (text) with named groups channel and timepoint",
        },
    },
}

_JSON_TYPE = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "text",
    list: "a list",
    dict: "an object",
}


def describe_json(value) -> str:
    """``value`` as JSON (cut at 60 characters) and its JSON type: ``"zero" (text)``, ``true (a boolean)``."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > 60:
        text = text[:57] + "…"
    kind = "null" if value is None else _JSON_TYPE.get(type(value), type(value).__name__)
    return text if kind == "null" else f"{text} ({kind})"


def field_name(path) -> str:
    """A JSON path as a person writes it: ``channels[0].psf``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_acquisition_json(path: str | Path) -> dict:
    """Read and type-check an ``acquisition.json``; return its object (not yet merged with overrides).

    Raises
    ------
    LlsmflowError
        File missing, larger than :data:`MAX_METADATA_BYTES`, not UTF-8 JSON, or a field of the wrong type
        or out of its range: one line naming the file, the field, the value and the expectation.
    """
    from llsmflow.io import as_path  # a URL too (raw data where they live)

    path = as_path(path)
    if not path.is_file():
        raise LlsmflowError(
            "acquisition metadata file not found; expected a JSON file (see llsmflow synth)", path
        )
    size = path.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise LlsmflowError(
            f"is {size} bytes; expected acquisition metadata of at most {MAX_METADATA_BYTES} bytes", path
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except _NotJsonNumber as exc:
        raise LlsmflowError(
            f"holds {exc}, which is not a JSON number; expected finite numbers", path
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlsmflowError(f"is not valid JSON ({exc})", path) from exc
    except RecursionError:
        raise LlsmflowError(
            "nests too deeply to be acquisition metadata; expected a JSON object", path
        ) from None
    validate_acquisition_fields(meta, path)
    return meta


class _NotJsonNumber(ValueError):
    """``NaN``/``Infinity`` in the file: Python's parser accepts them, JSON does not."""


def _refuse_constant(name: str):
    raise _NotJsonNumber(name)


def validate_acquisition_fields(meta, path: Path) -> None:
    """Check ``meta`` against :data:`ACQUISITION_SCHEMA`; raise one line for the first fault found."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(ACQUISITION_SCHEMA)
    errors = sorted(
        validator.iter_errors(meta), key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path])
    )
    if not errors:
        return
    error = errors[0]
    expected = error.schema.get("x-expected", "a value as described in config/README.md")
    where = list(error.absolute_path)
    if not where:
        raise LlsmflowError(f"holds {describe_json(meta)}; expected {expected}", path)
    problem = {
        "type": "has the wrong type",
        "enum": "is not one of the allowed values",
        "minimum": "is too small",
        "maximum": "is too large",
        "minItems": f"has {len(error.instance) if isinstance(error.instance, list) else 0} item(s)",
        "maxItems": f"has {len(error.instance) if isinstance(error.instance, list) else 0} item(s)",
        "minLength": "is empty",
    }.get(error.validator, "is invalid")
    raise LlsmflowError(
        f"{field_name(where)} = {describe_json(error.instance)} {problem}; expected {expected}", path
    )


def check_overrides(overrides: dict | None) -> dict:
    """The overrides that replace metadata values (``None`` values dropped), with their types checked.

    Numbers must be real numbers (``True`` is not 1 µm), ``scan_axis`` ``'x'`` or ``'y'``; the config's schema
    checks the same for ``llsmflow run``, this checks callers of the library.
    """
    checked = {}
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise LlsmflowError(
                f"override {key!r} is not supported; expected one of {', '.join(OVERRIDABLE)}"
            )
        if value is None:
            continue
        if key == "scan_axis":
            if value not in ("x", "y"):
                raise LlsmflowError(f"override scan_axis = {value!r} is invalid; expected 'x' or 'y'")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise LlsmflowError(f"override {key} = {value!r} is not a number; expected a number")
        checked[key] = value
    return checked


def number(meta: dict, key: str, path: Path) -> float:
    """``meta[key]`` as a finite float (booleans refused), or one line naming ``path`` and the key."""
    if key not in meta or meta[key] is None:
        raise LlsmflowError(f"metadata key {key!r} is missing; expected a number", path)
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LlsmflowError(
            f"metadata {key} = {describe_json(value)} is not a number; expected a number", path
        )
    value = float(value)
    if not math.isfinite(value):
        raise LlsmflowError(f"metadata {key} = {value} is not finite; expected a finite number", path)
    return value


def compile_file_regex(meta: dict, path: Path) -> re.Pattern:
    """The metadata's ``file_regex``, compiled; it must have the named groups ``channel`` and ``timepoint``
    (and may have ``ix``, ``iy``, ``iz``; a missing one means index 0)."""
    text = meta.get("file_regex")
    if not text:
        raise LlsmflowError(
            "metadata has no file_regex; expected a regular expression with named groups channel and "
            "timepoint that maps stack file names to samples",
            path,
        )
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise LlsmflowError(
            f"file_regex = {describe_json(text)} is not a valid regular expression ({exc}); expected a Python "
            "regular expression with named groups channel and timepoint",
            path,
        ) from None
    lacking = [g for g in ("channel", "timepoint") if g not in pattern.groupindex]
    if lacking:
        raise LlsmflowError(
            f"file_regex = {describe_json(text)} has no named group {' or '.join(lacking)}; expected named "
            "groups channel and timepoint, e.g. (?P<channel>\\d+) and (?P<timepoint>\\d+)",
            path,
        )
    return pattern


def check_channels(channels: list, path: Path) -> None:
    """Channel entries: indices in order, names unique, an emission wavelength each (the archive's channel
    colours and metadata need it; excitation, when given, is checked by the schema)."""
    names = []
    for index, channel in enumerate(channels):
        if channel.get("index", index) != index:
            raise LlsmflowError(
                f"channels[{index}].index = {channel.get('index')!r}; expected {index} (entries in index "
                "order)",
                path,
            )
        channel.setdefault("name", f"ch{index}")
        if "emission_nm" not in channel:
            raise LlsmflowError(
                f"channels[{index}] has no emission_nm; expected the channel's emission wavelength in nm "
                f"(between {WAVELENGTH_RANGE_NM[0]} and {WAVELENGTH_RANGE_NM[1]})",
                path,
            )
        names.append(channel["name"])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise LlsmflowError(f"channel name(s) {repeated} repeat; expected a unique name per channel", path)
