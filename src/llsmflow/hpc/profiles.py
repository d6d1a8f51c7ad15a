"""Snakemake profiles for SLURM sites: ``llsmflow profile init`` writes one, ``llsmflow estimate`` reads one.

A profile is written by filling in a template (a few lines of YAML, no template engine needed): the site's
partitions, account and QOS, the cores of one submission and the group sizes that batch small jobs
(:data:`GROUPS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llsmflow.errors import LlsmflowError

#: Profile groups: rules whose many small jobs are batched (``groups`` in profiles/slurm/config.yaml).
GROUPS = {"deskew_deconvolve": "volumes", "fuse": "fusion", "qc_tile": "qc"}


@dataclass
class SiteAnswers:
    """What ``profile init`` asks: where and how jobs run at a site."""

    partition: str | None = None
    gpu_partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cores: int = 8
    jobs: int = 100
    # at most 20 submissions per 1,000 volumes (4 tiles × 2 channels): 9 groups of 15 deskew_deconvolve jobs
    # (a timepoint each: 120 volumes), 3 fusion groups and 6 single jobs (register, archive, track per channel,
    # qc_mosaic, qc groups); docs/hpc.md gives the sizing
    volumes_group: int = 15
    fusion_group: int = 100
    qc_group: int = 50
    status_command: str = "squeue"


QUESTIONS = (
    ("partition", "SLURM partition for CPU jobs (empty: the cluster's default)"),
    ("gpu_partition", "SLURM partition for GPU deconvolution (empty: none, deconvolve on CPUs)"),
    ("account", "SLURM account to charge (empty: your default)"),
    ("qos", "quality of service, QOS (empty: the default)"),
)


def _yaml_scalar(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def render_profile(answers: SiteAnswers) -> str:
    """The text of a site profile's ``config.yaml`` (see profiles/slurm/config.yaml for the meaning of each key)."""
    default_resources = []
    if answers.partition:
        default_resources.append(f"  slurm_partition: {_yaml_scalar(answers.partition)}")
    if answers.account:
        default_resources.append(f"  slurm_account: {_yaml_scalar(answers.account)}")
    if answers.qos:
        default_resources.append(f"  qos: {_yaml_scalar(answers.qos)}")
    default_resources += ["  mem_mb: 1000", "  runtime: 30"]
    lines = [
        "# Snakemake profile for llsmflow on a SLURM cluster, written by `llsmflow profile init`.",
        "# Use it with: llsmflow run --profile <this directory> --configfile <your config.yaml>",
        "# Keys: docs/hpc.md. Per-rule memory and time come from the workflow (llsmflow estimate shows them).",
        "executor: slurm",
        f"jobs: {int(answers.jobs)}",
        "# cores of one submission: a grouped submission runs this many single-core jobs side by side",
        f"cores: {int(answers.cores)}",
        "retries: 2  # memory and time double on each retry",
        "latency-wait: 60  # shared file systems show a job's outputs late",
        "rerun-incomplete: true",
        "keep-going: true",
        "printshellcmds: true",
        "show-failed-logs: true",
        "# dispatch: the greedy scheduler (Snakemake's default ILP solves a problem over every ready job at each",
        "# round: seconds per round with thousands of jobs); at most 10 sbatch calls a second",
        "scheduler: greedy",
        "max-jobs-per-timespan: 10/1s",
        "seconds-between-status-checks: 10",
        "# without slurmdbd `sacct` fails and Snakemake never learns that jobs ended: squeue works everywhere",
        f"slurm-status-command: {answers.status_command}",
        "default-resources:",
        *default_resources,
        "# batch many small jobs into fewer submissions: N connected jobs per sbatch",
        "groups:",
        *(f"  - {rule}={group}" for rule, group in GROUPS.items()),
        "group-components:",
        f"  - volumes={int(answers.volumes_group)}",
        f"  - fusion={int(answers.fusion_group)}",
        f"  - qc={int(answers.qc_group)}",
    ]
    if answers.gpu_partition:
        lines += [
            "# the deskew_deconvolve rule requests a GPU when deconvolution.backend is cupy or pycudadecon; it then",
            "# goes to this partition (a CPU backend keeps it on the CPU partition)",
            "config:",
            f"  - {_yaml_scalar(f'hpc={{gpu_partition: {_yaml_scalar(answers.gpu_partition)}}}')}",
        ]
    return "\n".join(lines) + "\n"


def parse_group_sizes(entries) -> dict[str, int]:
    """``{group: jobs per submission}`` from ``GROUP=N`` entries (``volumes``, ``fusion``, ``qc``)."""
    sizes = {}
    for entry in entries:
        name, sep, value = str(entry).partition("=")
        if not sep or name not in ("volumes", "fusion", "qc"):
            raise LlsmflowError(f"group size {entry!r} is invalid; expected volumes=N, fusion=N or qc=N")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise LlsmflowError(
                f"group size {entry!r} is invalid; expected a whole number after '='"
            ) from None
        if sizes[name] < 1:
            raise LlsmflowError(f"group size {entry!r} is invalid; expected at least 1")
    return sizes


def profile_settings(profile: Path | None) -> tuple[int | None, dict[str, int]]:
    """``cores`` and ``group-components`` of a Snakemake profile directory (or none)."""
    import yaml

    if profile is None:
        return None, {}
    path = profile / "config.yaml"
    if not path.is_file():
        raise LlsmflowError("profile has no config.yaml; expected a Snakemake profile directory", profile)
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    groups = {}
    for entry in settings.get("group-components") or []:
        name, _, size = str(entry).partition("=")
        groups[name.strip()] = int(size)
    cores = settings.get("cores")
    return (int(cores) if isinstance(cores, int) else None), groups


def write_profile(outdir: str | Path, answers: SiteAnswers, force: bool = False) -> Path:
    """Write a site profile's ``config.yaml`` into ``outdir`` (atomically); returns its path.

    Raises
    ------
    LlsmflowError
        ``cores`` or ``jobs`` below 1, or the profile exists and ``force`` is false.
    """
    from llsmflow.io import atomic_output

    if answers.cores < 1 or answers.jobs < 1:
        raise LlsmflowError(f"cores {answers.cores} and jobs {answers.jobs} must be at least 1")
    outdir = Path(outdir)
    target = outdir / "config.yaml"
    if target.exists() and not force:
        raise LlsmflowError("profile exists; expected a new directory or --force", target)
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        Path(tmp).write_text(render_profile(answers), encoding="utf-8")
    return target


# ------------------------------------------------------------------------------ what the partition offers


@dataclass(frozen=True)
class PartitionLimits:
    """The largest node of a SLURM partition (``sinfo``): CPUs, memory (MB), GPUs (GRES ``gpu``) and the
    partition's time limit in minutes (None: unlimited)."""

    partition: str
    cpus: int
    mem_mb: int
    gpus: int
    time_min: int | None


def profile_options(profile: Path | None) -> dict:
    """``executor``, ``cores`` and ``partition`` (``default-resources: slurm_partition``) of a profile."""
    import yaml

    if profile is None or not (Path(profile) / "config.yaml").is_file():
        return {}
    settings = yaml.safe_load((Path(profile) / "config.yaml").read_text(encoding="utf-8")) or {}
    resources = settings.get("default-resources") or {}
    if isinstance(resources, list):  # `- key=value` form
        resources = dict(str(e).split("=", 1) for e in resources if "=" in str(e))
    partition = resources.get("slurm_partition")
    return {
        "executor": settings.get("executor"),
        "cores": settings.get("cores") if isinstance(settings.get("cores"), int) else None,
        "partition": str(partition).strip("'\"") if partition else None,
    }


def _slurm_minutes(text: str) -> int | None:
    """SLURM time (``infinite``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole minutes."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = (0, *parts) if not days else (*parts, 0)
    else:
        hours, minutes, seconds = parts
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def _gres_gpus(gres: str) -> int:
    total = 0
    for entry in gres.split(","):
        fields = entry.split("(")[0].split(":")
        if fields[0] == "gpu":
            try:
                total += int(fields[-1])
            except ValueError:
                total += 1
    return total


def partition_limits(partition: str | None = None, sinfo: str = "sinfo") -> PartitionLimits | None:
    """What the largest node of ``partition`` (default: the cluster's default partition) offers, from
    ``sinfo``; None when ``sinfo`` is not available (not a SLURM host).

    Raises
    ------
    LlsmflowError
        The partition does not exist.
    """
    import shutil
    import subprocess

    if shutil.which(sinfo) is None:
        return None
    try:
        out = subprocess.run(
            [sinfo, "-h", "-o", "%P|%c|%m|%G|%l"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 4]
    names = sorted({r[0].rstrip("*") for r in rows})
    if partition is None:
        default = [r[0].rstrip("*") for r in rows if r[0].endswith("*")]
        partition = default[0] if default else (names[0] if len(names) == 1 else None)
    rows = [r for r in rows if r[0].rstrip("*") == partition]
    if not rows:
        raise LlsmflowError(
            f"SLURM partition {partition!r} does not exist (sinfo lists {', '.join(names) or 'none'}); "
            "expected slurm_partition in the profile's default-resources to name one of them"
        )

    def number(text: str) -> int:
        digits = "".join(ch for ch in text if ch.isdigit())
        return int(digits) if digits else 0

    times = [_slurm_minutes(r[4]) for r in rows]
    return PartitionLimits(
        partition=partition,
        cpus=max(number(r[1]) for r in rows),
        mem_mb=max(number(r[2]) for r in rows),
        gpus=max(_gres_gpus(r[3]) for r in rows),
        time_min=None if None in times else max(times),
    )


def check_fit(
    resources,
    cores: int | None,
    limits: PartitionLimits,
    gpu_limits: PartitionLimits | None = None,
    groups: dict[str, int] | None = None,
):
    """Compare what the jobs request (``resources``: step → :class:`llsmflow.hpc.resources.StepResources`, of
    the first attempt) with what the partition's largest node offers.

    Returns the cores of one submission to use: ``cores`` capped at the node's CPUs (a job's threads, and the
    jobs a grouped submission runs side by side, follow it). Raises :class:`LlsmflowError` naming the step,
    its request and the limit for what cannot be capped: memory, GPUs, time. With the profile's ``groups``
    (``group-components``), a grouped submission's memory is checked too: the jobs it runs side by side
    (``cores // threads`` of them, at most the group size) each need their own.
    """
    capped = min(cores, limits.cpus) if cores else limits.cpus
    for step in resources.values():
        if step.local:
            continue
        where = gpu_limits if (step.gpu and gpu_limits is not None) else limits
        if step.mem_mb > where.mem_mb:
            raise LlsmflowError(
                f"step {step.step} requests {step.mem_mb} MB of memory per job, but the largest node of SLURM "
                f"partition {where.partition} has {where.mem_mb} MB; expected a partition with larger nodes "
                "(slurm_partition in the profile) or smaller volumes (llsmflow estimate shows the requests)"
            )
        if step.gpu > where.gpus:
            raise LlsmflowError(
                f"step {step.step} requests {step.gpu} GPU per job, but the nodes of SLURM partition "
                f"{where.partition} have {where.gpus}; expected hpc.gpu_partition naming a partition with GPUs, "
                "or deconvolution.backend: cpu"
            )
        group = GROUPS.get(step.step)
        if groups and group in groups:
            side_by_side = max(1, min(int(groups[group]), step.jobs, capped // max(1, step.threads)))
            if side_by_side > 1 and side_by_side * step.mem_mb > where.mem_mb:
                raise LlsmflowError(
                    f"a submission of group {group} runs {side_by_side} {step.step} jobs side by side "
                    f"({capped} cores, {step.threads} per job) needing {side_by_side * step.mem_mb} MB, but the "
                    f"largest node of SLURM partition {where.partition} has {where.mem_mb} MB; expected fewer "
                    f"cores per submission (at most {max(1, where.mem_mb // step.mem_mb) * step.threads}: "
                    "--cores or the profile's cores)"
                )
        if where.time_min is not None and step.runtime_min > where.time_min:
            raise LlsmflowError(
                f"step {step.step} requests {step.runtime_min} min per job, but SLURM partition "
                f"{where.partition} allows {where.time_min} min; expected a partition with a longer time limit "
                "(slurm_partition in the profile)"
            )
    return capped
