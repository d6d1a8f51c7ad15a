"""``llsmflow watch RAW_DIR``: process an acquisition while it is written (:mod:`llsmflow.watch`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.run.launch import DEFAULT_PROFILE


def cmd_watch(args) -> int:
    from llsmflow.cli.run import cluster_cores, whole_cores
    from llsmflow.hpc.profiles import profile_options
    from llsmflow.hpc.resources import cap_at_node_cpus
    from llsmflow.run.config import check_config, effective_config, find_workflow_root
    from llsmflow.run.launch import WATCH_CONFIG, failure_reason, launch, profile_dir, snakemake_command
    from llsmflow.run.paths import check_output_paths, run_paths
    from llsmflow.run.status import print_run_summary
    from llsmflow.watch.rounds import Rounds
    from llsmflow.watch.session import WATCH_FILES_ENV, StatusLine, Watch

    root = find_workflow_root(args.workflow_dir)
    configfile = Path(args.configfile or root / "config" / "config.yaml")
    # every setting is in the config file, but one: a job per volume (jobs.unit), so that a volume is processed
    # as soon as it is complete, not when its timepoint's other tiles are in
    overrides: dict = dict(WATCH_CONFIG)
    config = effective_config(configfile, root, overrides)
    raw_dir = Path(args.raw_dir)
    if not raw_dir.is_dir():
        raise LlsmflowError("raw folder not found; expected the folder the instrument writes", raw_dir)
    if raw_dir.resolve() != Path(config["raw_dir"]).resolve():
        raise LlsmflowError(
            f"raw_dir is {config['raw_dir']}, not the watched folder {raw_dir}; expected the config of this "
            "acquisition (llsmflow init, or set raw_dir)",
            configfile,
        )
    check_output_paths(config)
    profile = profile_dir(root, args.profile)
    slurm = profile_options(profile).get("executor") == "slurm"
    options = config["watch"]
    settle = args.settle if args.settle is not None else options["settle_s"]
    idle = args.idle_timeout if args.idle_timeout is not None else options["idle_timeout_s"]
    poll = {"auto": None, "inotify": False, "polling": True}[options["poll"]]
    if args.poll:
        poll = True
    for name, value in (("--settle", settle), ("--idle-timeout", idle)):
        if value <= 0:
            raise LlsmflowError(f"{name} {value} is invalid; expected seconds > 0")
    status = StatusLine()
    results, work = run_paths(config)

    def echo(line: str) -> None:
        status.line(line if len(line) < 300 else line[:297] + "…")

    # the rounds run in one Snakemake process started now, while the first volume is being written; on SLURM
    # its jobs must fit a node's CPUs before any stack exists to size them by (the final run checks it all)
    cores = args.cores
    if slurm:
        capped, note = cap_at_node_cpus(profile, whole_cores(args.cores))
        if note:
            print(f"llsmflow watch: note: {note}", file=sys.stderr, flush=True)
            cores = capped
    command = snakemake_command(root, configfile, profile, cores, [], config=WATCH_CONFIG)
    rounds = Rounds(command, config, configfile, root, slurm)

    def run_round(targets: list[str], prioritize: list[str]) -> int:
        code = rounds(targets, {WATCH_FILES_ENV: os.environ.get(WATCH_FILES_ENV)}, prioritize)
        if code != 0:
            reason = rounds.failure_reason()
            if reason:
                status.line(f"llsmflow watch: error: {reason}")
        return code

    def run_final() -> int:
        rounds.close()  # one Snakemake process at a time
        full = check_config(configfile, root, overrides=overrides)  # every stack's header and PSF, as `run`
        cores = cluster_cores(full, profile, args.cores)
        command = snakemake_command(root, configfile, profile, cores, [], config=WATCH_CONFIG)
        outcome = launch(command, full, configfile, root, False, echo=echo, slurm=slurm)
        if outcome.status != 0:
            reason = failure_reason(full, outcome)
            if reason:
                print(f"llsmflow watch: error: {reason}", file=sys.stderr)
            print(
                f"llsmflow watch: final run failed after {outcome.elapsed:.0f} s (exit {outcome.status}); see "
                f"the logs under {work / 'logs'}",
                file=sys.stderr,
            )
            return 2 if outcome.stuck else outcome.status
        print(f"llsmflow watch: done; final run in {outcome.elapsed:.0f} s. Results in {results}/")
        print_run_summary(full, Path.cwd(), outcome.started_at, outcome.elapsed, outcome.status)
        return 0

    watch = Watch(
        raw_dir, config, run_round, run_final, settle, idle, poll, options["poll_interval_s"], status
    )
    rounds.start()
    try:
        return watch.run()
    finally:
        rounds.close()


def register_watch_commands(sub) -> None:
    """Add ``llsmflow watch``."""
    from llsmflow.cli.help_format import add_workflow_dir_argument, example

    p = sub.add_parser(
        "watch",
        help="process an acquisition while the instrument writes it, then finish it as `run` would",
        description="Follow RAW_DIR while the instrument writes it: each volume is deskewed, deconvolved "
        "and previewed once its file is complete (stopped growing AND holding the planes its metadata "
        "declares), each timepoint fused once all its tiles are in; when the acquisition ends (every "
        "declared stack processed, watch.idle_timeout_s without change, or Ctrl-C) the final run is "
        "`llsmflow run`. Restartable: finished work is kept. See docs/watch.md.",
        epilog=example(
            "llsmflow watch /data/cell1 --configfile cell1.yaml",
            "llsmflow watch /mnt/share/cell1 --configfile cell1.yaml --profile slurm --poll --idle-timeout 900",
        ),
    )
    p.add_argument(
        "raw_dir", metavar="RAW_DIR", help="the folder the instrument writes (the config's raw_dir)"
    )
    p.add_argument("--configfile", default=None, help="workflow config (default config/config.yaml)")
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="profile name under profiles/ or a directory (default %(default)s)",
    )
    p.add_argument("--cores", default=None, help="cores to use (default: the profile's)")
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds a file must not change before it is checked (default: the config's watch.settle_s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="seconds without a new or growing file that end "
        "the acquisition (default: the config's watch.idle_timeout_s)",
    )
    p.add_argument(
        "--poll",
        action="store_true",
        help="poll the folder instead of file system events (network shares; "
        "chosen automatically for NFS, SMB, Lustre, GPFS, BeeGFS, CephFS)",
    )
    add_workflow_dir_argument(p)
    p.set_defaults(func=cmd_watch)
