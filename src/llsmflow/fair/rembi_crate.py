"""The dataset's REMBI metadata as schema.org / Bioschemas entities of the run's RO-Crate.

The validated REMBI (:func:`llsmflow.fair.rembi.rembi_json`) becomes, linked from the root dataset's ``about``:

- the study: a ``Dataset`` (``#rembi-study``) with ``name`` (the title), ``description``, ``keywords``,
  ``license`` (SPDX), ``author`` (the crate's ``Person`` entities), ``measurementTechnique`` (the FBbi imaging
  method as a ``DefinedTerm``), ``about`` its biosamples and ``mentions`` its protocols and analysis;
- each biosample: a Bioschemas ``BioSample`` (``name`` the biological entity) whose ``taxonomicRange`` is the
  organism, a ``Taxon`` identified by its NCBI taxon IRI; intrinsic, extrinsic and experimental variables as
  ``additionalProperty`` (``PropertyValue``);
- each specimen's preparation and growth protocol, and each image acquisition: Bioschemas ``LabProtocol``;
  the acquisition's instrument and settings as ``additionalProperty`` ``PropertyValue``s (the REMBI text, and
  the instrument facts of the run's acquisition record with their QUDT units: µm, s, degrees);
- the image analysis (and correlation, when given): a ``CreativeWork`` that ``mentions`` the main workflow.

Terms that the RO-Crate 1.1 context may not define (``Taxon``, ``BioSample``, ``LabProtocol``, …) are declared
inline in the crate's ``@context`` (:data:`TERMS`), as the Workflow Run terms are. A hand mapping: no maintained
package maps REMBI onto schema.org (rembi-mifa validates the REMBI model; the BioImage Archive's own crate
vocabulary, used by ``llsmflow export bia``, is ``bia:``, not schema.org).
"""

from __future__ import annotations

SCHEMA = "http://schema.org/"
BIOSCHEMAS = "https://bioschemas.org/"
TERMS = {
    "Taxon": SCHEMA + "Taxon",
    "taxonomicRange": BIOSCHEMAS + "taxonomicRange",
    "BioSample": BIOSCHEMAS + "BioSample",
    "LabProtocol": BIOSCHEMAS + "LabProtocol",
    "labEquipment": BIOSCHEMAS + "labEquipment",
    "DefinedTerm": SCHEMA + "DefinedTerm",
    "inDefinedTermSet": SCHEMA + "inDefinedTermSet",
    "termCode": SCHEMA + "termCode",
    "measurementTechnique": SCHEMA + "measurementTechnique",
    "additionalProperty": SCHEMA + "additionalProperty",
}
QUDT = "http://qudt.org/vocab/unit/"
OBO = "http://purl.obolibrary.org/obo/"
STUDY = "#rembi-study"
# instrument facts of the run's acquisition record: (key, name, QUDT unit)
ACQUISITION_FACTS = (
    ("angle_deg", "light-sheet angle to the coverslip", "DEG"),
    ("dz_um", "stage step", "MicroM"),
    ("dy_um", "camera pixel at the sample, y", "MicroM"),
    ("dx_um", "camera pixel at the sample, x", "MicroM"),
    ("time_interval_s", "time between timepoints", "SEC"),
    ("timepoints", "timepoints", "NUM"),
    ("deskewed_voxel_size_um", "deskewed voxel size (z, y, x)", "MicroM"),
)


def _ref(entity_id: str) -> dict:
    return {"@id": entity_id}


def _property(entity_id: str, key: str, name: str, value, unit: str | None = None) -> dict:
    entity = {"@id": entity_id, "@type": "PropertyValue", "propertyID": key, "name": name}
    entity["value"] = ", ".join(f"{v:g}" for v in value) if isinstance(value, list) else value
    if unit:
        entity["unitCode"] = QUDT + unit
    return entity


def _keywords(text) -> list[str]:
    if isinstance(text, list):
        return [str(k).strip() for k in text if str(k).strip()]
    return [k.strip() for k in str(text or "").split(",") if k.strip()]


def _license(value: str | None) -> dict | None:
    if not value:
        return None
    if value.startswith("http"):
        return {"@id": value, "@type": "CreativeWork", "name": value}
    return {
        "@id": f"https://spdx.org/licenses/{value}",
        "@type": "CreativeWork",
        "name": value,
        "identifier": value,
    }


def _variables(prefix: str, entry: dict) -> list[dict]:
    return [
        _property(f"{prefix}-{key.replace('_', '-')}", key, key.replace("_", " "), entry[key])
        for key in ("intrinsic_variables", "extrinsic_variables", "experimental_variables")
        if entry.get(key)
    ]


def _biosamples(rembi: dict) -> tuple[list[dict], list[dict]]:
    """``(biosample ids, entities)``: BioSamples, their taxa and variables."""
    samples, entities, taxa = [], [], {}
    for index, sample in enumerate(rembi.get("sample") or [], start=1):
        sample_id = f"#rembi-biosample-{index}"
        entity = {
            "@id": sample_id,
            "@type": "BioSample",
            "name": sample.get("biological_entity") or sample_id,
        }
        if sample.get("description"):
            entity["description"] = sample["description"]
        organism = sample.get("organism") or {}
        if organism.get("scientific_name"):
            taxon_id = organism.get("ncbi_taxon") or f"#rembi-taxon-{index}"
            taxon = taxa.setdefault(
                taxon_id, {"@id": taxon_id, "@type": "Taxon", "name": organism["scientific_name"]}
            )
            if organism.get("common_name"):
                taxon["alternateName"] = organism["common_name"]
            entity["taxonomicRange"] = _ref(taxon_id)
        variables = _variables(sample_id, sample)
        if variables:
            entity["additionalProperty"] = [_ref(v["@id"]) for v in variables]
        samples.append(entity)
        entities += variables
    return samples, entities + list(taxa.values())


def _technique(method: dict | None) -> dict | None:
    if not method or not method.get("value"):
        return None
    term_id = method.get("ontology_id") or "#rembi-imaging-method-" + method["value"].replace(" ", "-")
    term = {"@id": term_id, "@type": "DefinedTerm", "name": method["value"]}
    if method.get("ontology_name"):
        term["description"] = f"term of {method['ontology_name']}"
    code = (method.get("ontology_id") or "").rsplit("/", 1)[-1]
    if code:
        term["termCode"] = code
    if term_id.startswith(OBO) and "_" in code:  # an OBO term: its ontology's PURL names the term set
        term["inDefinedTermSet"] = {"@id": f"{OBO}{code.split('_')[0].lower()}.owl"}
    return term


def _acquisitions(rembi: dict, acquisition: dict | None) -> tuple[list[dict], list[dict], list[dict]]:
    """``(protocols, property values, imaging-method terms)`` of the REMBI image acquisitions."""
    protocols, values, terms = [], [], {}
    for index, entry in enumerate(rembi.get("image_acquisition") or [], start=1):
        protocol_id = f"#rembi-image-acquisition-{index}"
        props = []
        if entry.get("imaging_instrument"):
            props.append(
                _property(
                    f"{protocol_id}-instrument",
                    "imaging_instrument",
                    "imaging instrument",
                    entry["imaging_instrument"],
                )
            )
        if entry.get("image_acquisition_parameters"):
            props.append(
                _property(
                    f"{protocol_id}-parameters",
                    "image_acquisition_parameters",
                    "image acquisition parameters",
                    entry["image_acquisition_parameters"],
                )
            )
        for key, name, unit in ACQUISITION_FACTS if index == 1 else ():
            value = (acquisition or {}).get(key)
            if value is not None and value != []:
                props.append(_property(f"{protocol_id}-{key.replace('_', '-')}", key, name, value, unit))
        protocol = {
            "@id": protocol_id,
            "@type": "LabProtocol",
            "name": f"image acquisition {index}",
            "description": entry.get("image_acquisition_parameters") or "image acquisition",
            "additionalProperty": [_ref(p["@id"]) for p in props],
        }
        if entry.get("imaging_instrument"):
            protocol["labEquipment"] = entry["imaging_instrument"]
        term = _technique(entry.get("imaging_method"))
        if term:
            terms[term["@id"]] = term
            protocol["measurementTechnique"] = _ref(term["@id"])
        protocols.append(protocol)
        values += props
    return protocols, values, list(terms.values())


def _specimens(rembi: dict) -> list[dict]:
    protocols = []
    for index, specimen in enumerate(rembi.get("specimen") or [], start=1):
        for key, name in (
            ("sample_preparation", "specimen preparation"),
            ("growth_protocol", "growth protocol"),
        ):
            if specimen.get(key):
                protocols.append(
                    {
                        "@id": f"#rembi-specimen-{index}-{key.replace('_', '-')}",
                        "@type": "LabProtocol",
                        "name": f"{name} {index}",
                        "description": specimen[key],
                    }
                )
    return protocols


def _analyses(rembi: dict, workflow_id: str | None) -> list[dict]:
    found = []
    analysis = rembi.get("image_analysis") or {}
    if analysis.get("analysis_overview"):
        found.append(
            {
                "@id": "#rembi-image-analysis",
                "@type": "CreativeWork",
                "name": "image analysis",
                "description": analysis["analysis_overview"],
                **({"mentions": _ref(workflow_id)} if workflow_id else {}),
            }
        )
    correlation = rembi.get("image_correlation") or {}
    text = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in correlation.items() if v)
    if text:
        found.append(
            {
                "@id": "#rembi-image-correlation",
                "@type": "CreativeWork",
                "name": "image correlation",
                "description": text,
            }
        )
    return found


def rembi_entities(
    rembi: dict, author_ids: list[str], acquisition: dict | None = None, workflow_id: str | None = None
) -> list[dict]:
    """The JSON-LD entities of a validated REMBI (``rembi_json``), the study (:data:`STUDY`) first.

    ``author_ids``: the ``@id`` of the crate's ``Person`` entities for the study's authors; ``acquisition``:
    the run record's acquisition (instrument facts in µm, s, degrees); ``workflow_id``: the main workflow,
    which the analysis mentions."""
    study = rembi.get("study") or {}
    samples, sample_entities = _biosamples(rembi)
    protocols, values, terms = _acquisitions(rembi, acquisition)
    specimens = _specimens(rembi)
    analyses = _analyses(rembi, workflow_id)
    components = "; ".join(
        f"{c.get('name')}: {c.get('description')}"
        for c in rembi.get("study_components") or []
        if c.get("name")
    )
    entity = {
        "@id": STUDY,
        "@type": "Dataset",
        "name": study.get("title") or "REMBI study",
        "description": study.get("description") or components or "REMBI study",
        "keywords": _keywords(study.get("keywords")),
        "about": [_ref(s["@id"]) for s in samples],
        "mentions": [_ref(e["@id"]) for e in specimens + protocols + analyses],
        "measurementTechnique": [_ref(t["@id"]) for t in terms],
        "author": [_ref(a) for a in author_ids],
    }
    if components:
        entity["disambiguatingDescription"] = "study components: " + components
    license_entity = _license(study.get("license"))
    if license_entity:
        entity["license"] = _ref(license_entity["@id"])
    if rembi.get("study", {}).get("rembi_version"):
        entity["conformsTo"] = {"@id": "https://www.ebi.ac.uk/bioimage-archive/rembi-model-reference/"}
    entity = {k: v for k, v in entity.items() if v not in ([], None, "")}
    extra = [license_entity] if license_entity else []
    return [entity, *samples, *sample_entities, *specimens, *protocols, *values, *terms, *analyses, *extra]


def add_rembi(metadata: dict, rembi: dict, author_ids: list[str], acquisition: dict | None = None) -> dict:
    """Put the REMBI entities into a crate's JSON-LD ``metadata`` (the root dataset ``about`` the study; the
    terms in the ``@context``); returns ``metadata``. Entities already in the graph (a license, a taxon) are
    kept as they are."""
    graph = metadata["@graph"]
    root = next(e for e in graph if e["@id"] == "./")
    main = root.get("mainEntity", {}).get("@id") if isinstance(root.get("mainEntity"), dict) else None
    known = {e["@id"] for e in graph}
    graph.extend(e for e in rembi_entities(rembi, author_ids, acquisition, main) if e["@id"] not in known)
    root["about"] = _ref(STUDY)
    context = metadata.get("@context")
    if isinstance(context, list):
        terms = next((c for c in context if isinstance(c, dict)), None)
        if terms is None:
            terms = {}
            context.append(terms)
    elif isinstance(context, dict):
        terms = context
    else:
        terms = {}
        metadata["@context"] = [context, terms]
    for key, iri in TERMS.items():
        terms.setdefault(key, iri)
    return metadata
