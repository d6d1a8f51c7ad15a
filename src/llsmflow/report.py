"""Former home of the QC report, kept because the workflow snapshots inside older provenance crates import it.

The rendering is :mod:`llsmflow.qc.report`; the step-record readers are :mod:`llsmflow.run.steps` and the
provenance summary :mod:`llsmflow.provenance.record`. Older ``qc_report`` scripts call :func:`write_report`
without ``step_summary``; this module computes it for them, so the QC package itself reads nothing of the run.
"""

from __future__ import annotations

from llsmflow.provenance.record import provenance_summary
from llsmflow.qc.report import png_data_uri, read_manifest
from llsmflow.qc.report import render_report as _render_report
from llsmflow.qc.report import write_report as _write_report
from llsmflow.run.steps import parse_time, read_step_records, step_records_under, summarise_steps

__all__ = [
    "parse_time",
    "png_data_uri",
    "provenance_summary",
    "read_manifest",
    "read_step_records",
    "render_report",
    "step_records_under",
    "summarise_steps",
    "write_report",
]


def _with_summary(parts: dict) -> dict:
    if parts.get("step_summary") is None:
        parts["step_summary"] = summarise_steps(parts.get("step_records") or [])
    return parts


def render_report(**parts) -> str:
    """:func:`llsmflow.qc.report.render_report`, with the step summary computed when not given."""
    return _render_report(**_with_summary(parts))


def write_report(out_html, **parts):
    """:func:`llsmflow.qc.report.write_report`, with the step summary computed when not given."""
    return _write_report(out_html, **_with_summary(parts))
