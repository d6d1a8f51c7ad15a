"""The run record: what produced a run's outputs, gathered at its end, and the facts it is made of.

Each workflow step writes a *step record* (:class:`llsmflow.run.steps.StepRecorder`). At the end of a run,
:func:`write_run_record` gathers the step records with the resolved configuration, the workflow version (git
commit, dirty tree), the software versions (:func:`recorded_packages`), and the size and sha256 of every input
and output into ``provenance/run-record.json``; :func:`provenance_summary` collects the same facts for the QC
report, which is written before the record.

Only environment variables from :data:`ENV_ALLOW_LIST` are recorded, never anything that looks like a secret;
every recorded value passes through :func:`scrub` (credentials in URLs, values under secret-looking keys). The
Workflow Run RO-Crate of the run is built from the run record by :mod:`llsmflow.provenance.crate`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import re
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from llsmflow import __version__

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
GPU_PACKAGES = ("cupy-cuda12x", "pycudadecon")
"""Optional GPU packages, recorded when installed (pycudadecon comes from conda-forge, not from a pip extra)."""
# the test tools (pytest, ruff, the crate validator) do not take part in computing results
_UNRECORDED_EXTRAS = {"test"}


def now_iso() -> str:
    """Current time as an ISO 8601 string with timezone."""
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def file_entries(paths, root: str | Path | None = None, digests=None) -> list[dict]:
    """``[{path, bytes, sha256}]`` for every file in ``paths`` (directories are walked), sorted by path.

    Paths are given relative to ``root`` when they lie under it. ``digests`` (a
    :class:`llsmflow.provenance.digests.DigestCache`) gives digests already known, so that each file is hashed
    once per run.
    """
    from llsmflow.io import as_path, is_url, redact, sha256_file

    digest = sha256_file if digests is None else digests.digest

    entries = []
    root_resolved = Path(root).resolve() if root is not None else None
    for path in paths:
        path = as_path(path)  # a raw file by URL: named by its URL without credentials (redact)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if not is_url(path) and path.is_dir() else [path]
        for file in files:
            shown = redact(file) if is_url(file) else file
            if root is not None and not is_url(file):
                try:
                    shown = file.resolve().relative_to(root_resolved)
                except ValueError:
                    shown = file
            entries.append({"path": str(shown), "bytes": file.stat().st_size, "sha256": digest(file)})
    return sorted(entries, key=lambda e: e["path"])


def _requirement_name(requirement: str) -> str:
    return re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)


def _declared_requirements() -> list[str]:
    """The requirements of llsmflow, as the installed distribution declares them (from ``pyproject.toml``),
    or as the source checkout's ``pyproject.toml`` does when llsmflow runs from a checkout not installed."""
    import importlib.metadata  # some 20 ms: only when versions are recorded

    try:
        return list(importlib.metadata.requires("llsmflow") or [])
    except importlib.metadata.PackageNotFoundError:
        pass
    import tomllib

    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    if not pyproject.is_file():
        return []
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    requirements = list(project.get("dependencies", []))
    for extra, entries in project.get("optional-dependencies", {}).items():
        requirements += [f'{entry}; extra == "{extra}"' for entry in entries]
    return requirements


@functools.cache
def recorded_packages() -> tuple[str, ...]:
    """Names of the packages whose versions are recorded: llsmflow, its requirements with those of its extras
    (but not the test tools), and the optional GPU packages; in ``pyproject.toml`` order, each once."""
    names = ["llsmflow"]
    for requirement in _declared_requirements():
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if extra and extra.group(1) in _UNRECORDED_EXTRAS:
            continue
        names.append(_requirement_name(requirement))
    names += GPU_PACKAGES
    return tuple(dict.fromkeys(names))


def package_versions(packages: Iterable[str] | None = None) -> dict[str, str]:
    """Installed versions of the packages the pipeline uses (default :func:`recorded_packages`; absent ones
    are omitted), in that order."""
    import importlib.metadata

    packages = recorded_packages() if packages is None else packages
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
# NAME=VALUE inside a string (a sbatch directive `--export=ALL,LAB_API_TOKEN=…`, a URL query `?token=…`)
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)=(?P<value>[^,;&\s]*)")


def scrub(value, key: str = ""):
    """Copy of ``value`` (nested dicts/lists/strings) safe to record.

    Credentials in URLs (``scheme://user:password@host``) are removed, and the value of any mapping key that
    contains one of :data:`SECRET_MARKERS` is replaced by ``"[redacted]"``, as is the value of any
    ``NAME=VALUE`` inside a string whose NAME contains one (``--export=ALL,LAB_API_TOKEN=…``).
    """
    if key and _secret_name(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        # the patterns need "://" and "=": most strings (paths, names) skip both (a run record of 20,000
        # volumes holds some 300,000 strings)
        if "://" in value:
            value = _URL_CREDENTIALS.sub(lambda m: m.group("scheme"), value)
        return _ASSIGNMENT.sub(_redact_secret_assignment, value) if "=" in value else value
    return value


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def _redact_secret_assignment(match: re.Match) -> str:
    name = match.group("name")
    secret = _secret_name(name)
    return f"{name}={REDACTED}" if secret else match.group(0)


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


def write_run_record(
    out_path,
    config: dict,
    workflow_dir,
    step_records,
    inputs,
    outputs,
    acquisition: dict | None = None,
    run_dir=None,
    digests=None,
) -> Path:
    """Write ``run-record.json``: config, workflow version, software, steps, input and output checksums.

    ``run_dir`` (default: current directory) is the base against which paths are recorded. Every value is
    passed through :func:`scrub`. Returns the path written; the record itself is :func:`run_record`.
    """
    from llsmflow.io import write_json

    record = run_record(config, workflow_dir, step_records, inputs, outputs, acquisition, run_dir, digests)
    return write_json(out_path, record)


def run_record(
    config, workflow_dir, step_records, inputs, outputs, acquisition=None, run_dir=None, digests=None
) -> dict:
    """The run record as a dict (see :func:`write_run_record`; ``digests``: :func:`file_entries`)."""
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
        "inputs": file_entries(inputs, run_dir, digests),
        "outputs": file_entries(outputs, run_dir, digests),
    }
    container = container_info()
    if container:
        record["container"] = container
    return scrub(record)


def provenance_summary(
    workflow_dir: str | Path,
    config: Mapping,
    raw_files: Iterable[str | Path],
    raw_checksums: Mapping[str, str] | None = None,
) -> dict:
    """What produced this run, gathered the way :func:`write_run_record` gathers it, for the QC report.

    The report is built before the run record (so the record can list the report among the outputs it
    checksums); it therefore collects the same facts itself. ``raw_checksums`` maps a raw file's name to its
    sha256 (e.g. from the archive manifest, :func:`llsmflow.report.read_manifest`, keys ``raw/<name>``) so raw
    data are not read a second time; files not in it are listed with their size only.
    """
    from llsmflow.io import as_path, redact

    raw_checksums = dict(raw_checksums or {})
    inputs = []
    for file in raw_files:
        file = as_path(file)
        inputs.append(
            {
                "path": redact(file),
                "bytes": file.stat().st_size if file.is_file() else None,
                "sha256": raw_checksums.get(f"raw/{file.name}") or raw_checksums.get(file.name),
            }
        )
    # the same scrubbing as the run record and the crate: no credentials in a report that gets e-mailed around
    return scrub(
        {
            "created": now_iso(),
            "workflow": {"name": "llsmflow", "version": __version__, **git_state(workflow_dir)},
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": package_versions(),
            "environment": allowed_environment(),
            "config": dict(config),
            "inputs": inputs,
        }
    )
