"""FAIR hand-off: REMBI metadata, a BioImage Archive submission folder, an OMERO import plan.

Run level (beside :mod:`llsmflow.provenance`): it reads a run's results and provenance records and never
writes into them. Submodules:

``rembi``
    The REMBI template (instrument fields from the acquisition, the rest for the user to fill), read back and
    validated with the ``rembi-mifa`` models.
``results``
    What a run's results directory holds (archive, tracks tables, QC report, provenance), with checksums.
``bia``
    ``llsmflow export bia``: a BioImage Archive RO-Crate submission folder (file list TSV with sha256).
``workflowhub``
    ``llsmflow export workflowhub``: the run's crate as a ``.crate.zip``; an offline ``rocrate-validator`` cache.
``omero``
    ``llsmflow export omero``: the import plan as data, and the import through ``ezomero`` (optional).
``rembi_crate``
    The validated REMBI as schema.org/Bioschemas entities of the run's RO-Crate (study, biosamples, protocols).

Nothing is imported until a name is used.
"""

from __future__ import annotations

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "write_rembi_template",
            "rembi_template",
            "instrument_fields",
            "load_rembi",
            "validate_rembi",
            "key_values",
        ),
        "rembi",
    ),
    **dict.fromkeys(("ResultsFile", "results_inventory"), "results"),
    **dict.fromkeys(("export_bia", "bia_crate"), "bia"),
    **dict.fromkeys(("export_workflowhub", "seed_validator_cache"), "workflowhub"),
    **dict.fromkeys(("rembi_entities", "add_rembi"), "rembi_crate"),
    **dict.fromkeys(("omero_plan", "omero_import", "omero_settings", "check_reachable"), "omero"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
