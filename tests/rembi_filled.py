"""A REMBI YAML filled in as a user would: every ``FILL IN`` of the template ``llsmflow init`` writes replaced.

Shared by the FAIR tests and bench/bench_cli_startup.py (``llsmflow export`` refuses a template still holding
``FILL IN`` values); not a test module."""

from __future__ import annotations

from pathlib import Path

import yaml

from llsmflow.fair.rembi import FILL


def fill_in(template: Path, out: Path, **study) -> Path:
    """A REMBI YAML with every ``FILL IN`` of ``template`` replaced as a user would (study fields overridable)."""
    data = yaml.safe_load(template.read_text(encoding="utf-8"))
    s = data["study"]
    s.update(
        title="Particle dynamics in a synthetic lattice light-sheet time-lapse",
        description="A synthetic acquisition with ground truth, processed end to end by llsmflow.",
        keywords="lattice light-sheet, particle tracking, synthetic",
    )
    s["authors"][0].update(
        first_name="Ada",
        last_name="Lovelace",
        email="ada@example.org",
        orcid="0000-0002-1825-0097",
        affiliation={"name": "Example Institute", "address": "Heidelberg, Germany"},
    )
    s.update(study)
    sample = data["sample"][0]
    sample["organism"].update(
        scientific_name="Homo sapiens", ncbi_taxon="http://purl.obolibrary.org/obo/NCBITaxon_9606"
    )
    sample["biological_entity"] = "HeLa cells"
    data["specimen"][0]["sample_preparation"] = "Cells grown on 5 mm coverslips, imaged live at 37 °C."
    if data["image_acquisition"][0]["imaging_instrument"].startswith(FILL):
        data["image_acquisition"][0]["imaging_instrument"] = "synthetic lattice light-sheet (llsmflow synth)"
    out.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out
