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
GROUPS = {"deskew": "volumes", "deconvolve": "volumes", "fuse": "fusion", "qc_tile": "qc"}


@dataclass
class SiteAnswers:
    """What ``profile init`` asks: where and how jobs run at a site."""

    partition: str | None = None
    gpu_partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cores: int = 8
    jobs: int = 100
    volumes_group: int = 20
    fusion_group: int = 10
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
        "max-jobs-per-second: 5",
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
            "# the deconvolve rule requests a GPU when deconvolution.backend is cupy or pycudadecon; it then",
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
