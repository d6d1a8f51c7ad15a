"""The QC report of a run: one self-contained HTML file that opens offline.

:func:`write_report` assembles, for one dataset, the before/after maximum projections of every tile and
channel, the stitched mosaic with the registration quality of each tile pair, the tracks and MSD plots, a table
of run time, peak memory and backend per workflow step (from the step records, see
:class:`llsmflow.run.steps.StepRecorder`), and a provenance summary (workflow version and commit, software
versions, raw inputs with their sha256).

Images are embedded as base64 ``data:`` URIs and the style sheet is inline, so the report is ONE file with no
external resources: it can be mailed, archived beside the data, or opened on an offline acquisition PC. It is
written with the standard library's ``html.escape`` rather than a template engine (Jinja2 and friends) because
the page is a handful of tables and figures, and one dependency fewer is one less thing to break in a
container built years later. The step table is :func:`llsmflow.run.steps.summarise_steps` (shared with
``llsmflow run`` and ``llsmflow status``) and the provenance facts are
:func:`llsmflow.provenance.provenance_summary`; the caller passes them in, so this module renders and reads
nothing of the run itself (``llsmflow.report``, its former path, fills the summary in for older callers).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.progress import format_summary_seconds

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto;
       max-width: 1300px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
code.digest { word-break: break-all; display: inline-block; max-width: 34ch; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.5em 0 1.2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; } .bad { color: #b00020; font-weight: 600; }
.ok { color: #1b5e20; } .muted { color: #777; } nav a { margin-right: 1em; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; } .pair figure { flex: 1 1 45%; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.8em; white-space: pre-wrap; overflow-wrap: anywhere; }
code { font-size: 0.9em; }
"""


# -------------------------------------------------------------------------------------------------- provenance


def read_manifest(path: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` from a ``sha256sum``-style manifest; empty if the file is absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if name:
            entries[name.strip()] = digest.strip()
    return entries


# ------------------------------------------------------------------------------------------------------ HTML


def png_data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,…`` URI.

    Raises
    ------
    LlsmflowError
        If the file is missing or not a PNG.
    """
    path = Path(path)
    if not path.is_file():
        raise LlsmflowError("image not found; expected a PNG written by a QC step", path)
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise LlsmflowError("is not a PNG file; expected a PNG written by a QC step", path)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


#: the PNG text chunk in which :mod:`llsmflow.qc.previews` describes a preview's panels
PANELS_KEY = "llsmflow-panels"


def png_text(path: str | Path) -> dict[str, str]:
    """The text chunks (``tEXt``, ``zTXt``, ``iTXt``) of a PNG file, read with the standard library."""
    data = Path(path).read_bytes()
    texts, offset = {}, 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            texts[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            texts[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        elif kind == b"IEND":
            break
    return texts


def preview_panels(path: str | Path) -> list[dict]:
    """What a QC preview says it drew per panel: pixel size, scale bar (µm), display range; [] if nothing."""
    text = png_text(path).get(PANELS_KEY)
    try:
        panels = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []
    return [p for p in panels if isinstance(p, dict)]


def _intensity(value) -> str:
    value = float(value)
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3g}"


def _panels_caption(panels: list[dict]) -> str:
    """``scale bar 2 µm (yellow, lower right); display range … (black to white)`` of a preview's panels."""
    if not panels:
        return ""
    bars = sorted({p["bar_um"] for p in panels if p.get("bar_um")})
    parts = []
    if bars:
        where = "lower right of each panel" if len(panels) > 1 else "lower right"
        parts.append(f"Scale bar {' / '.join(f'{b:g}' for b in bars)} µm (yellow, {where})")
    ranges = [
        (f"{p.get('title', '').split(',')[0]} " if len(panels) > 1 else "")
        + f"{_intensity(p['range'][0])}–{_intensity(p['range'][1])}"
        for p in panels
        if p.get("range")
    ]
    if ranges:
        where = "upper left of each panel" if len(panels) > 1 else "upper left"
        parts.append(f"Display range, black to white ({where}): " + "; ".join(ranges))
    return ". " + ". ".join(parts) + "."


def _figure(path, caption: str, kind: str) -> str:
    panels = preview_panels(path)
    bars = sum(1 for p in panels if p.get("bar_um"))
    described = f' data-panels="{len(panels)}" data-scale-bars="{bars}"' if panels else ""
    return (
        f'<figure><img class="panel" data-kind="{_e(kind)}"{described} alt="{_e(caption)}" '
        f'src="{png_data_uri(path)}"><figcaption>{_e(caption + _panels_caption(panels))}</figcaption></figure>'
    )


def channel_names(acquisition: Mapping | None) -> dict[int, str]:
    """``{index: name}`` of the acquisition's channels, the name with its excitation when the name does not
    state it (``"GFP (488 nm)"``); empty without channel metadata."""
    names = {}
    for position, channel in enumerate((acquisition or {}).get("channels") or []):
        if not isinstance(channel, Mapping):
            continue
        index = int(channel.get("index", position))
        name = str(channel.get("name") or f"channel {index}")
        excitation = channel.get("excitation_nm")
        if excitation and f"{excitation:g}" not in name:
            name += f" ({excitation:g} nm)"
        names[index] = name
    return names


def _channel(names: Mapping[int, str], index) -> str:
    return names.get(int(index), f"channel {index}")


def _num(value, digits: int = 1) -> str:
    if value is None:
        return '<td class="num muted">–</td>'
    return f'<td class="num">{float(value):.{digits}f}</td>'


def _table(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _tiles_section(tile_pngs: list[tuple[str, int, Path]], names: Mapping[int, str]) -> str:
    parts = [
        '<h2 id="tiles">Tiles: before and after deskew and deconvolution</h2>',
        "<p>Maximum projections of each tile and channel at the reference timepoint: raw (skewed) stack, "
        "deskewed volume, deconvolved volume; top row along z (YX), bottom row along y (ZX), in physical "
        "proportions.</p>",
    ]
    for tile, channel, path in tile_pngs:
        name = _channel(names, channel)
        parts.append(f"<h3>Tile {_e(tile)}, {_e(name)}</h3>")
        parts.append(_figure(path, f"tile {tile}, {name}: raw, deskewed, deconvolved", "tile"))
    return "\n".join(parts)


def _stitch_section(mosaic_png, transforms: Mapping | None, min_quality: float | None) -> str:
    parts = ['<h2 id="stitching">Stitching</h2>']
    if mosaic_png is not None:
        parts.append(
            _figure(
                mosaic_png,
                "fused mosaic (maximum projection) with registered tile outlines; lines join registered "
                "pairs, labelled with their correlation quality",
                "mosaic",
            )
        )
    if not transforms:
        parts.append('<p class="muted">No transforms recorded.</p>')
        return "\n".join(parts)
    rows = []
    for name, entry in sorted(transforms.get("tiles", {}).items()):
        nominal = entry.get("nominal_origin_um") or [float("nan")] * 3
        origin = entry["origin_um"]
        correction = [o - n for o, n in zip(origin, nominal, strict=True)]
        reference = " (reference)" if name == transforms.get("reference") else ""
        rows.append(
            f"<tr><td>{_e(name)}{reference}</td>"
            + "".join(_num(v, 3) for v in origin)
            + "".join(_num(v, 3) for v in correction)
            + "</tr>"
        )
    parts.append("<h3>Registered tile positions (µm)</h3>")
    parts.append(_table(["tile", "z", "y", "x", "Δz from stage", "Δy from stage", "Δx from stage"], rows))
    pair_rows = []
    for pair in transforms.get("pairs", []):
        quality = float(pair.get("quality", float("nan")))
        low = min_quality is not None and not quality >= min_quality
        used = bool(pair.get("used", True))
        status = '<span class="ok">used</span>' if used else '<span class="bad">rejected</span>'
        shift = pair.get("shift_um") or [None] * 3
        pair_rows.append(
            f"<tr><td>{_e(pair.get('a'))}</td><td>{_e(pair.get('b'))}</td>"
            + f'<td class="num{" bad" if low else ""}">{quality:.3f}</td>'
            + "".join(_num(v, 3) for v in shift)
            + _num(pair.get("residual_um"), 3)
            + f"<td>{status}</td></tr>"
        )
    threshold = f" (minimum accepted quality {min_quality:g})" if min_quality is not None else ""
    parts.append(f"<h3>Registration quality of each overlapping pair{_e(threshold)}</h3>")
    if pair_rows:
        parts.append(
            _table(
                ["tile a", "tile b", "quality", "shift z", "shift y", "shift x", "residual (µm)", "status"],
                pair_rows,
            )
        )
    else:
        parts.append('<p class="muted">No overlapping pairs (single tile).</p>')
    return "\n".join(parts)


def _tracks_section(
    track_pngs: Mapping[int, tuple[Path, Path]], track_notes: Mapping[int, Mapping], names: Mapping[int, str]
) -> str:
    parts = ['<h2 id="tracks">Tracking</h2>']
    if not track_pngs:
        parts.append('<p class="muted">No channel tracked.</p>')
    for channel, (tracks_png, msd_png) in sorted(track_pngs.items()):
        notes = track_notes.get(channel) or {}
        facts = []
        if "tracks" in notes:
            facts.append(f"{int(notes['tracks'])} tracks, {int(notes.get('points', 0))} localisations")
        if notes.get("diffusion_um2_s") is not None:
            facts.append(
                f"D = {float(notes['diffusion_um2_s']):.3g} µm²/s ({int(notes.get('n_lags', 0))} lags)"
            )
        name = _channel(names, channel)
        parts.append(f"<h3>{_e(name[:1].upper() + name[1:] if name.startswith('channel ') else name)}</h3>")
        if facts:
            parts.append(f"<p>{_e('; '.join(facts))}</p>")
        parts.append('<div class="pair">')
        parts.append(_figure(tracks_png, f"{name}: tracks over the first frame's projection", "tracks"))
        parts.append(_figure(msd_png, f"{name}: ensemble mean squared displacement", "msd"))
        parts.append("</div>")
    return "\n".join(parts)


def _tracking_skipped_note(acquisition: Mapping) -> str:
    """Why no channel was tracked (one timepoint: ``tracking_skipped`` in the run's acquisition.json); ''
    when tracking ran."""
    reason = acquisition.get("tracking_skipped")
    return f'<p class="tracking-skipped"><strong>Tracking skipped:</strong> {_e(reason)}.</p>' if reason else ""


def _steps_section(records: list[dict], summary: list[dict]) -> str:
    parts = [
        '<h2 id="steps">Run time, memory and backend per step</h2>',
        "<p>From the step records under <code>work/&lt;dataset&gt;/steps/</code>. Total: sum of the jobs' run "
        "times; wall: first start to last end.</p>",
    ]
    rows = [
        f'<tr><td>{_e(s["step"])}</td><td class="num">{s["jobs"]}</td>'
        + _num(s["seconds"])
        + _num(s["max_seconds"])
        + _num(s["wall_seconds"], 0)
        + _num(s["peak_memory_mb"], 0)
        + f"<td>{_e(', '.join(s['backends']) or '–')}</td><td>{_e(', '.join(s['hosts']))}</td></tr>"
        for s in summary
    ]
    parts.append(
        _table(
            [
                "step",
                "jobs",
                "total (s)",
                "longest job (s)",
                "wall (s)",
                "peak memory (MiB)",
                "backend",
                "host",
            ],
            rows,
        )
    )
    job_rows = []
    for record in sorted(records, key=lambda r: (str(r.get("start", "")), r["step"])):
        wildcards = ", ".join(f"{k}={v}" for k, v in (record.get("wildcards") or {}).items())
        backend = (record.get("notes") or {}).get("backend", "")
        job_rows.append(
            f"<tr><td>{_e(record['step'])}</td><td>{_e(wildcards)}</td><td>{_e(record.get('start', ''))}</td>"
            + _num(record.get("seconds"), 2)
            + _num(record.get("peak_memory_mb"), 0)
            + f'<td class="num">{_e(record.get("threads", ""))}</td><td>{_e(backend)}</td></tr>'
        )
    parts.append(f"<details><summary>All {len(records)} jobs</summary>")
    parts.append(
        _table(["step", "wildcards", "start", "seconds", "peak memory (MiB)", "threads", "backend"], job_rows)
    )
    parts.append("</details>")
    return "\n".join(parts)


def _provenance_section(provenance: Mapping) -> str:
    workflow = provenance.get("workflow", {})
    commit = workflow.get("commit")
    version = f"llsmflow {workflow.get('version', '?')}"
    if commit:
        version += f", git commit {commit}" + (" (uncommitted changes)" if workflow.get("dirty") else "")
    else:
        version += ", not run from a git checkout"
    parts = [
        '<h2 id="provenance">Provenance</h2>',
        f'<p>Workflow: <span class="commit">{_e(version)}</span><br>'
        f"Python {_e(provenance.get('python', '?'))} on {_e(provenance.get('platform', '?'))}<br>"
        f"Report written {_e(provenance.get('created', ''))}. The full record, with the checksums of every "
        "output, is <code>provenance/run-record.json</code> beside this report's folder.</p>",
    ]
    packages = dict(provenance.get("packages") or {})
    parts.append("<h3>Software</h3>")
    parts.append(
        _table(
            ["package", "version"],
            [f"<tr><td>{_e(name)}</td><td>{_e(version)}</td></tr>" for name, version in packages.items()],
        )
    )
    environment = provenance.get("environment") or {}
    if environment:
        parts.append(
            _table(
                ["environment", "value"],
                [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in sorted(environment.items())],
            )
        )
    inputs = provenance.get("inputs") or []
    parts.append(f"<h3>Inputs ({len(inputs)} raw files)</h3>")
    parts.append(
        _table(
            ["file", "bytes", "sha256"],
            [
                f'<tr><td>{_e(Path(i["path"]).name)}</td><td class="num">{_e(i.get("bytes") or "–")}</td>'
                f'<td><code class="digest" title="{_e(i.get("sha256") or "")}">{_e(i.get("sha256") or "–")}'
                "</code></td></tr>"
                for i in inputs
            ],
        )
    )
    config = provenance.get("config") or {}
    parts.append("<details><summary>Configuration</summary>")
    parts.append(f"<pre>{_e(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre></details>")
    return "\n".join(parts)




def run_figures(step_records: list[dict], step_summary: list[dict]) -> str:
    """The header's job count and times, from the step summary the steps table shows (the same
    :func:`llsmflow.run.steps.summarise_steps` rows that ``llsmflow run`` prints): the jobs recorded before
    this report, their wall time (first start to last end) and their summed run time."""
    jobs = sum(int(row["jobs"]) for row in step_summary)
    compute = sum(float(row["seconds"] or 0.0) for row in step_summary)
    starts, ends = [], []
    for record in step_records:
        for key, into in (("start", starts), ("end", ends)):
            try:
                value = _dt.datetime.fromisoformat(str(record.get(key)))
            except ValueError:
                continue
            into.append(value if value.tzinfo else value.replace(tzinfo=_dt.UTC))
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    wall_text, compute_text = format_summary_seconds(wall), format_summary_seconds(compute)
    return f"{jobs} jobs recorded before this report, {wall_text} wall, {compute_text} of compute"


def render_report(
    dataset: str,
    tile_pngs: list[tuple[str, int, str | Path]],
    mosaic_png: str | Path | None,
    track_pngs: Mapping[int, tuple[str | Path, str | Path]],
    step_records: list[dict],
    provenance: Mapping,
    transforms: Mapping | None = None,
    min_quality: float | None = None,
    acquisition: Mapping | None = None,
    step_summary: list[dict] | None = None,
) -> str:
    """The report as one HTML string (images embedded); see :func:`write_report` for the parameters."""
    if step_summary is None:
        if step_records:
            raise TypeError("step_summary is required with step_records (llsmflow.run.steps.summarise_steps)")
        step_summary = []
    track_notes = {}
    for record in step_records:
        if record["step"] == "track" and "channel" in (record.get("wildcards") or {}):
            track_notes[int(record["wildcards"]["channel"])] = record.get("notes") or {}
    acquisition = acquisition or {}
    names = channel_names(acquisition)
    facts = [f"{len({t for t, _, _ in tile_pngs})} tiles"]
    if acquisition.get("channels"):
        facts.append(f"{len(acquisition['channels'])} channels")
    if acquisition.get("timepoints"):
        facts.append(f"{acquisition['timepoints']} timepoints")
    if acquisition.get("angle_deg") is not None:
        facts.append(f"sheet angle {acquisition['angle_deg']}°")
    facts.append(run_figures(step_records, step_summary))
    body = [
        f"<h1>llsmflow QC report: {_e(dataset)}</h1>",
        f'<p class="muted">{_e(", ".join(facts))}</p>',
        '<nav><a href="#tiles">Tiles</a><a href="#stitching">Stitching</a><a href="#tracks">Tracking</a>'
        '<a href="#steps">Steps</a><a href="#provenance">Provenance</a></nav>',
        _tiles_section([(t, c, Path(p)) for t, c, p in tile_pngs], names),
        _stitch_section(Path(mosaic_png) if mosaic_png else None, transforms, min_quality),
        _tracks_section({int(c): (Path(a), Path(b)) for c, (a, b) in track_pngs.items()}, track_notes, names),
        _tracking_skipped_note(acquisition),
        _steps_section(step_records, step_summary),
        _provenance_section(provenance),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>llsmflow QC report: {_e(dataset)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(out_html: str | Path, **parts) -> Path:
    """Write the self-contained QC report, atomically.

    Parameters
    ----------
    out_html : path
        Output file (``results/<dataset>/qc/report.html``).
    dataset : str
        Dataset name.
    tile_pngs : list of (tile, channel, png)
        Before/after projections of each tile and channel (:func:`llsmflow.qc.previews.save_projection_grid`).
    mosaic_png : path or None
        Mosaic with tile outlines (:func:`llsmflow.qc.previews.save_mosaic`).
    track_pngs : dict
        ``{channel: (tracks_png, msd_png)}``.
    step_records : list of dict
        Step records (:func:`llsmflow.run.steps.read_step_records`).
    provenance : dict
        From :func:`llsmflow.provenance.provenance_summary`; its packages are listed in their order.
    transforms : dict, optional
        The transforms of the stitch step (registered positions and pairs with their quality).
    min_quality : float, optional
        Pairs below it are flagged.
    acquisition : dict, optional
        Resolved acquisition metadata, for the header line.
    step_summary : list of dict, optional
        The step records summarised per step (:func:`llsmflow.run.steps.summarise_steps`); required when
        there are step records.
    """
    from llsmflow.io import atomic_output

    text = render_report(**parts)
    out_html = Path(out_html)
    with atomic_output(out_html) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return out_html
