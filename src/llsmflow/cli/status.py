"""``llsmflow status``: what is done and what is left for a results directory (or a config)."""

from __future__ import annotations


def cmd_status(args) -> int:
    from llsmflow.run.status import format_steps, run_status

    status = run_status(args.results_dir, args.configfile, args.workflow_dir)
    print(f"dataset {status.config['dataset']}  (config {status.configfile})")
    print(f"  results: {status.results}")
    print(f"  work:    {status.work}")
    if status.done:
        print(f"done: {sum(r['jobs'] for r in status.done)} jobs with a step record")
        for line in format_steps(status.done):
            print(line)
    else:
        print("done: nothing yet (no step records)")
    if status.left:
        print(f"left: {sum(status.left.values())} jobs ({status.left_source})")
        for rule, jobs in status.left.items():
            print(f"  {rule:<14}{jobs:>6}")
        print("run `llsmflow run` with the same config to finish.")
    else:
        print("left: nothing; the run is complete.")
    print(f"report: {status.report}" + ("" if status.report.is_file() else " (not written yet)"))
    return 0


def register_status_commands(subparsers) -> None:
    """Add ``llsmflow status``."""
    from llsmflow.cli.help_format import add_workflow_dir_argument, example

    p = subparsers.add_parser(
        "status",
        help="what is done and what is left for a results directory (or a config)",
        description="What is done (jobs per step, from the step records) and what is left (the run's job plan,\n"
        "else a Snakemake dry run) for a results directory or a config; runs nothing.",
        epilog=example("llsmflow status results/demo", "llsmflow status --configfile config.yaml"),
    )
    p.add_argument(
        "results_dir",
        nargs="?",
        default=None,
        help="results/<dataset> written by `llsmflow run` (default: the dataset of --configfile)",
    )
    p.add_argument("--configfile", default=None, help="workflow config (default: config/config.yaml)")
    add_workflow_dir_argument(p, first="the run's")
    p.set_defaults(func=cmd_status)
