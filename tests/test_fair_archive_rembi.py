"""REMBI in the archive: the archive step stores a filled-in, valid REMBI and says why it stores none otherwise."""

from __future__ import annotations

import pytest

from llsmflow.fair.archive_rembi import rembi_for_archive
from llsmflow.fair.rembi import write_rembi_template
from llsmflow.ingest import read_acquisition

pytest.importorskip("rembi_mifa")


@pytest.fixture()
def template(tiny_acquisition, tmp_path):
    return write_rembi_template(read_acquisition(tiny_acquisition / "raw"), tmp_path / "rembi.yaml", "tiny")


def test_a_filled_rembi_is_stored_as_json_values(template, tmp_path):
    from tests.rembi_filled import fill_in

    filled = fill_in(template, tmp_path / "filled.yaml")
    rembi, not_stored = rembi_for_archive(filled)
    assert not_stored is None
    assert rembi["study"]["title"] == "Particle dynamics in a synthetic lattice light-sheet time-lapse"
    assert rembi["study"]["authors"][0]["orcid"].endswith("0000-0002-1825-0097")
    # what the acquisition says is kept as the template filled it (the light-sheet angle of the synthetic data)
    assert "31.5" in str(rembi["image_acquisition"])


def test_an_unfilled_template_is_not_stored_and_the_reason_names_file_and_field(template):
    rembi, not_stored = rembi_for_archive(template)
    assert rembi is None
    assert not_stored.startswith("REMBI not stored in the archive:")
    assert str(template) in not_stored and "FILL IN" in not_stored


def test_no_rembi_file_configured_is_silent():
    assert rembi_for_archive(None) == (None, None)
