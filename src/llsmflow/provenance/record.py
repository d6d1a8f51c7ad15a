"""Provenance: a record of every step and of every run, beside the outputs.

Each workflow step writes a *step record* (JSON: step name, wildcards, parameters, inputs, outputs, start and end
time, host, SLURM job id, threads, peak memory, and anything the step notes, such as the deconvolution backend
that actually ran) through :class:`StepRecorder`. At the end of a run, :func:`write_run_record` gathers the step
records with the resolved configuration, the workflow version (git commit, dirty tree), the software versions,
and the size and sha256 of every input and output into ``provenance/run-record.json``.

Only environment variables from :data:`ENV_ALLOW_LIST` are recorded, never anything that looks like a secret;
every recorded value passes through :func:`scrub` (credentials in URLs, values under secret-looking keys). The
Workflow Run RO-Crate of the run is built from the run record by :mod:`llsmflow.crate`.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from llsmflow import __version__
from llsmflow.io import sha256_file, write_json

ENV_ALLOW_LIST = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION",
    "SLURM_CPUS_PER_TASK",
    "SLURM_MEM_PER_NODE",
    "SLURM_CLUSTER_NAME",
    "SLURMD_NODENAME",
    "CUDA_VISIBLE_DEVICES",
    "APPTAINER_CONTAINER",
    "APPTAINER_NAME",
    "SINGULARITY_CONTAINER",
    "LLSMFLOW_CONTAINER_IMAGE",
    "OMP_NUM_THREADS",
)
SECRET_MARKERS = ("TOKEN", "PASSWORD", "SECRET", "KEY", "CREDENTIAL")
PACKAGES = (
    "llsmflow",
    "numpy",
    "scipy",
    "scikit-image",
    "tifffile",
    "zarr",
    "dask",
    "pandas",
    "pyarrow",
    "trackpy",
    "ome-zarr",
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "dask-jobqueue",
    "pycudadecon",
    "cupy-cuda12x",
    "matplotlib",
)

log = logging.getLogger("llsmflow")


def now_iso() -> str:
    """Current time as an ISO 8601 string with timezone."""
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def file_entries(paths, root: str | Path | None = None) -> list[dict]:
    """``[{path, bytes, sha256}]`` for every file in ``paths`` (directories are walked), sorted by path.

    Paths are given relative to ``root`` when they lie under it.
    """
    entries = []
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            shown = file
            if root is not None:
                try:
                    shown = file.resolve().relative_to(Path(root).resolve())
                except ValueError:
                    shown = file
            entries.append({"path": str(shown), "bytes": file.stat().st_size, "sha256": sha256_file(file)})
    return sorted(entries, key=lambda e: e["path"])


def package_versions(packages=PACKAGES) -> dict[str, str]:
    """Installed versions of the packages the pipeline uses (absent ones are omitted)."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def allowed_environment(environ=None) -> dict[str, str]:
    """Environment variables safe to record: allow-listed names that do not look like secrets."""
    environ = os.environ if environ is None else environ
    return {
        k: environ[k]
        for k in ENV_ALLOW_LIST
        if k in environ and not any(marker in k.upper() for marker in SECRET_MARKERS)
    }


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s:]*(?::[^/@\s]*)?@")
REDACTED = "[redacted]"


def scrub(value, key: str = ""):
    """Copy of ``value`` (nested dicts/lists/strings) safe to record.

    Credentials in URLs (``scheme://user:password@host``) are removed, and the value of any mapping key that
    contains one of :data:`SECRET_MARKERS` is replaced by ``"[redacted]"``.
    """
    if key and any(marker in key.upper() for marker in SECRET_MARKERS):
        return REDACTED
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(lambda m: m.group("scheme"), value)
    return value


def container_info(environ=None) -> dict:
    """The container this process runs in: ``{image, reference, digest}`` (only what is known), or ``{}``.

    ``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER`` hold the image file; ``LLSMFLOW_CONTAINER_IMAGE`` (set in
    llsmflow's image definitions) the image reference, whose ``@sha256:`` part is the digest.
    """
    environ = os.environ if environ is None else environ
    image = environ.get("APPTAINER_CONTAINER") or environ.get("SINGULARITY_CONTAINER")
    reference = environ.get("LLSMFLOW_CONTAINER_IMAGE")
    if not (image or reference):
        return {}
    info = {"image": image, "reference": reference}
    if reference and "@sha256:" in reference:
        info["digest"] = "sha256:" + reference.split("@sha256:", 1)[1]
    return scrub({k: v for k, v in info.items() if v})


def gpu_info() -> dict:
    """GPU model, driver and CUDA version of the first visible GPU (``nvidia-smi``, then CuPy); ``{}`` if none."""
    info = {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout.strip()
        if out:
            name, driver = (part.strip() for part in out.splitlines()[0].split(",", 1))
            info.update(model=name, driver=driver)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        import cupy

        version = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda"] = f"{version // 1000}.{(version % 1000) // 10}"
        info.setdefault("model", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    except Exception:  # noqa: BLE001 - CuPy absent or no device: the GPU is simply not recorded
        pass
    return info


GPU_BACKENDS = ("cupy", "pycudadecon", "gpu")


def git_state(directory: str | Path) -> dict:
    """Git commit of ``directory`` and whether its tree is dirty; ``{}`` outside a repository."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def configure_logging(log_path: str | Path | None = None) -> None:
    """Log llsmflow messages with timestamps to stderr and, if given, to ``log_path``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )


class StepRecorder:
    """Context manager that writes a step record when the step completes successfully.

    Parameters
    ----------
    record_path:
        Where the JSON step record goes (written atomically, only on success).
    step:
        Name of the step (the workflow rule).
    params, wildcards:
        Parameters and identifiers of this step (JSON-serialisable).
    inputs, outputs:
        Paths consumed and produced.
    threads:
        Threads the step was given.
    log_path:
        Log file for this step.

    Use :meth:`note` to add facts known only while running (e.g. ``backend="cpu"``).
    """

    def __init__(
        self,
        record_path,
        step: str,
        params=None,
        wildcards=None,
        inputs=(),
        outputs=(),
        threads: int = 1,
        log_path=None,
    ):
        self.record_path = Path(record_path)
        self.record = {
            "step": step,
            "wildcards": dict(wildcards or {}),
            "params": dict(params or {}),
            "inputs": [str(p) for p in inputs],
            "outputs": [str(p) for p in outputs],
            "threads": threads,
        }
        self.log_path = log_path
        self._t0 = 0.0

    @classmethod
    def for_workflow_job(cls, job) -> StepRecorder:
        """Build from a workflow job object exposing ``rule, params, wildcards, input, output, threads, log``.

        The object is duck-typed (it is Snakemake's ``snakemake`` script object in the workflow): this module
        does not import Snakemake. The step record goes to the job's output named ``step``.
        """
        params = {k: v for k, v in job.params.items()}
        outputs = [o for name, o in job.output.items() if name != "step"]
        return cls(
            job.output.step,
            job.rule,
            params=params,
            wildcards=dict(job.wildcards.items()),
            inputs=list(job.input),
            outputs=outputs,
            threads=job.threads,
            log_path=job.log[0] if len(job.log) else None,
        )

    def note(self, **facts) -> None:
        """Add facts to the record (JSON-serialisable)."""
        self.record.setdefault("notes", {}).update(facts)

    def __enter__(self) -> StepRecorder:
        configure_logging(self.log_path)
        self._t0 = time.perf_counter()
        self.record["start"] = now_iso()
        log.info("step %s %s started", self.record["step"], self.record["wildcards"])
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            log.error("step %s failed: %s", self.record["step"], exc)
            return False
        self.record.update(
            {
                "end": now_iso(),
                "seconds": round(time.perf_counter() - self._t0, 3),
                "peak_memory_mb": round(peak_memory_mb(), 1),
                "host": socket.gethostname(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "environment": allowed_environment(),
                "python": platform.python_version(),
                "llsmflow": __version__,
            }
        )
        container = container_info()
        if container:
            self.record["container"] = container
        if str((self.record.get("notes") or {}).get("backend", "")).lower() in GPU_BACKENDS:
            self.record["gpu"] = gpu_info()
        write_json(self.record_path, scrub(self.record))
        log.info(
            "step %s done in %.1f s, peak memory %.0f MiB",
            self.record["step"],
            self.record["seconds"],
            self.record["peak_memory_mb"],
        )
        return False


def write_run_record(
    out_path,
    config: dict,
    workflow_dir,
    step_records,
    inputs,
    outputs,
    acquisition: dict | None = None,
    run_dir=None,
) -> Path:
    """Write ``run-record.json``: config, workflow version, software, steps, input and output checksums.

    ``run_dir`` (default: current directory) is the base against which paths are recorded. Every value is
    passed through :func:`scrub`. Returns the path written; the record itself is :func:`run_record`.
    """
    record = run_record(config, workflow_dir, step_records, inputs, outputs, acquisition, run_dir)
    return write_json(out_path, record)


def run_record(config, workflow_dir, step_records, inputs, outputs, acquisition=None, run_dir=None) -> dict:
    """The run record as a dict (see :func:`write_run_record`)."""
    run_dir = Path(run_dir or Path.cwd())
    steps = [json.loads(Path(p).read_text(encoding="utf-8")) for p in sorted(step_records, key=str)]
    record = {
        "format": "llsmflow-run-record/1",
        "created": now_iso(),
        "workflow": {"name": "llsmflow", "version": __version__, **git_state(workflow_dir)},
        "config": config,
        "acquisition": acquisition or {},
        "software": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": package_versions(),
        },
        "host": socket.gethostname(),
        "run_dir": str(run_dir.resolve()),
        "environment": allowed_environment(),
        "steps": steps,
        "inputs": file_entries(inputs, run_dir),
        "outputs": file_entries(outputs, run_dir),
    }
    container = container_info()
    if container:
        record["container"] = container
    return scrub(record)
