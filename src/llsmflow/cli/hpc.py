"""``llsmflow estimate`` (what each step of a dataset's run will request) and ``llsmflow profile init``."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from llsmflow.decon.backends import BACKENDS  # standard library only
from llsmflow.hpc.profiles import QUESTIONS, SiteAnswers

_SITE = SiteAnswers()  # the defaults, for the help texts


def cmd_estimate(args) -> int:
    from llsmflow.hpc.profiles import parse_group_sizes
    from llsmflow.hpc.resources import estimate

    groups = {}
    for entry in args.group_size or []:
        groups.update(parse_group_sizes([entry]))
    print(estimate(args.raw_dir, args.configfile, args.profile, args.cores, args.backend, groups))
    return 0


def _ask(prompt: str, default) -> str | None:
    shown = "" if default in (None, "") else f" [{default}]"
    answer = input(f"{prompt}{shown}: ").strip()
    return answer or default


def cmd_profile_init(args) -> int:
    from llsmflow.hpc.profiles import parse_group_sizes, write_profile

    answers = SiteAnswers(
        partition=args.partition,
        gpu_partition=args.gpu_partition,
        account=args.account,
        qos=args.qos,
        status_command=args.status_command,
    )
    if args.cores is not None:
        answers.cores = args.cores
    if args.jobs is not None:
        answers.jobs = args.jobs
    for name, size in parse_group_sizes(args.group_size or []).items():
        setattr(answers, f"{name}_group", size)
    interactive = not args.no_input and sys.stdin.isatty()
    if interactive:
        for key, prompt in QUESTIONS:
            if getattr(answers, key) is None:
                setattr(answers, key, _ask(prompt, None))
        if args.cores is None:
            answers.cores = int(_ask("cores of one submission (a node's cores, or fewer)", answers.cores))
    target = write_profile(args.outdir, answers, force=args.force)
    print(f"wrote {target}")
    print(f"  answers: {', '.join(f'{k}={v}' for k, v in asdict(answers).items() if v is not None)}")
    print(f"  run with: llsmflow run --profile {Path(args.outdir)} --configfile config/config.yaml")
    return 0


def register_hpc_commands(sub) -> None:
    """Add ``estimate`` and ``profile init`` to the ``llsmflow`` subcommands."""
    from llsmflow.cli.help_format import example

    p = sub.add_parser(
        "estimate",
        help="jobs, memory, GPU memory and time each workflow step will request for a dataset",
        description="What each workflow step will request for a dataset (jobs, memory in GiB, GPU memory,\n"
        "time) and how many sbatch submissions a profile makes of them; runs nothing.",
        epilog=example(
            "llsmflow estimate data/demo/raw",
            "llsmflow estimate --configfile cell1.yaml --profile profiles/mysite --backend cupy",
        ),
    )
    p.add_argument(
        "raw_dir", nargs="?", default=None, help="raw data directory (default: the config's raw_dir)"
    )
    p.add_argument(
        "--configfile", default=None, help="workflow config (default: config/config.yaml's values)"
    )
    p.add_argument(
        "--profile",
        default=None,
        help="Snakemake profile directory: its cores and group sizes (default: local, no groups)",
    )
    p.add_argument("--cores", type=int, default=None, help="cores of one submission (default: the profile's)")
    p.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default=None,
        help="deconvolution backend to size the jobs for (default: the config's)",
    )
    p.add_argument(
        "--group-size",
        action="append",
        metavar="GROUP=N",
        help="jobs batched per submission: volumes=N, fusion=N or qc=N; repeatable (default: the profile's)",
    )
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "profile",
        help="Snakemake profiles for clusters: init",
        epilog=example("llsmflow profile init profiles/mysite --partition cpu --gpu-partition gpu"),
    )
    profile_sub = p.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    q = profile_sub.add_parser(
        "init",
        help="write a SLURM profile for a site (asks for what the flags do not give)",
        epilog=example(
            "llsmflow profile init profiles/mysite --partition cpu --gpu-partition gpu --account lab --no-input"
        ),
    )
    q.add_argument("outdir", type=Path, help="profile directory to create, e.g. profiles/mysite")
    q.add_argument(
        "--partition",
        default=None,
        help="partition for CPU jobs (default: asked, else the cluster's default)",
    )
    q.add_argument(
        "--gpu-partition",
        default=None,
        help="partition for GPU deconvolution jobs (default: asked, else none)",
    )
    q.add_argument("--account", default=None, help="account to charge, sbatch -A (default: asked, else none)")
    q.add_argument("--qos", default=None, help="quality of service, sbatch --qos (default: asked, else none)")
    q.add_argument("--cores", type=int, default=None, help=f"cores of one submission (default {_SITE.cores})")
    q.add_argument(
        "--jobs", type=int, default=None, help=f"submissions in the queue at once (default {_SITE.jobs})"
    )
    q.add_argument(
        "--group-size",
        action="append",
        metavar="GROUP=N",
        help=f"jobs batched per submission: volumes=N (deskew_deconvolve jobs, each one timepoint's volumes, "
        f"default {_SITE.volumes_group}), "
        f"fusion=N ({_SITE.fusion_group}), qc=N ({_SITE.qc_group})",
    )
    q.add_argument(
        "--status-command",
        choices=("squeue", "sacct"),
        default=_SITE.status_command,
        help="how job states are polled (sacct needs slurmdbd; default %(default)s)",
    )
    q.add_argument("--no-input", action="store_true", help="never prompt, even on a terminal")
    q.add_argument("--force", action="store_true", help="overwrite an existing profile")
    q.set_defaults(func=cmd_profile_init)
