"""Large acquisitions from tiny placeholder stacks, for the scaling benchmarks (bench_dag, bench_provenance).

An acquisition of N volumes is 4 tiles (2 × 2) × 2 channels × T timepoints (N = 8 T) in the layout of
``llsmflow synth``: an ``acquisition.json`` and one raw stack per volume, each stack a hard link to one
tiny synthetic stack (32×64×96 uint16), so that 20,000 volumes take a few MB. What the workflow and the
provenance do per volume (parsing, the DAG, the step records, the crate) is the same as for real stacks; only
the per-byte work (reading, hashing 300 MB stacks) is not measured here.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TILES_YX = [(0, 0), (0, 1), (1, 0), (1, 1)]
CHANNELS = 2


def volumes_to_timepoints(volumes: int) -> int:
    return max(1, round(volumes / (len(TILES_YX) * CHANNELS)))


def tiny_source(cache: Path) -> Path:
    """``llsmflow synth --tiny`` raw folder under ``cache`` (made once)."""
    raw = cache / "synth-tiny" / "raw"
    if not (raw / "acquisition.json").is_file():
        shutil.rmtree(cache / "synth-tiny", ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "llsmflow.cli", "synth", "--tiny", str(cache / "synth-tiny")],
            check=True,
            capture_output=True,
        )
    return raw


def stack_name(channel: int, wavelength: int, timepoint: int, ix: int, iy: int) -> str:
    ms = timepoint * 2000
    return (
        f"Scan_Iter_0000_CamA_ch{channel}_CAM1_stack{timepoint:04d}_{wavelength}nm_{ms:07d}msec_"
        f"{ms:010d}msecAbs_{ix:03d}x_{iy:03d}y_000z_{timepoint:04d}t.tif"
    )


def build_acquisition(dest: Path, volumes: int, cache: Path) -> Path:
    """Raw folder of ``volumes`` placeholder volumes (4 tiles × 2 channels × T) under ``dest``; returns it."""
    source = tiny_source(cache)
    meta = json.loads((source / "acquisition.json").read_text())
    timepoints = volumes_to_timepoints(volumes)
    raw = dest / "raw"
    if (raw / "acquisition.json").is_file():
        existing = json.loads((raw / "acquisition.json").read_text())
        if existing["timepoints"] == timepoints and len(existing["tiles"]) == len(TILES_YX):
            return raw
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    for channel in meta["channels"]:
        shutil.copyfile(source / channel["psf"], raw / channel["psf"])
    one_stack = sorted(source.glob("Scan_Iter_*ch0*_000x_000y_000z_0000t.tif"))[0].resolve()
    step_y = meta["tiles"][1]["stage_y_um"]
    meta["tiles"] = [
        {"ix": ix, "iy": iy, "iz": 0, "stage_x_um": ix * step_y, "stage_y_um": iy * step_y, "stage_z_um": 0.0}
        for ix, iy in TILES_YX
    ]
    meta["timepoints"] = timepoints
    wavelengths = [c["excitation_nm"] for c in meta["channels"]]
    for t in range(timepoints):
        for c in range(CHANNELS):
            for ix, iy in TILES_YX:
                os.link(one_stack, raw / stack_name(c, wavelengths[c], t, ix, iy))
    (raw / "acquisition.json").write_text(json.dumps(meta, indent=2))
    return raw


def workflow_config(run_dir: Path, raw: Path, dataset: str = "scale", **changes) -> Path:
    """``run_dir/config.yaml``: the default config on ``raw`` (results and work under ``run_dir``)."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(dataset=dataset, raw_dir=str(raw), results_dir="results", work_dir="work", **changes)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_measured(command: list[str], cwd: Path, env: dict | None = None, timeout: float = 3600) -> dict:
    """Any command: wall s, CPU s (all its processes) and peak RSS of its largest process (MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _, status, usage = _wait(process, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return {"seconds": None, "cpu_s": None, "peak_mb": None, "rc": "timeout", "out": ""}
    out = process.stdout.read().decode(errors="replace")
    return {
        "seconds": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss / 1024,
        "rc": os.waitstatus_to_exitcode(status),
        "out": out[-3000:],
    }


def _wait(process: subprocess.Popen, timeout: float):
    """``os.wait4`` of the process with a timeout (polling); its output goes to a pipe read afterwards, so
    the commands measured here must print little (a dry run's summary, a few lines)."""
    deadline = time.monotonic() + timeout
    chunks = []
    os.set_blocking(process.stdout.fileno(), False)
    while True:
        try:
            data = process.stdout.read()
            if data:
                chunks.append(data)
        except (BlockingIOError, TypeError):
            pass
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            rest = process.stdout.read() or b""
            process.stdout = _Bytes(b"".join(chunks) + rest)
            process.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(0.05)


class _Bytes:
    def __init__(self, data: bytes):
        self.data = data

    def read(self) -> bytes:
        return self.data


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
