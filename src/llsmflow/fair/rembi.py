"""REMBI metadata of one dataset: a template with the instrument's fields filled in, read back and validated.

REMBI (Recommended Metadata for Biological Images; Sarkans et al. 2021, Nat. Methods 18:1418) is what the
BioImage Archive asks of a submission: study, biosample, specimen, image acquisition, image correlation and
image analysis. Part of it the instrument already says (the light-sheet geometry, voxel sizes, channels,
timing: :class:`llsmflow.ingest.model.Acquisition`, or the ``llsmflow.acquisition`` attributes that the
archive carries); the rest only the person who prepared the sample knows. :func:`write_rembi_template` writes
a small YAML with the first part filled in and every other field marked ``FILL IN: …``; :func:`load_rembi`
reads it back and validates it.

Validation is the ``rembi-mifa`` package's pydantic models (``rembi_mifa.rembi.RembiStudy``, REMBI 1.5), a
maintained implementation of the BioImage Archive's REMBI model reference, rather than a schema written
here: its field names are the YAML's keys, and it checks what a hand-written schema would miss (ORCID
checksums, e-mail addresses, the 25-character minimum of a study title). Errors become one line naming the
file, the field, the value and the expectation.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from llsmflow.errors import LlsmflowError

#: Marks a template value the user must replace; :func:`load_rembi` refuses a file that still has one.
FILL = "FILL IN"

#: FBbi (Biological Imaging Methods Ontology) term of every llsmflow acquisition.
IMAGING_METHOD = {
    "value": "light sheet fluorescence microscopy",
    "ontology_name": "Biological Imaging Methods Ontology (FBbi)",
    "ontology_id": "http://purl.obolibrary.org/obo/FBbi_00000369",
}

ANALYSIS_OVERVIEW = (
    "Processed with llsmflow {version}: raw stage-scan lattice light-sheet stacks were deskewed (and rotated to "
    "the coverslip frame), deconvolved with the measured PSF of each channel, registered and fused into one "
    "volume per channel and timepoint, written as OME-Zarr with sha256 checksums; diffraction-limited particles "
    "were detected and linked into tracks (trackpy), with mean squared displacements per track. The workflow, "
    "its configuration and every software version are recorded in the provenance RO-Crate deposited with the "
    "data."
)


def _facts(acquisition) -> dict:
    """The instrument facts of an :class:`~llsmflow.ingest.model.Acquisition` or of the archive's
    ``llsmflow.acquisition`` attributes (a mapping), in one shape."""
    if isinstance(acquisition, dict):
        a = acquisition
        return {
            "instrument": a.get("instrument") or "lattice light-sheet microscope",
            "angle_deg": a.get("angle_deg"),
            "dz_um": a.get("dz_um"),
            "dy_um": a.get("dy_um"),
            "dx_um": a.get("dx_um"),
            "scan_axis": a.get("scan_axis"),
            "time_interval_s": a.get("time_interval_s"),
            "timepoints": a.get("timepoints"),
            "channels": list(a.get("channels") or []),
            "tiles": len(a.get("tiles") or a.get("tile_origins_um") or []),
            "deskewed_voxel_size_um": a.get("deskewed_voxel_size_um"),
        }
    instrument = acquisition.instrument
    if instrument == "generic":  # acquisition.json: its own "instrument" field, else the user says
        instrument = (
            acquisition.metadata.get("instrument") or f"{FILL}: the microscope (its files do not name it)"
        )
    return {
        "instrument": instrument,
        "angle_deg": acquisition.angle_deg,
        "dz_um": acquisition.dz_um,
        "dy_um": acquisition.dy_um,
        "dx_um": acquisition.dx_um,
        "scan_axis": acquisition.scan_axis,
        "time_interval_s": acquisition.time_interval_s,
        "timepoints": acquisition.declared_timepoints or len(acquisition.timepoints),
        "channels": list(acquisition.channels),
        "tiles": len(acquisition.tiles),
        "deskewed_voxel_size_um": list(acquisition.deskewed_voxel_size_um),
    }


def _wave(value) -> str:
    return "unknown" if value is None else f"{float(value):g} nm"


def acquisition_parameters(acquisition) -> str:
    """REMBI ``image_acquisition_parameters``: the instrument's settings in one paragraph (µm, s, degrees)."""
    f = _facts(acquisition)
    channels = "; ".join(
        f"{c.get('name', c.get('index'))} (excitation {_wave(c.get('excitation_nm'))}, emission "
        f"{_wave(c.get('emission_nm'))})"
        for c in f["channels"]
    )
    parts = [
        f"Stage-scan lattice light-sheet acquisition; light sheet at {f['angle_deg']:g}° to the coverslip; "
        f"stage step {f['dz_um']:g} µm along camera axis {f['scan_axis']}",
        f"camera pixel at the sample {f['dy_um']:g} × {f['dx_um']:g} µm (y, x)",
        f"{len(f['channels'])} channel(s): {channels}",
        f"{f['timepoints']} timepoint(s) every {f['time_interval_s']:g} s",
        f"{f['tiles']} tile(s)",
    ]
    if f["deskewed_voxel_size_um"]:
        parts.append(
            "deskewed voxel size (z, y, x) "
            + " × ".join(f"{v:.4g}" for v in f["deskewed_voxel_size_um"])
            + " µm"
        )
    return "; ".join(parts) + "."


def instrument_fields(acquisition) -> dict:
    """The REMBI ``image_acquisition`` entry that the instrument's metadata gives."""
    return {
        "imaging_method": dict(IMAGING_METHOD),
        "imaging_instrument": _facts(acquisition)["instrument"],
        "image_acquisition_parameters": acquisition_parameters(acquisition),
    }


def rembi_template(acquisition, dataset: str | None = None) -> dict:
    """The REMBI mapping of a new dataset: instrument fields filled in, the rest ``FILL IN: …``."""
    from llsmflow import __version__

    today = dt.date.today()
    name = dataset or "dataset"
    return {
        "study": {
            "title": f"{FILL}: the dataset's title, at least 25 characters (often the paper's title)",
            "description": f"{FILL}: what was imaged and why, at least 25 characters (the abstract)",
            "private_until_date": today.replace(year=today.year + 1).isoformat(),
            "keywords": f"{FILL}: keywords separated by commas, e.g. lattice light-sheet, particle tracking",
            "license": "CC0-1.0",
            "authors": [
                {
                    "first_name": f"{FILL}: first name",
                    "last_name": f"{FILL}: last name",
                    "email": f"{FILL}: e-mail address",
                    "orcid": None,
                    "affiliation": {"name": f"{FILL}: institute", "address": f"{FILL}: city, country"},
                }
            ],
        },
        "study_components": [
            {
                "name": name,
                "description": "Lattice light-sheet time-lapse: deskewed, deconvolved and stitched volumes "
                "(OME-Zarr), particle tracks and a QC report, produced by llsmflow.",
            }
        ],
        "sample": [
            {
                "organism": {
                    "scientific_name": f"{FILL}: e.g. Homo sapiens",
                    "common_name": None,
                    "ncbi_taxon": f"{FILL}: e.g. http://purl.obolibrary.org/obo/NCBITaxon_9606",
                },
                "biological_entity": f"{FILL}: what is imaged, e.g. HeLa cells",
                "description": None,
                "intrinsic_variables": None,
                "extrinsic_variables": None,
                "experimental_variables": "time",
            }
        ],
        "specimen": [
            {
                "sample_preparation": f"{FILL}: how the sample was prepared for imaging",
                "growth_protocol": None,
            }
        ],
        "image_acquisition": [instrument_fields(acquisition)],
        "image_correlation": None,
        "image_analysis": {"analysis_overview": ANALYSIS_OVERVIEW.format(version=__version__)},
    }


HEADER = """\
# REMBI metadata of dataset {dataset} (https://www.ebi.ac.uk/bioimage-archive/rembi-help-overview/).
# Replace every value that starts with "{fill}"; null means "not given" (optional fields).
# image_acquisition was filled in from the instrument's files ({instrument}); check it.
# Used by `llsmflow export bia` and `llsmflow export omero` (docs/fair.md); checked with rembi-mifa (REMBI 1.5).
"""


def write_rembi_template(acquisition, path: str | Path, dataset: str | None = None) -> Path:
    """Write the REMBI template YAML of ``acquisition`` to ``path`` (atomically; an existing file is kept).

    Parameters
    ----------
    acquisition : Acquisition or dict
        What ``llsmflow init`` read (:class:`llsmflow.ingest.model.Acquisition`), or the archive's
        ``llsmflow.acquisition`` attributes.
    path : path
        The YAML to write; if it exists it is left as it is (the user may have filled it in).
    dataset : str, optional
        The dataset's name (the study component's name).

    Returns
    -------
    Path
        ``path``.
    """
    import yaml

    from llsmflow.io import atomic_output

    path = Path(path)
    if path.exists():
        return path
    template = rembi_template(acquisition, dataset)
    text = HEADER.format(
        dataset=dataset or "", fill=FILL, instrument=template["image_acquisition"][0]["imaging_instrument"]
    )
    text += yaml.safe_dump(template, sort_keys=False, allow_unicode=True, width=110)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _unfilled(value, where: str = ""):
    """The first (field path, value) still marked ``FILL IN``, else None."""
    if isinstance(value, str):
        return (where, value) if value.startswith(FILL) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _unfilled(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _drop_nulls(value):
    """Optional REMBI fields left ``null`` in the YAML are omitted (rembi-mifa's optional strings are
    ``str | None`` but its nested optional models are not)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def validate_rembi(data, source: str | Path):
    """``data`` (a mapping as read from the YAML) as a validated ``rembi_mifa.rembi.RembiStudy``; one line
    naming ``source``, the field, the value and the expectation otherwise."""
    try:
        import pydantic
        from rembi_mifa.rembi import RembiStudy
    except ImportError as exc:
        raise LlsmflowError(
            f"REMBI validation needs the rembi-mifa package ({exc}); expected `pip install rembi-mifa`",
            source,
        ) from None
    if not isinstance(data, dict):
        raise LlsmflowError(
            f"holds {type(data).__name__}; expected a REMBI mapping (study, sample, …)", source
        )
    unfilled = _unfilled(data)
    if unfilled:
        field, value = unfilled
        raise LlsmflowError(f"{field} is still {value!r}; expected the dataset's own value", source)
    try:
        return RembiStudy.model_validate(_drop_nulls(data))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = "missing" if error["type"] == "missing" else repr(value)[:80]
        raise LlsmflowError(
            f"REMBI field {field} is {shown}: {error['msg']}; expected a valid REMBI 1.5 value "
            "(https://www.ebi.ac.uk/bioimage-archive/rembi-model-reference/)",
            source,
        ) from None


def load_rembi(path: str | Path):
    """The REMBI YAML at ``path``, validated (``rembi_mifa.rembi.RembiStudy``).

    Raises
    ------
    LlsmflowError
        One line naming the file, the field, the value and the expectation: a missing file, a value still
        ``FILL IN: …``, or anything REMBI 1.5 rejects.
    """
    from llsmflow.run.config import load_yaml_file

    path = Path(path)
    if not path.is_file():
        raise LlsmflowError(
            "no REMBI file; expected the YAML that `llsmflow init` writes (rembi.yaml), filled in", path
        )
    return validate_rembi(load_yaml_file(path, what="REMBI file"), path)


def rembi_json(study) -> dict:
    """The validated REMBI as JSON values (as rembi-mifa serialises it: empty optional fields omitted)."""
    return study.model_dump(mode="json")


def key_values(study) -> list[tuple[str, str]]:
    """REMBI as flat (key, value) pairs, e.g. for OMERO map annotations: ``study.title``, ``sample.0.organism
    .scientific_name``, … (lists of authors numbered from 0)."""
    pairs: list[tuple[str, str]] = []

    def walk(value, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}.{i}")
        elif value is not None:
            pairs.append((where, str(value)))

    walk(rembi_json(study), "")
    return pairs
