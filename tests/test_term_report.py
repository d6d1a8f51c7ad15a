"""The QC report at 1400 px in headless Chromium: nothing overflows, every projection has a scale bar whose
pixels match the data's voxel size, headings name the channels, the header counts the steps table's jobs."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llsmflow.io import read_volume
from llsmflow.qc.previews import SCALE_BAR_RGB, contrast_limits, read_panels
from llsmflow.run.steps import read_step_records, summarise_steps

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
WIDTH = 1400

_LAYOUT_PROBE = """
<script>
window.addEventListener("load", function () {
  var vw = document.documentElement.clientWidth;
  var wide = [];
  document.querySelectorAll("body *").forEach(function (el) {
    var box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > vw + 1 && !el.closest("details:not([open])")) {
      wide.push(el.tagName + "." + el.className + " right=" + Math.round(box.right));
    }
  });
  var tables = Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
    return [t.scrollWidth, t.clientWidth, Math.round(t.getBoundingClientRect().right)];
  });
  var cells = [];
  document.querySelectorAll("td, th").forEach(function (c) {
    if (c.scrollWidth > c.clientWidth + 1) { cells.push(c.textContent.slice(0, 40)); }
  });
  var images = Array.prototype.map.call(document.images, function (img) {
    return {kind: img.dataset.kind, panels: img.dataset.panels, bars: img.dataset.scaleBars,
            width: img.getBoundingClientRect().width};
  });
  var out = document.createElement("pre");
  out.id = "llsmflow-layout";
  out.textContent = JSON.stringify({viewport: vw, scrollWidth: document.documentElement.scrollWidth,
    wide: wide, tables: tables, cells: cells, images: images,
    h3: Array.prototype.map.call(document.querySelectorAll("h3"), function (h) { return h.textContent; }),
    header: document.querySelector("p.muted").textContent});
  document.body.appendChild(out);
});
</script>
"""


@pytest.fixture(scope="module")
def report_path(tiny_run) -> Path:
    path = tiny_run.run_dir / "results" / "tiny" / "qc" / "report.html"
    assert path.is_file(), "the workflow did not write results/tiny/qc/report.html"
    return path


@pytest.fixture(scope="module")
def layout(report_path, chromium, tmp_path_factory):
    """What Chromium lays out at 1400 px: widths, tables, images, headings; a screenshot is kept."""
    probe = tmp_path_factory.mktemp("report_layout") / "report-probe.html"
    probe.write_text(report_path.read_text(encoding="utf-8").replace("</body>", _LAYOUT_PROBE + "</body>"))
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio"]
    dom = subprocess.run(
        [*common, f"--window-size={WIDTH},1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = '<pre id="llsmflow-layout">'
    assert marker in dom.stdout, dom.stdout[-2000:]
    text = dom.stdout.split(marker, 1)[1].split("</pre>", 1)[0]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = subprocess.run(
        [*common, "--hide-scrollbars", f"--screenshot={ARTIFACTS / 'qc-report-1400.png'}"]
        + [f"--window-size={WIDTH},5000", report_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    import html

    return json.loads(html.unescape(text))


def test_nothing_overflows_at_1400_px(layout):
    assert layout["viewport"] >= WIDTH - 20
    assert layout["scrollWidth"] <= layout["viewport"], layout["wide"][:10]
    assert not layout["wide"], layout["wide"][:10]
    assert layout["tables"] and all(scroll <= client for scroll, client, _ in layout["tables"]), layout["tables"]
    assert all(right <= layout["viewport"] for _, _, right in layout["tables"])
    assert not layout["cells"], layout["cells"][:10]  # no cell's content runs out of it (the sha256 wraps)


def test_every_projection_has_a_scale_bar_and_headings_name_channels(layout, tiny_run):
    projections = [img for img in layout["images"] if img["kind"] in ("tile", "mosaic")]
    assert len(projections) == 2 * 2 + 1
    for img in projections:
        assert int(img["panels"]) > 0 and img["bars"] == img["panels"], img
        assert 0 < img["width"] <= layout["viewport"]
    acquisition = json.loads((tiny_run.run_dir / "work/tiny/acquisition.json").read_text())
    names = [c["name"] for c in acquisition["channels"]]
    tiles = [h for h in layout["h3"] if h.startswith("Tile ")]
    assert len(tiles) == 4 and all(any(name in h for name in names) for h in tiles), tiles
    assert not any("channel 0" in h.lower() or "channel 1" in h.lower() for h in layout["h3"]), layout["h3"]


def test_header_counts_the_jobs_of_the_steps_table(layout, tiny_run):
    """The header's jobs and compute time are the step summary's (the rows `llsmflow run` prints), over the
    step records the report was given (every job before it)."""
    steps = tiny_run.run_dir / "work/tiny/steps"
    records = [r for r in read_step_records(sorted(steps.rglob("*.json"))) if r["step"] != "qc_report"]
    summary = summarise_steps(records)
    jobs = sum(row["jobs"] for row in summary)
    compute = sum(row["seconds"] for row in summary)
    assert f"{jobs} jobs recorded before this report" in layout["header"], layout["header"]
    shown = f"{compute:.1f} s" if compute < 120 else f"{compute / 60:.1f} min"
    assert f"{shown} of compute" in layout["header"], layout["header"]


def _bar_run(pixels: np.ndarray, panel: dict) -> int:
    """Longest run of scale-bar-coloured pixels near the bar's row, inside the panel's image."""
    x0, x1 = (int(round(v)) for v in panel["image_px"])
    row = int(round(panel["bar_px"][2]))
    colour = np.abs(pixels[row - 3 : row + 4, x0 : x1 + 1].astype(int) - SCALE_BAR_RGB).sum(axis=2) < 40
    longest = 0
    for line in colour:
        padded = np.concatenate([[0], line.astype(int), [0]])
        edges = np.flatnonzero(np.diff(padded))
        if edges.size:
            longest = max(longest, int((edges[1::2] - edges[::2]).max()))
    return longest


def test_scale_bars_measure_the_voxel_size_and_ranges_the_data(tiny_run):
    """In the PNGs themselves: each panel's bar, measured in its pixels, is bar_um / pixel size image pixels
    long, the pixel size being the acquisition's (deskewing keeps the camera's dx and dy); the raw panel's
    display range is the raw stack's contrast limits."""
    qc = tiny_run.run_dir / "results/tiny/qc"
    acquisition = json.loads((tiny_run.run_dir / "work/tiny/acquisition.json").read_text())
    tiles = sorted(qc.glob("tile_*_ch*.png"))
    assert len(tiles) == 4
    for png in [*tiles, qc / "mosaic.png"]:
        panels = read_panels(png)
        pixels = np.asarray(Image.open(png).convert("RGB"))
        assert panels and all(p.get("bar_um") for p in panels), png
        for panel in panels:
            if png.name == "mosaic.png":
                column_um = acquisition["dx_um"]  # the fused grid keeps the deskewed x spacing
            else:
                column_um = acquisition["dy_um"] if "(ZY)" in panel["title"] else acquisition["dx_um"]
            assert panel["pixel_um"] == pytest.approx(column_um)
            width_px = panel["image_px"][1] - panel["image_px"][0]
            expected = panel["bar_um"] / column_um * width_px / panel["shape"][1]
            assert abs(_bar_run(pixels, panel) - expected) <= 2.5, (png.name, panel, _bar_run(pixels, panel))
        if png.name != "mosaic.png":
            tile, channel = png.stem[len("tile_") :].rsplit("_ch", 1)
            raw = next((tiny_run.acquisition / "raw").glob(f"*_ch{channel}_*_{tile}_0000t.tif"))
            yx = next(p for p in panels if p["title"].startswith("raw (skewed), max over z"))
            assert yx["range"] == pytest.approx(contrast_limits(read_volume(raw).data.max(axis=0)))
