"""`llsmflow watch` on a simulated acquisition: latency from a volume's last byte to its deconvolved volume
(and QC preview), and the sustained throughput in volumes per minute.

The tiny synthetic acquisition (``llsmflow synth --tiny``: 2 tiles × 2 channels, 32 × 64 × 96 raw stacks) is
written into a fresh folder as an instrument writes it (plane by plane, one stack at a time) at a chosen
rate, ``llsmflow watch`` follows it, and when it has ended:

* latency of each volume: its deconvolution's step record (written when the job ends) minus the
  modification time of its stack's last byte, and the same for the QC previews (reference timepoint);
* sustained throughput: volumes deconvolved per minute while the acquisition ran faster than processing
  (``--interval 0``: all stacks written at once, so the watcher always has a backlog);
* the step's own compute (deskew + deconvolve wall time from their step records), so the latency's overhead
  (settle time, waiting for the round in progress, Snakemake's parse and DAG, job start-up) is seen.

The watch session is started together with the writer, so the first volume also waits for the rounds'
Snakemake process to start (its imports, once per session): the max latency shows it.

    python bench/bench_watch.py [--timepoints 4] [--interval 6] [--settle 1] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import record

REPO = Path(__file__).resolve().parents[1]
LLSMFLOW = Path(sys.executable).parent / "llsmflow"


def write_stacks(source: Path, raw: Path, stacks: list[str], interval_s: float, plane_s: float) -> None:
    """Metadata and PSFs first, then each stack plane by plane, a stack every ``interval_s`` seconds."""
    for path in source.iterdir():
        if path.name not in stacks:
            shutil.copy2(path, raw / path.name)
    for name in stacks:
        start = time.time()
        data = (source / name).read_bytes()
        step = max(1, len(data) // 32)
        with open(raw / name, "ab") as out:
            for offset in range(0, len(data), step):
                out.write(data[offset : offset + step])
                out.flush()
                time.sleep(plane_s)
        time.sleep(max(0.0, interval_s - (time.time() - start)))


def step_seconds(record_path: Path) -> float:
    data = json.loads(record_path.read_text())
    return float(data.get("seconds") or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timepoints", type=int, default=4)
    parser.add_argument("--interval", type=float, default=6.0, help="seconds between stacks (0: all at once)")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import yaml

    from llsmflow.synth import SynthParams, generate

    base = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    generate(base / "acq", SynthParams(raw_shape_zyx=(32, 64, 96), particles_per_tile=6, timepoints=args.timepoints))
    source = base / "acq" / "raw"
    meta = json.loads((source / "acquisition.json").read_text())
    psfs = {c["psf"] for c in meta["channels"]}
    stacks = sorted((p.name for p in source.glob("*.tif") if p.name not in psfs), key=lambda n: (n.split("_t")[-1], n))
    raw = base / "raw"
    raw.mkdir()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(dataset="bench", raw_dir=str(raw), results_dir="results", work_dir="work")
    config["deconvolution"]["iterations"] = args.iterations
    run = base / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    load_before = os.getloadavg()[0]
    writer = threading.Thread(target=write_stacks, args=(source, raw, stacks, args.interval, 0.02), daemon=True)
    started = time.time()
    writer.start()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    result = subprocess.run(
        [str(LLSMFLOW), "watch", str(raw), "--configfile", "config.yaml", "--workflow-dir", str(REPO),
         "--settle", str(args.settle), "--idle-timeout", "60"],
        cwd=run, env=env, capture_output=True, text=True,
    )
    total = time.time() - started
    writer.join()
    if result.returncode != 0:
        sys.exit(f"llsmflow watch failed:\n{result.stderr[-3000:]}")
    steps = run / "work" / "bench" / "steps"
    latencies, compute, previews, done_at = [], [], [], []
    from llsmflow.ingest import read_acquisition

    acq = read_acquisition(raw, check_files=False)
    for sample in acq.samples.itertuples(index=False):
        last_byte = (raw / sample.path).stat().st_mtime
        deconvolved = steps / "deskew_deconvolve" / f"{sample.sample_id}.json"
        done_at.append(deconvolved.stat().st_mtime)
        latencies.append(deconvolved.stat().st_mtime - last_byte)
        compute.append(step_seconds(deconvolved))  # one deskew_deconvolve job per volume in watch
        preview = steps / "qc_tile" / f"{sample.tile}-ch{sample.channel}.json"
        if int(sample.timepoint) == int(config["stitch"]["reference_timepoint"]):
            previews.append(preview.stat().st_mtime - last_byte)
    watch_phase = max(done_at) - min(done_at) if len(done_at) > 1 else float("nan")
    rate = 60 * (len(done_at) - 1) / watch_phase if watch_phase > 0 else float("nan")
    overhead = [a - b for a, b in zip(latencies, compute, strict=True)]
    load_after = os.getloadavg()[0]
    rows = [
        ("volumes (2 tiles × 2 channels × timepoints)", f"{len(stacks)}"),
        ("stack interval (s) / settle (s)", f"{args.interval:g} / {args.settle:g}"),
        (
            "latency last byte → deconvolved volume: median / max",
            f"{statistics.median(latencies):.1f} s / {max(latencies):.1f} s",
        ),
        (
            "latency last byte → QC preview (reference timepoint): median",
            f"{statistics.median(previews):.1f} s" if previews else "–",
        ),
        ("the step's own compute (deskew + deconvolve): median", f"{statistics.median(compute):.1f} s"),
        (
            "latency minus the step's own compute: median / max",
            f"{statistics.median(overhead):.1f} s / {max(overhead):.1f} s",
        ),
        ("sustained throughput while watching", f"{rate:.1f} volumes/min"),
        ("whole session incl. final run", f"{total:.0f} s"),
        ("cores; load average (1 min) before / after", f"{os.cpu_count()}; {load_before:.1f} / {load_after:.1f}"),
    ]
    for key, value in rows:
        print(f"{key}: {value}")
    record(
        "llsmflow watch: latency and throughput (issue 19)",
        " ".join(["python bench/bench_watch.py", *sys.argv[1:]]),
        rows,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
