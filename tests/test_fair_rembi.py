"""REMBI: the template written from an acquisition (synthetic and a real Zeiss CZI), validated with rembi-mifa."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llsmflow.errors import LlsmflowError
from llsmflow.fair.rembi import FILL, key_values, load_rembi, rembi_json, write_rembi_template
from llsmflow.ingest import read_acquisition
from tests.rembi_filled import fill_in

REAL = Path("/work/shared/data/real")
if not REAL.is_dir():
    REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

pytest.importorskip("rembi_mifa")


@pytest.fixture(scope="module")
def template(tiny_acquisition, tmp_path_factory) -> Path:
    acq = read_acquisition(tiny_acquisition / "raw")
    return write_rembi_template(acq, tmp_path_factory.mktemp("rembi") / "rembi.yaml", dataset="tiny")


def test_template_carries_the_acquisition_and_marks_the_rest(template, tiny_acquisition):
    acq = read_acquisition(tiny_acquisition / "raw")
    data = yaml.safe_load(template.read_text(encoding="utf-8"))
    image = data["image_acquisition"][0]
    assert image["imaging_method"]["ontology_id"] == "http://purl.obolibrary.org/obo/FBbi_00000369"
    text = image["image_acquisition_parameters"]
    assert f"{acq.angle_deg:g}° to the coverslip" in text and f"stage step {acq.dz_um:g} µm" in text
    for channel in acq.channels:
        assert f"excitation {channel['excitation_nm']:g} nm, emission {channel['emission_nm']:g} nm" in text
    assert f"{len(acq.timepoints)} timepoint(s) every {acq.time_interval_s:g} s" in text
    assert data["study_components"][0]["name"] == "tiny"
    assert data["study"]["title"].startswith(FILL) and data["sample"][0]["biological_entity"].startswith(FILL)


def test_template_from_a_real_zeiss_czi_names_the_instrument(tmp_path):
    if not (REAL / "LLS7_t2_ch3.czi").is_file():
        pytest.skip("real sample data not present")
    acq = read_acquisition(REAL, REAL / "LLS7_t2_ch3.czi")  # read in place
    data = yaml.safe_load(write_rembi_template(acq, tmp_path / "rembi.yaml").read_text(encoding="utf-8"))
    image = data["image_acquisition"][0]
    assert image["imaging_instrument"] == "Zeiss Lattice Lightsheet 7"
    text = image["image_acquisition_parameters"]
    assert "30° to the coverslip" in text and "stage step 0.3 µm along camera axis y" in text
    assert "LLS1_2 (excitation 561 nm, emission 596.5 nm)" in text and "every 3.54 s" in text


def test_unfilled_template_is_refused_with_the_field_named(template):
    with pytest.raises(LlsmflowError) as error:
        load_rembi(template)
    message = str(error.value)
    assert (
        message.startswith(f"{template}: study.title is still ") and f"{FILL}: the dataset's title" in message
    )
    assert message.endswith("expected the dataset's own value") and "\n" not in message


def test_filled_template_validates_and_keeps_an_existing_file(template, tmp_path, tiny_acquisition):
    filled = fill_in(template, tmp_path / "filled.yaml")
    study = load_rembi(filled)
    assert study.study.authors[0].orcid == "https://orcid.org/0000-0002-1825-0097"  # normalised by rembi-mifa
    data = rembi_json(study)
    assert data["study"]["rembi_version"] == "1.5"
    assert ("sample.0.organism.scientific_name", "Homo sapiens") in key_values(study)
    before = filled.read_bytes()
    write_rembi_template(read_acquisition(tiny_acquisition / "raw"), filled)
    assert filled.read_bytes() == before  # the user's answers are never overwritten


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": "too short"}, "study.title"),
        ({"private_until_date": "next year"}, "study.private_until_date"),
    ],
)
def test_invalid_rembi_is_one_line_naming_field_and_value(template, tmp_path, change, field):
    bad = fill_in(template, tmp_path / "bad.yaml", **change)
    with pytest.raises(LlsmflowError) as error:
        load_rembi(bad)
    message = str(error.value)
    assert message.startswith(f"{bad}: REMBI field {field} is {next(iter(change.values()))!r}")
    assert "expected a valid REMBI 1.5 value" in message and "\n" not in message


def test_bad_orcid_checksum_is_refused(template, tmp_path):
    bad = fill_in(template, tmp_path / "bad.yaml")
    data = yaml.safe_load(bad.read_text(encoding="utf-8"))
    data["study"]["authors"][0]["orcid"] = "0000-0002-1825-0098"  # last digit wrong
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(LlsmflowError, match=r"REMBI field study\.authors\.0\.orcid is '0000-0002-1825-0098'"):
        load_rembi(bad)
