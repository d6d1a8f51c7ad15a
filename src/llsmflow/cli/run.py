"""``llsmflow run``: the whole workflow with Snakemake, under the run lock, with a summary at the end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llsmflow.errors import LlsmflowError
from llsmflow.run.config import check_config, find_workflow_root, snakemake_executable
from llsmflow.run.display import DEFAULT_DISPLAY, DISPLAY_MODES
from llsmflow.run.launch import DEFAULT_PROFILE

__all__ = ["check_config", "cmd_run", "find_workflow_root", "register_run_commands", "snakemake_executable"]


def cmd_run(args) -> int:
    from llsmflow.hpc.profiles import profile_options
    from llsmflow.run.launch import failure_reason, is_dry_run, launch, profile_dir, snakemake_command
    from llsmflow.run.paths import check_output_paths, run_paths
    from llsmflow.run.status import print_run_summary

    root = find_workflow_root(args.workflow_dir)
    configfile = Path(args.configfile or root / "config" / "config.yaml")
    # the effective config: the file, then `-- --config key=value` / `--configfile` overrides; the lock and
    # every check below use it
    config = check_config(configfile, root, overrides=config_overrides(args.snakemake_args))
    check_output_paths(config)
    profile = profile_dir(root, args.profile)
    cores = cluster_cores(config, profile, args.cores)
    command = snakemake_command(root, configfile, profile, cores, args.snakemake_args)
    dry_run = is_dry_run(args.snakemake_args)
    results, work = run_paths(config)
    slurm = profile_options(profile).get("executor") == "slurm"
    outcome = launch(command, config, configfile, root, dry_run, slurm=slurm, display=args.display)
    if outcome.status != 0:
        reason = failure_reason(config, outcome)
        if reason:
            print(f"llsmflow run: error: {reason}", file=sys.stderr)
        print(
            f"llsmflow run: workflow failed after {outcome.elapsed:.0f} s (exit {outcome.status}); see the logs "
            f"under {work / 'logs'}",
            file=sys.stderr,
        )
        if not dry_run:
            print_run_summary(
                config, Path.cwd(), outcome.started_at, outcome.elapsed, outcome.status, out=sys.stderr
            )
        return 2 if outcome.stuck else outcome.status
    if dry_run:
        print(f"llsmflow run: dry run in {outcome.elapsed:.0f} s; nothing was written")
        return 0
    # only what exists: a partial run (`-- --until deskew`) has not written the archive or the crate yet
    made = [
        results / relative
        for relative in (f"{config['dataset']}.ome.zarr", "tracks", "qc", "provenance")
        if (results / relative).exists()
    ]
    if made:
        print(f"llsmflow run: done in {outcome.elapsed:.0f} s. Results in {results}/:")
        for path in made:
            print(f"  {path}")
    else:
        print(
            f"llsmflow run: done in {outcome.elapsed:.0f} s; no results yet (a partial run); work in {work}/"
        )
    print_run_summary(config, Path.cwd(), outcome.started_at, outcome.elapsed, outcome.status)
    return 0


def whole_cores(cores) -> int | None:
    """``--cores`` as a number (None when not given)."""
    try:
        return int(cores) if cores else None
    except ValueError:
        raise LlsmflowError(f"--cores {cores!r} is invalid; expected a whole number") from None


def cluster_cores(config: dict, profile: Path, cores):
    """On SLURM, what the jobs will request is checked against the partition's nodes before anything is
    submitted; returns the cores to pass (capped at a node's CPUs, with a note), else ``cores`` unchanged."""
    from llsmflow.hpc.profiles import profile_options

    if profile_options(profile).get("executor") != "slurm":
        return cores
    from llsmflow.hpc.resources import config_volume_sizes, fit_to_partition
    from llsmflow.run.config import config_acquisition

    wanted = whole_cores(cores)
    acq = config_acquisition(config, check_files=False)
    capped, note = fit_to_partition(config_volume_sizes(acq, config), config, profile, wanted)
    if note:
        print(f"llsmflow run: note: {note}", file=sys.stderr, flush=True)
    return capped if capped != wanted else cores


def register_run_commands(sub) -> None:
    """Add ``llsmflow run``."""
    from llsmflow.cli.help_format import add_workflow_dir_argument, example

    p = sub.add_parser(
        "run",
        help="run the whole workflow with Snakemake",
        description="Run the whole workflow (deskew, deconvolve, stitch, track, archive, QC report,\n"
        "provenance) with Snakemake under the dataset's run lock; shows a progress view per step and ends\n"
        "with a summary of what ran. Finished steps are kept: running again resumes.",
        epilog=example(
            "llsmflow run --configfile config.yaml",
            "llsmflow run --configfile config.yaml --cores 8 -- --until deskew_deconvolve",
            "llsmflow run --profile slurm --configfile config.yaml",
            "llsmflow run --configfile config.yaml -- --dry-run",
        ),
    )
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="Snakemake profile: a name under profiles/ (local, slurm, slurm-apptainer) or a directory",
    )
    p.add_argument("--configfile", default=None, help="workflow config (default: config/config.yaml)")
    p.add_argument(
        "--cores", default=None, help="CPU cores to use at once, or 'all' (default: the profile's)"
    )
    add_workflow_dir_argument(p)
    p.add_argument(
        "--display",
        choices=DISPLAY_MODES,
        default=DEFAULT_DISPLAY,
        help="how the run is shown: live (jobs done/total per step and the running job's progress, redrawn "
        "in place), plain (a line per finished step and a progress line every 30 s), full (Snakemake's own "
        "output); auto: live when stdout is a terminal, else plain. Snakemake's whole output is always kept "
        "in work/<dataset>/logs/snakemake/ (default: %(default)s)",
    )
    p.add_argument(
        "snakemake_args",
        nargs=argparse.REMAINDER,
        help="after --: extra Snakemake arguments, e.g. -- --dry-run (default: none)",
    )
    p.set_defaults(func=cmd_run)


def config_overrides(snakemake_args) -> dict:
    """What extra Snakemake arguments change in the config: the values of ``--config/-C key=value`` (parsed as
    Snakemake parses them), so that the lock and every pre-run check use the config the workflow will run
    with. ``--configfile`` there is refused: Snakemake would replace, not extend, the run's config file."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config", "-C", nargs="*", action="extend", default=[])
    parser.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[])
    known, _ = parser.parse_known_args(list(snakemake_args))
    if known.configfile:
        raise LlsmflowError(
            f"--configfile {' '.join(known.configfile)} after `--` would replace the run's config file; "
            "expected `llsmflow run --configfile FILE` for the config, and `-- --config KEY=VALUE` for changes"
        )
    if not known.config:
        return {}
    try:
        from snakemake.cli import parse_config
    except ImportError:  # pragma: no cover - snakemake is needed to run anyway
        raise LlsmflowError(
            "the snakemake package was not found; expected `pip install llsmflow[workflow]`"
        ) from None
    try:
        return parse_config(known.config)
    except Exception as error:  # noqa: BLE001 - Snakemake raises ValueError or its own errors
        raise LlsmflowError(f"--config {' '.join(known.config)}: {error}; expected KEY=VALUE pairs") from None
