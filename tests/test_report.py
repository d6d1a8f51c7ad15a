"""The QC report: one self-contained HTML file per run that renders offline in a real browser."""

import base64
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from llsmflow.errors import LlsmflowError
from llsmflow.qc.report import png_data_uri, render_report
from llsmflow.run.steps import parse_time, summarise_steps

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
TILES, CHANNELS, TIMEPOINTS = 2, 2, 3  # the tiny_run fixture
EXPECTED_IMAGES = TILES * CHANNELS + 1 + 2 * CHANNELS  # tile panels, mosaic, tracks + MSD per channel


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.scripts, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag in ("link", "iframe", "object", "embed", "source", "video", "audio"):
            self.links.append((tag, attrs))
        if tag == "script":
            self.scripts.append(attrs)
        for name in ("href", "src", "srcset", "poster"):
            if attrs.get(name) and not attrs[name].startswith(("#", "data:image/png;base64,")):
                self.links.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path):
    collector = _Collector()
    collector.feed(Path(path).read_text(encoding="utf-8"))
    collector.text = " ".join(" ".join(collector.text).split())
    return collector


@pytest.fixture(scope="module")
def report(tiny_run):
    path = tiny_run.run_dir / "results" / "tiny" / "qc" / "report.html"
    assert path.is_file(), "the workflow did not write results/tiny/qc/report.html"
    return path, _parse(path)


def test_report_is_self_contained(report):
    path, page = report
    assert not page.links, f"external or non-PNG resources: {page.links[:3]}"
    assert not page.scripts
    assert "url(" not in path.read_text(encoding="utf-8")  # no CSS fetches either
    assert len(page.images) == EXPECTED_IMAGES
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)


def test_report_embeds_every_qc_image_exactly(report, tiny_run):
    """Each figure is the PNG the QC steps wrote, byte for byte: tile panels, mosaic, tracks and MSD."""
    _, page = report
    results = tiny_run.run_dir / "results" / "tiny"
    embedded = [base64.b64decode(img["src"].split(",", 1)[1]) for img in page.images]
    expected = sorted((results / "qc").glob("tile_*.png")) + [results / "qc" / "mosaic.png"]
    expected += [
        results / "tracks" / f"ch{c}_{kind}.png" for c in range(CHANNELS) for kind in ("tracks", "msd")
    ]
    assert len(expected) == EXPECTED_IMAGES
    assert sorted(hashlib.sha256(b).hexdigest() for b in embedded) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in expected
    )
    kinds = [img["data-kind"] for img in page.images]
    assert kinds.count("tile") == TILES * CHANNELS and kinds.count("mosaic") == 1
    assert kinds.count("tracks") == CHANNELS and kinds.count("msd") == CHANNELS


def test_report_tables_match_the_run(report, tiny_run):
    """Registration quality, step counts and provenance in the report equal the run's own records."""
    _, page = report
    run_dir = tiny_run.run_dir
    transforms = json.loads((run_dir / "work/tiny/stitch/transforms.json").read_text())
    assert transforms["pairs"]
    for pair in transforms["pairs"]:
        assert f"{pair['a']} {pair['b']} {pair['quality']:.3f}" in page.text
    steps = run_dir / "work/tiny/steps"
    for step, jobs in (
        ("deskew_deconvolve", TIMEPOINTS),  # a job per timepoint
        ("fuse", TIMEPOINTS),  # a job per timepoint, its channels one after the other
        ("track", 2),
    ):
        assert len(list((steps / step).glob("*.json"))) == jobs
        assert f"{step} {jobs} " in page.text, step
    # a fuse job's record: one entry per channel, each channel's own store, in channel order
    fuse = json.loads((steps / "fuse" / "t0000.json").read_text())
    stores = [f"ch{c}-t0000.zarr" for c in range(CHANNELS)]
    assert [(v["channel"], Path(v["output"]).name) for v in fuse["volumes"]] == list(enumerate(stores))
    assert [Path(o).name for o in fuse["outputs"]] == stores and fuse["notes"]["channels"] == CHANNELS
    assert "cpu" in page.text  # the deconvolution backend that ran
    # provenance: the same commit and versions as the run record, raw inputs with their true sha256
    record = json.loads((run_dir / "results/tiny/provenance/run-record.json").read_text())
    if record["workflow"].get("commit"):
        assert f"git commit {record['workflow']['commit']}" in page.text
    assert f"numpy {record['software']['packages']['numpy']}" in page.text
    raw = sorted((tiny_run.acquisition / "raw").glob("Scan_*.tif"))
    assert raw
    for file in raw[:3] + [tiny_run.acquisition / "raw" / "acquisition.json"]:
        assert (
            f"{file.name} {file.stat().st_size} {hashlib.sha256(file.read_bytes()).hexdigest()}" in page.text
        )


def test_report_is_checksummed_by_provenance(tiny_run):
    """The report is built before the run record, so the record and the manifest cover it."""
    run_dir = tiny_run.run_dir
    record = json.loads((run_dir / "results/tiny/provenance/run-record.json").read_text())
    outputs = {e["path"]: e["sha256"] for e in record["outputs"]}
    report = run_dir / "results/tiny/qc/report.html"
    assert outputs["results/tiny/qc/report.html"] == hashlib.sha256(report.read_bytes()).hexdigest()


_CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var widths = Array.prototype.map.call(document.images, function (img) {
    return img.complete ? img.naturalWidth : -1;
  });
  var out = document.createElement("pre");
  out.id = "llsmflow-image-check";
  out.textContent = JSON.stringify(widths);
  document.body.appendChild(out);
});
</script>
"""


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    """Every image decodes in a real browser (naturalWidth > 0); a screenshot is kept in test-artifacts/."""
    path, _ = report
    # the check script goes into a copy: the report itself carries no JavaScript
    probe = tmp_path / "report-probe.html"
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", _CHECK_SCRIPT + "</body>"))
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio"]
    dom = subprocess.run(
        common + ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = '<pre id="llsmflow-image-check">'
    assert marker in dom.stdout, dom.stdout[-2000:]
    widths = json.loads(dom.stdout.split(marker, 1)[1].split("</pre>", 1)[0])
    assert len(widths) == EXPECTED_IMAGES
    assert all(w > 0 for w in widths), widths

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "qc-report.png"
    screenshot.unlink(missing_ok=True)
    shot = subprocess.run(
        common
        + ["--hide-scrollbars", f"--screenshot={screenshot}", "--window-size=1300,4200", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.shape == (4200, 1300)
    assert pixels.std() > 20  # not a blank page: figures and text were drawn
    print(f"\nQC report screenshot kept at {screenshot}", file=sys.stderr)
    shutil.copy(path, ARTIFACTS / "qc-report.html")


def test_snakemake_report_builds(tiny_run, tmp_path):
    """`snakemake --report` collects the QC figures with their captions after a run."""
    out = tmp_path / "snakemake-report.zip"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(tiny_run.config_path),
            "--report",
            str(out),
        ],
        cwd=tiny_run.run_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = zipfile.ZipFile(out).namelist()
    for expected in ("report.html", "mosaic.png", "ch0_msd.png", "ch1_tracks.png"):
        assert any(n.endswith(expected) for n in names), (expected, names[:20])
    assert sum(n.endswith(".png") and "/tile_" in n for n in names) >= TILES * CHANNELS


def test_progress_of_long_steps_is_logged(tiny_run):
    logs = tiny_run.run_dir / "work/tiny/logs"
    decon = (logs / "deskew_deconvolve" / "t0000.log").read_text()
    assert all(f"iteration {k}/3 ({round(100 * k / 3)} %" in decon for k in (1, 2, 3))
    fuse = (logs / "fuse" / "t0000.log").read_text()
    # throttled: the first chunk and the last one are always logged, with the share done
    assert "fused chunk 1/" in fuse
    total = int(fuse.split("fused chunk 1/")[1].split()[0])
    assert f"fused chunk {total}/{total} (100 %" in fuse
    track = (logs / "track" / "ch0.log").read_text()
    assert f"detected frame 1/{TIMEPOINTS} (" in track
    assert f"detected frame {TIMEPOINTS}/{TIMEPOINTS} (100 %" in track


# ---------------------------------------------------------------------------------------------- units


def _record(step, start, seconds, memory, backend=None, **wildcards):
    end = dt.datetime.fromisoformat(start) + dt.timedelta(seconds=seconds)
    record = {
        "step": step,
        "wildcards": wildcards,
        "start": start,
        "end": end.isoformat(),
        "seconds": seconds,
        "peak_memory_mb": memory,
    }
    if backend:
        record["notes"] = {"backend": backend}
    return record


def test_summarise_steps_adds_times_and_keeps_order():
    records = [
        _record("deconvolve", "2026-01-01T10:00:05+00:00", 4.0, 300.0, "cpu", sample="a"),
        _record("deskew", "2026-01-01T10:00:00+00:00", 1.5, 100.0, sample="a"),
        _record("deconvolve", "2026-01-01T10:00:07+00:00", 6.0, 500.0, "cupy", sample="b"),
        _record("deskew", "2026-01-01T10:00:01+00:00", 2.5, 120.0, sample="b"),
    ]
    rows = summarise_steps(records)
    assert [r["step"] for r in rows] == ["deskew", "deconvolve"]
    deskew, decon = rows
    assert (deskew["jobs"], deskew["seconds"], deskew["max_seconds"]) == (2, 4.0, 2.5)
    assert deskew["wall_seconds"] == pytest.approx(3.5)  # 10:00:00 → 10:00:03.5
    assert decon["wall_seconds"] == pytest.approx(8.0) and decon["peak_memory_mb"] == 500.0
    assert decon["backends"] == ["cpu", "cupy"]
    since = parse_time("2026-01-01T10:00:02+00:00")
    assert [(r["step"], r["jobs"]) for r in summarise_steps(records, since=since)] == [("deconvolve", 2)]


def test_png_data_uri_rejects_missing_and_non_png(tmp_path):
    with pytest.raises(LlsmflowError, match="not found"):
        png_data_uri(tmp_path / "absent.png")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"GIF89a not a png")
    with pytest.raises(LlsmflowError, match="is not a PNG"):
        png_data_uri(fake)


def test_render_report_escapes_text_and_flags_low_quality_pairs(tmp_path):
    from llsmflow.qc import save_projection_panel

    png = save_projection_panel([("a", np.eye(8), 1.0)], tmp_path / "p.png")
    transforms = {
        "reference": "t0",
        "tiles": {"t0": {"origin_um": [0, 0, 0], "nominal_origin_um": [0, 0, 0]}},
        "pairs": [{"a": "t0", "b": "t1", "quality": 0.2, "used": False, "shift_um": [0, 1, 2]}],
    }
    page = render_report(
        dataset="<script>alert(1)</script>",
        tile_pngs=[("t0", 0, png)],
        mosaic_png=None,
        track_pngs={},
        step_records=[],
        provenance={"workflow": {"version": "0"}, "config": {"note": "</pre><b>"}},
        transforms=transforms,
        min_quality=0.5,
    )
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "</pre><b>" not in page
    assert '<td class="num bad">0.200</td>' in page and "rejected" in page
