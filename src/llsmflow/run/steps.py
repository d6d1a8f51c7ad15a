"""Step records: the JSON each workflow job writes when it finishes, and reading and summarising them.

Each workflow step writes a *step record* (step name, wildcards, parameters, inputs, outputs, start and end
time, host, SLURM job id, threads, peak memory, the process's start-up before the step (``startup_s``: wall
seconds from the process's start, Linux only, 0.01 s resolution; ``startup_cpu_s``: CPU seconds used by then:
interpreter, Snakemake's preamble, the script's imports), and anything the step notes, such as the deconvolution backend
that actually ran) through :class:`StepRecorder`. ``llsmflow run`` and ``llsmflow status`` summarise them per
step (:func:`summarise_steps`), the QC report shows them, and the run record
(:func:`llsmflow.provenance.run_record`) gathers them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import resource
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from llsmflow import __version__
from llsmflow.errors import LlsmflowError
from llsmflow.provenance.record import allowed_environment, container_info, gpu_info, now_iso, scrub

log = logging.getLogger("llsmflow")


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


def _ran_on_gpu(backend) -> bool:
    if not backend:
        return False
    # imported only here: a step that noted no backend does not pay for the deconvolution package
    from llsmflow.decon.backends import GPU_BACKENDS

    return str(backend).lower() in GPU_BACKENDS


def _process_age_s() -> float | None:
    """Seconds since this process started (``/proc``: 0.01 s resolution), or None where there is no ``/proc``."""
    try:
        # the fields after the command name, which may itself hold spaces or parentheses; starttime is field 22
        fields = Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(max(0.0, uptime - started), 2)


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
        # every output but the record itself (a named output may be a list: a job's volumes)
        outputs = [str(o) for o in job.output if str(o) != str(job.output.step)]
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

    def add_volume(self, entry: Mapping) -> None:
        """Add one volume's entry (a job that processes several volumes: its seconds of read, deskew,
        deconvolution and write, its shapes) to the record's ``volumes`` list."""
        self.record.setdefault("volumes", []).append(dict(entry))

    def __enter__(self) -> StepRecorder:
        self.record["startup_cpu_s"] = round(time.process_time(), 3)
        self.record["startup_s"] = _process_age_s()
        configure_logging(self.log_path)
        self._t0 = time.perf_counter()
        self.record["start"] = now_iso()
        log.info("step %s %s started", self.record["step"], self.record["wildcards"])
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        from llsmflow.io import write_json

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
        if _ran_on_gpu((self.record.get("notes") or {}).get("backend")):
            self.record["gpu"] = gpu_info()
        write_json(self.record_path, scrub(self.record))
        log.info(
            "step %s done in %.1f s, peak memory %.0f MiB",
            self.record["step"],
            self.record["seconds"],
            self.record["peak_memory_mb"],
        )
        return False


# ----------------------------------------------------------------------------------------------- reading


def read_step_records(paths: Iterable[str | Path]) -> list[dict]:
    """Read step records (JSON written by :class:`StepRecorder`), skipping absent files.

    Raises
    ------
    LlsmflowError
        If a record is not valid JSON or lacks its ``step`` name.
    """
    records = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LlsmflowError(
                f"cannot parse step record ({exc}); expected JSON from StepRecorder", path
            ) from exc
        if not isinstance(record, dict) or "step" not in record:
            raise LlsmflowError("step record has no 'step' name; expected JSON from StepRecorder", path)
        records.append(record)
    return records


def step_records_under(steps_dir: str | Path) -> list[dict]:
    """All step records below ``steps_dir`` (``work/<dataset>/steps``), in path order."""
    steps_dir = Path(steps_dir)
    return read_step_records(sorted(steps_dir.rglob("*.json"))) if steps_dir.is_dir() else []


def parse_time(text: str | None) -> _dt.datetime | None:
    """An ISO 8601 time from a step record (``start``/``end``), or None if absent or unreadable."""
    if not text:
        return None
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)


def summarise_steps(records: Iterable[Mapping], since: _dt.datetime | None = None) -> list[dict]:
    """Per workflow step (rule): jobs, run time and peak memory, in order of first start.

    Parameters
    ----------
    records : iterable of dict
        Step records.
    since : datetime, optional
        Only records whose ``start`` is at or after this time (e.g. the jobs of one ``llsmflow run``). Step
        records keep whole seconds, so pass a time truncated to the second.

    Returns
    -------
    list of dict
        ``step``, ``jobs``, ``seconds`` (sum of the jobs' run times, s), ``max_seconds``, ``wall_seconds`` (first
        start to last end, s: what the stage took with jobs in parallel), ``peak_memory_mb`` (largest of the
        jobs, MiB), ``backends`` (sorted, from the ``backend`` notes), ``hosts``, ``first_start``.
    """
    groups: dict[str, list[Mapping]] = {}
    for record in records:
        start = parse_time(record.get("start"))
        if since is not None and (start is None or start < since):
            continue
        groups.setdefault(str(record["step"]), []).append(record)
    rows = []
    for step, group in groups.items():
        starts = [t for t in (parse_time(r.get("start")) for r in group) if t is not None]
        ends = [t for t in (parse_time(r.get("end")) for r in group) if t is not None]
        seconds = [float(r.get("seconds") or 0.0) for r in group]
        memory = [float(r["peak_memory_mb"]) for r in group if r.get("peak_memory_mb") is not None]
        backends = sorted({str(r["notes"]["backend"]) for r in group if "backend" in (r.get("notes") or {})})
        rows.append(
            {
                "step": step,
                "jobs": len(group),
                "seconds": round(sum(seconds), 3),
                "max_seconds": round(max(seconds), 3),
                "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
                "peak_memory_mb": max(memory) if memory else None,
                "backends": backends,
                "hosts": sorted({str(r.get("host")) for r in group if r.get("host")}),
                "first_start": min(starts).isoformat() if starts else "",
            }
        )
    return sorted(rows, key=lambda r: (r["first_start"], r["step"]))
