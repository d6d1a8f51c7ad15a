"""Growth law of the provenance with the number of volumes: the run record (raw files hashed) and the
Workflow Run RO-Crate (`write_crate`) of a run of N volumes (4 tiles × 2 channels × T), time and peak memory.

    PYTHONPATH=$PWD/src .venv/bin/python bench/bench_provenance.py --volumes 104 1000 5000 20000
    PYTHONPATH=/work/main/src .venv/bin/python bench/bench_provenance.py --volumes 24 48 104  # the code before

The run is made of real files: raw stacks (hard links to one tiny stack, bench/scale_acquisition.py), the step
records the workflow's jobs write (deskew_deconvolve and fuse per timepoint, the per-run steps), an
OME-Zarr-like archive with one chunk file per channel and timepoint. Each N runs in a fresh process (peak
memory = its ``ru_maxrss``); ``run_record`` and ``write_crate`` are timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_acquisition import REPO, build_acquisition, volumes_to_timepoints  # noqa: E402


def make_run(run_dir: Path, volumes: int, cache: Path) -> dict:
    """Step records, results and the lists the provenance rule passes (raw files, result paths)."""
    raw = build_acquisition(run_dir, volumes, cache)
    dataset = "scale"
    work, results = Path("work") / dataset, Path("results") / dataset
    stacks = sorted(p for p in raw.glob("Scan_Iter_*.tif"))
    psfs = sorted(raw.glob("PSF_*.tif"))
    steps = run_dir / work / "steps"
    marker = run_dir / "made.json"
    timepoints = volumes_to_timepoints(volumes)
    t0 = "2026-12-04T20:00:00+00:00"
    t1 = "2026-12-04T20:00:05+00:00"
    common = {"start": t0, "end": t1, "seconds": 5.0, "peak_memory_mb": 300.0, "threads": 2, "host": "node1"}
    common.update(environment={"SLURM_JOB_ID": "123"}, python="3.12", llsmflow="0.9", slurm_job_id="123")
    if not marker.is_file():
        for sub in ("deskew_deconvolve", "fuse", "prepare_psf", "track", "qc_tile"):
            (steps / sub).mkdir(parents=True, exist_ok=True)
        jobs: dict[str, dict] = {}  # one deskew_deconvolve job per timepoint (jobs.unit: timepoint)
        for stack in stacks:
            tile, t = stack.name.split("msecAbs_")[1].removesuffix("t.tif").rsplit("_", 1)
            sample = f"{tile}-ch{stack.name.split('_ch')[1][0]}-t{t}"
            job = jobs.setdefault(f"t{t}", {"inputs": [], "outputs": [], "volumes": []})
            job["inputs"].append(str(stack))
            job["outputs"].append(str(work / "deconvolved" / f"{sample}.ome.tif"))
            job["volumes"].append({"sample": sample, "seconds_deconvolution": 4.0, "backend": "cpu"})
        for name, job in jobs.items():
            rec = {"step": "deskew_deconvolve", "wildcards": {"timepoint": name[1:]}, "params": {"iterations": 10}}
            inputs = job["inputs"] + [str(work / "psf" / f"ch{c}.npy") for c in range(2)]
            rec.update(inputs=inputs, outputs=job["outputs"], **common)
            rec["notes"] = {"backend": "cpu", "iterations": 10, "volume_count": len(job["volumes"])}
            rec["volumes"] = job["volumes"]
            (steps / "deskew_deconvolve" / f"{name}.json").write_text(json.dumps(rec))
        zarr = run_dir / results / f"{dataset}.ome.zarr"
        for t in range(timepoints):  # one fuse job per timepoint, its channels one after the other
            fused = [str(work / "fused" / f"ch{c}-t{t:04d}.zarr") for c in range(2)]
            rec = {"step": "fuse", "wildcards": {"timepoint": f"{t:04d}"}, "params": {"channels": [0, 1]}}
            rec.update(inputs=[str(work / "stitch" / "transforms.json")], outputs=fused)
            rec["notes"] = {"tiles": 4, "channels": 2, "dask_cluster": "local"}
            rec["volumes"] = [{"channel": c, "output": fused[c], "seconds": 2.5, "tiles": 4} for c in range(2)]
            (steps / "fuse" / f"t{t:04d}.json").write_text(json.dumps({**rec, **common}))
        for c in range(2):
            for t in range(timepoints):
                chunk = zarr / "0" / f"c{c}" / f"t{t}"
                chunk.parent.mkdir(parents=True, exist_ok=True)
                chunk.write_bytes(os.urandom(64))
            (steps / "prepare_psf" / f"ch{c}.json").write_text(
                json.dumps({"step": "prepare_psf", "wildcards": {"channel": str(c)}, "inputs": [str(psfs[c])],
                            "outputs": [str(work / "psf" / f"ch{c}.npy")], **common})
            )
        (zarr / "zarr.json").write_text("{}")
        for name in ("ingest", "register", "archive", "qc_mosaic"):
            (steps / f"{name}.json").write_text(json.dumps({"step": name, "inputs": [], "outputs": [], **common}))
        (run_dir / results / "provenance").mkdir(parents=True, exist_ok=True)
        (run_dir / results / "qc").mkdir(parents=True, exist_ok=True)
        (run_dir / results / "qc" / "report.html").write_text("<html></html>")
        marker.write_text("{}")
    return {
        "raw_files": [str(p) for p in stacks + psfs + [raw / "acquisition.json"]],
        "steps": sorted(str(p) for p in steps.rglob("*.json")),
        "results": [str(results / f"{dataset}.ome.zarr"), str(results / "qc" / "report.html")],
        "crate_dir": str(results / "provenance"),
    }


def child(run_dir: Path, volumes: int, cache: Path) -> None:
    """One measurement (in a fresh process): run_record, then write_crate; prints a JSON line."""
    import resource

    from llsmflow.provenance.crate import write_crate
    from llsmflow.provenance.record import run_record

    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)
    made = make_run(run_dir, volumes, cache)
    # the raw files hashed once, as the archive job does; the run record reuses the digests (DigestCache)
    try:
        from llsmflow.provenance.digests import DigestCache
    except ImportError:  # the code before the digest cache: the run record hashes them itself
        cache, hash_s, kwargs = None, 0.0, {}
    else:
        cache, start = DigestCache(), time.perf_counter()
        for file in made["raw_files"]:
            cache.digest(file)
        hash_s, kwargs = time.perf_counter() - start, {"digests": cache}
    start = time.perf_counter()
    record = run_record(
        {"dataset": "scale"}, REPO, made["steps"], made["raw_files"], made["results"], run_dir=run_dir, **kwargs
    )
    record_s = time.perf_counter() - start
    (Path(made["crate_dir"]) / "run-record.json").write_text(json.dumps(record))
    start = time.perf_counter()
    write_crate(made["crate_dir"], record, REPO, run_dir, record_outputs=made["results"])
    crate_s = time.perf_counter() - start
    metadata = Path(made["crate_dir"]) / "ro-crate-metadata.json"
    graph = json.loads(metadata.read_text())["@graph"]
    print(
        json.dumps(
            {
                "volumes": len([f for f in made["raw_files"] if "Scan_Iter" in f]),
                "steps": len(record["steps"]),
                "hash_s": hash_s,
                "record_s": record_s,
                "crate_s": crate_s,
                "entities": len(graph),
                "metadata_mb": metadata.stat().st_size / 1e6,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, nargs="+", default=[104, 1000, 5000, 20000])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llsmflow-bench-scale")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.workdir / f"prov{args.child}", args.child, args.workdir)
        return 0
    head = f"{'volumes':>8}{'steps':>8}{'hash raw s':>12}{'run_record s':>14}{'write_crate s':>15}"
    print(head + f"{'entities':>10}{'MB':>7}{'peak MiB':>10}")
    for n in args.volumes:
        start = time.perf_counter()
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--workdir", str(args.workdir)],
                capture_output=True, text=True, timeout=args.timeout, check=True,
            ).stdout
        except subprocess.TimeoutExpired:
            print(f"{n:>8}  timeout after {time.perf_counter() - start:.0f} s", flush=True)
            continue
        except subprocess.CalledProcessError as error:
            print(f"{n:>8}  failed: {error.stderr[-1500:]}", flush=True)
            continue
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{r['volumes']:>8}{r['steps']:>8}{r.get('hash_s', 0):>12.2f}{r['record_s']:>14.2f}"
            f"{r['crate_s']:>15.2f}{r['entities']:>10}{r['metadata_mb']:>7.1f}{r['peak_mb']:>10.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
