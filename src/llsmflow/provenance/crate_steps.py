"""The steps of a run in its RO-Crate: one ``CreateAction`` per job, or per rule when the run is large.

A run of a few hundred jobs gets one ``CreateAction`` per job (``#exec-<rule>-<wildcards>``) with its
parameters, files, resources and environment, each linked to the rule's ``HowToStep`` by a ``ControlAction``.
A run of more than :data:`JOB_ACTIONS_MAX` step records (a facility's week: 20,000 volumes are some 45,000 jobs)
gets one ``CreateAction`` per rule (``#exec-<rule>-jobs``): its ``object`` the parameters every job of the rule
shared and every file the jobs read, its ``result`` every file they wrote, its ``resourceUsage`` the job count,
the summed and the largest wall time, the largest peak memory and the backends that ran; each job's own record
(wildcards, parameters, times, host, SLURM job, resources) stays in ``run-record.json``, which the action names
as ``subjectOf`` and whose ``sha256`` the crate records. Both shapes validate as Provenance Run Crates 0.5
(``rocrate-validator``, tests/test_scale_crate.py); the per-rule one departs from the profile's "one action per
tool execution" to keep the crate (37 MB at 20,000 volumes) and its build time proportional to the files, not
to jobs × properties.

Every entity is made once, looked up in the builder's own index (rocrate's ``crate.get`` scans every entity
on each miss, which made building the crate quadratic in the run's size).
"""

from __future__ import annotations

import json
import re
from typing import Any

JOB_ACTIONS_MAX = 1000
"""Runs with more step records than this get one CreateAction per rule instead of one per job."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")


def additional_type(value) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "Float"
    # a list or mapping is recorded as its JSON text (literal()); the Workflow Run Crate allows DataTypes only
    return "Text"


def literal(value):
    """JSON-LD literal for a parameter value: scalars as is, None as "null", the rest as JSON text."""
    if value is None:
        return "null"
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


# a literal: the Process Run Crate shape lists the allowed statuses as strings
ACTION_COMPLETED = "http://schema.org/CompletedActionStatus"
UNIT_CODES = {
    "s": "http://qudt.org/vocab/unit/SEC",
    "MiB": "http://qudt.org/vocab/unit/MebiBYTE",
    "count": "http://qudt.org/vocab/unit/NUM",
    "ratio": "http://qudt.org/vocab/unit/UNITLESS",
}
# the unit a value's name ends with (llsmflow's naming rule: units in names), checked in this order
UNIT_SUFFIXES = {
    "_um2_s": None,  # µm²/s: no QUDT unit checked here
    "_um2": "http://qudt.org/vocab/unit/MicroM2",
    "_um": "http://qudt.org/vocab/unit/MicroM",
    "_nm": "http://qudt.org/vocab/unit/NanoM",
    "_s": "http://qudt.org/vocab/unit/SEC",
    "_mb": "http://qudt.org/vocab/unit/MebiBYTE",
}


def stated_unit(key: str) -> str | None:
    """QUDT unit that a value's name states: its suffix (``_s``, ``_um``, ``_um2``, ``_nm``, ``_mb``) or a
    ``seconds_`` prefix; None otherwise (and for ``_um2_s``, which has no unit here)."""
    if key.startswith("seconds_"):
        return UNIT_CODES["s"]
    for suffix, code in UNIT_SUFFIXES.items():
        if key.endswith(suffix):
            return code
    return None


def unit_code(key: str, value, unit: str | None) -> str | None:
    """QUDT unit of a resource-usage value (Provenance Run Crate: a unitCode on each): the stated unit, else
    the unit the name ends with (``_s``, ``_um``, ``_um2``, ``_nm``) or starts with (``seconds_``), else a
    number for an int (a count) or a float without unit suffix (a ratio or score); None for text, booleans
    and unknown units (``_um2_s``)."""
    if unit:
        return UNIT_CODES.get(unit)
    code = stated_unit(key)
    if code or any(key.endswith(suffix) for suffix in UNIT_SUFFIXES):
        return code
    if type(value) is int or (isinstance(value, list) and value and all(type(v) is int for v in value)):
        return UNIT_CODES["count"]  # a count, or counts per axis (a shape in voxels)
    if type(value) is float:
        return UNIT_CODES["ratio"]
    return None


def is_resource_note(key: str) -> bool:
    """Whether a step's note says what compute the job used (its ``resourceUsage``): the backend, the dask
    cluster, the chunk count, the GPU, a time spent (``seconds_…``); every other note is a value the job
    reported about its data (the shape it wrote, the method, the PSF geometry): a ``result`` of the job."""
    return key in RESOURCE_NOTES or key.startswith(("seconds_", "gpu_"))


RESOURCE_NOTES = {"backend", "dask_cluster", "chunks", "threads"}


def resource_usage(builder, action_id: str, step: dict) -> list:
    usage = {
        "wall_time_s": (step.get("seconds"), "s"),
        "peak_memory_mb": (step.get("peak_memory_mb"), "MiB"),
        "threads": (step.get("threads"), None),
    }
    for key, value in (step.get("notes") or {}).items():
        if is_resource_note(key):
            usage[key] = (value, None)
    for key, value in (step.get("gpu") or {}).items():
        usage[f"gpu_{key}"] = (value, None)
    return _usage_entities(builder, action_id, usage)


def reported_values(builder, action_id: str, rule: str, tool, step: dict) -> list:
    """The job's notes that are not resource usage, as ``result`` PropertyValues (the Process Run Crate's
    numbers and strings not stored as files), each described by an output ``FormalParameter`` of the rule's
    tool; a unit the name states (``_um``, ``_s``, …) as ``unitCode``."""
    values = []
    for key, value in (step.get("notes") or {}).items():
        if value is None or is_resource_note(key):
            continue
        fp, pv = builder.parameter(
            f"#tool-{slug(rule)}-output-{slug(key)}", f"{action_id}-output-{slug(key)}", key, value
        )
        code = stated_unit(key)
        if code and not isinstance(value, bool | str):
            pv["unitCode"] = code
        pv["propertyID"] = key
        builder.tool_input(tool, fp, "output")
        values.append(pv)
    return values


# a name, not a quantity (the backend, the GPU model): QUDT's explicit "no unit" (the profile asks a unitCode
# of every resource-usage value)
NO_UNIT = "http://qudt.org/vocab/unit/UNITLESS"


def _usage_entities(builder, action_id: str, usage: dict) -> list:
    entities = []
    for key, (value, unit) in usage.items():
        if value is None:
            continue
        extra = {"propertyID": key}
        if unit:
            extra["unitText"] = unit
        code = unit_code(key, value, unit)
        extra["unitCode"] = code or NO_UNIT
        entities.append(builder.property_value(f"{action_id}-usage-{slug(key)}", key, value, **extra))
    return entities


def environment(builder, action_id: str, step: dict) -> list:
    env = dict(step.get("environment") or {})
    if step.get("host"):
        env["HOSTNAME"] = step["host"]
    return [builder.property_value(f"{action_id}-env-{slug(k)}", k, v) for k, v in sorted(env.items())]


def container(builder, info: dict | None):
    """ContainerImage entity for ``{"image": path or reference, "reference": ..., "digest": ...}``."""
    if not info:
        return None
    reference = info.get("reference") or info.get("image")
    props = {"name": reference}
    image = info.get("image") or ""
    props["additionalType"] = {
        "@id": "https://apptainer.org/docs/user/latest/definition_files.html"
        if image.endswith(".sif") or "APPTAINER" in json.dumps(info) or image.startswith("oras://")
        else "https://w3id.org/ro/terms/workflow-run#DockerImage"
    }
    if info.get("digest"):
        props["sha256"] = info["digest"].removeprefix("sha256:")
    if image and image != reference:
        props["description"] = f"image file {image}"
    return builder.add(f"#container-{slug(reference)}", "ContainerImage", **props)


def add_step_actions(
    builder, steps: list[dict], tools: dict, howtos: dict, step_file, run_record=None, job_actions_max=None
) -> list:
    """CreateActions (per job, or per rule beyond :data:`JOB_ACTIONS_MAX` records) and their ControlActions;
    returns the ControlActions. ``step_file(path)`` gives the data entity of a file a step read or wrote;
    ``run_record`` is the crate's ``run-record.json`` entity (named by the per-rule actions)."""
    if len(steps) <= (JOB_ACTIONS_MAX if job_actions_max is None else job_actions_max):
        return [_job_action(builder, step, tools, howtos, step_file) for step in steps]
    by_rule: dict[str, list[dict]] = {}
    for step in steps:
        by_rule.setdefault(step["step"], []).append(step)
    return [
        _rule_action(builder, rule, jobs, tools, howtos, step_file, run_record) for rule, jobs in by_rule.items()
    ]


def _control(builder, action, rule: str, name: str, howtos: dict):
    return builder.add(
        f"#control-{action.id[1:]}",
        "ControlAction",
        name=f"orchestrate {name}",
        instrument=howtos[rule],
        object=action,
    )


def _job_action(builder, step: dict, tools: dict, howtos: dict, step_file):
    rule = step["step"]
    wildcards = step.get("wildcards") or {}
    tag = slug("-".join(str(v) for v in wildcards.values())) or "run"
    action_id = f"#exec-{slug(rule)}-{tag}"
    tool = tools[rule]
    objects = []
    for name, value in list(wildcards.items()) + list((step.get("params") or {}).items()):
        kind = "wildcard" if name in wildcards else "param"
        fp, pv = builder.parameter(
            f"#tool-{slug(rule)}-{kind}-{slug(name)}", f"{action_id}-{kind}-{slug(name)}", name, value
        )
        builder.tool_input(tool, fp)
        objects.append(pv)
    objects += [step_file(p) for p in step.get("inputs", [])]
    results = [step_file(p) for p in step.get("outputs", [])]
    results += reported_values(builder, action_id, rule, tool, step)
    props: dict[str, Any] = {
        "name": f"{rule} {tag}",
        "description": f"one job of Snakemake rule {rule}"
        + (f" ({', '.join(f'{k}={v}' for k, v in wildcards.items())})" if wildcards else ""),
        "instrument": tool,
        "object": objects,
        "result": results,
        "startTime": step.get("start"),
        "endTime": step.get("end"),
        "actionStatus": ACTION_COMPLETED,
        "resourceUsage": resource_usage(builder, action_id, step),
        "environment": environment(builder, action_id, step),
    }
    if step.get("slurm_job_id"):
        props["identifier"] = f"slurm-job-{step['slurm_job_id']}"
    image = container(builder, step.get("container"))
    if image is not None:
        props["containerImage"] = image
    action = builder.add(action_id, "CreateAction", **{k: v for k, v in props.items() if v not in (None, [])})
    return _control(builder, action, rule, f"{rule} {tag}", howtos)


_MISSING = object()


def _rule_action(builder, rule: str, jobs: list[dict], tools: dict, howtos: dict, step_file, run_record):
    action_id = f"#exec-{slug(rule)}-jobs"
    tool = tools[rule]
    # parameters every job of the rule was given alike; those that differ are in each job's record
    shared: dict[str, Any] = {}
    differing: set[str] = set()
    for job in jobs:
        for name, value in (job.get("params") or {}).items():
            if name in differing:
                continue
            known = shared.get(name, _MISSING)
            if known is _MISSING:
                shared[name] = value
            elif known != value:
                differing.add(name)
                del shared[name]
    for job in jobs:
        for name in list(shared):
            if name not in (job.get("params") or {}):
                differing.add(name)
                del shared[name]
    objects = []
    for name, value in shared.items():
        fp, pv = builder.parameter(
            f"#tool-{slug(rule)}-param-{slug(name)}", f"{action_id}-param-{slug(name)}", name, value
        )
        builder.tool_input(tool, fp)
        objects.append(pv)
    inputs = dict.fromkeys(p for job in jobs for p in job.get("inputs", []))
    outputs = dict.fromkeys(p for job in jobs for p in job.get("outputs", []))
    objects += [step_file(p) for p in inputs]
    results = [step_file(p) for p in outputs]
    seconds = [float(j["seconds"]) for j in jobs if j.get("seconds") is not None]
    memory = [float(j["peak_memory_mb"]) for j in jobs if j.get("peak_memory_mb") is not None]
    threads = [int(j["threads"]) for j in jobs if j.get("threads") is not None]
    backends = sorted({str((j.get("notes") or {})["backend"]) for j in jobs if "backend" in (j.get("notes") or {})})
    gpus = sorted({json.dumps(j["gpu"], sort_keys=True) for j in jobs if j.get("gpu")})
    usage = {
        "jobs": (len(jobs), None),
        "wall_time_s": (round(sum(seconds), 3) if seconds else None, "s"),
        "max_wall_time_s": (max(seconds) if seconds else None, "s"),
        "peak_memory_mb": (max(memory) if memory else None, "MiB"),
        "threads": (max(threads) if threads else None, None),
        "backend": (", ".join(backends) or None, None),
    }
    for key, value in (json.loads(gpus[0]) if len(gpus) == 1 else {}).items():
        usage[f"gpu_{key}"] = (value, None)
    hosts = sorted({str(j["host"]) for j in jobs if j.get("host")})
    slurm_jobs = sorted({str(j["slurm_job_id"]) for j in jobs if j.get("slurm_job_id")}, key=_numeric)
    env = {"HOSTNAME": ", ".join(hosts)} if hosts else {}
    starts = [j["start"] for j in jobs if j.get("start")]
    ends = [j["end"] for j in jobs if j.get("end")]
    images = {}
    for job in jobs:
        image = container(builder, job.get("container"))
        if image is not None:
            images[image.id] = image
    described = f"{len(jobs)} jobs of rule {rule}"
    if differing:
        described += f"; parameters that differ between jobs: {', '.join(sorted(differing))}"
    props: dict[str, Any] = {
        "name": f"{rule} ({len(jobs)} jobs)",
        "description": described + "; each job's record (wildcards, parameters, inputs, outputs, times, host, "
        "SLURM job, resources) is in run-record.json (steps)",
        "instrument": tool,
        "object": objects,
        "result": results,
        "startTime": min(starts) if starts else None,
        "endTime": max(ends) if ends else None,
        "actionStatus": ACTION_COMPLETED,
        "resourceUsage": _usage_entities(builder, action_id, usage),
        "environment": [builder.property_value(f"{action_id}-env-{slug(k)}", k, v) for k, v in env.items()],
        "identifier": [f"slurm-job-{i}" for i in slurm_jobs],
        "containerImage": list(images.values()),
        "subjectOf": run_record,
    }
    action = builder.add(action_id, "CreateAction", **{k: v for k, v in props.items() if v not in (None, [])})
    return _control(builder, action, rule, f"{rule} ({len(jobs)} jobs)", howtos)


def _numeric(text: str):
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
