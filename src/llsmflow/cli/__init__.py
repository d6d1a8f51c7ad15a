"""The ``llsmflow`` command line: one subcommand per stage, plus ``run`` for the whole workflow.

Every subcommand takes physical units (µm, s), prints one clear line and exits non-zero on bad input, and
writes its outputs atomically. See ``llsmflow <command> --help``.

All argument parsing lives in this package, one module per group of commands; a command's ``cmd_*`` function
parses and prints, and the work is done by the library layers it calls (imported when the command runs, so
``llsmflow --help`` stays quick):

``stages``
    synth, deskew, deconvolve, stitch, track, archive, verify (the processing packages).
``init``
    init (:mod:`llsmflow.ingest`: detect the instrument, write a config).
``run``
    run (:mod:`llsmflow.run`).
``status``
    status (:mod:`llsmflow.run.status`).
``hpc``
    estimate, profile init (:mod:`llsmflow.hpc`).
``container``
    container recipe|build|pin|info (:mod:`llsmflow.hpc.containers`).
``reproduce``
    reproduce (:mod:`llsmflow.provenance.reproduce`).
``convert``
    convert (:mod:`llsmflow.archive.convert`: NGFF 0.4 <-> 0.5 copies).
``export``
    export bia|omero (:mod:`llsmflow.fair`).
"""

from __future__ import annotations

import sys

from llsmflow import __version__
from llsmflow._lazy import lazy_exports
from llsmflow.cli.help_format import LlsmflowParser, example
from llsmflow.errors import LlsmflowError

_EXPORTS = {
    **dict.fromkeys(
        ("cmd_synth", "cmd_deskew", "cmd_deconvolve", "cmd_stitch", "cmd_track", "cmd_archive", "cmd_verify"),
        "stages",
    ),
    # their home is llsmflow.run.config; older code imports them from here
    **dict.fromkeys(("cmd_run", "check_config", "find_workflow_root", "snakemake_executable"), "run"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["build_parser", "main", *_EXPORTS]


def build_parser():
    """The ``llsmflow`` argument parser with every subcommand."""
    from llsmflow.cli.container import register_container_commands
    from llsmflow.cli.convert import register_convert_commands
    from llsmflow.cli.export import register_export_commands
    from llsmflow.cli.hpc import register_hpc_commands
    from llsmflow.cli.init import register_init_commands
    from llsmflow.cli.reproduce import register_reproduce_commands
    from llsmflow.cli.run import register_run_commands
    from llsmflow.cli.stages import register_stage_commands
    from llsmflow.cli.status import register_status_commands
    from llsmflow.cli.watch import register_watch_commands

    parser = LlsmflowParser(
        prog="llsmflow",
        description="Lattice light-sheet processing: one command per stage (deskew, deconvolve, stitch,\n"
        "track, archive), or llsmflow run for the whole workflow with Snakemake.",
        epilog=example(
            "llsmflow synth --tiny demo                            # a synthetic acquisition to try it on",
            "llsmflow init demo/raw --dataset demo -o config.yaml  # detect the instrument, write a config",
            "llsmflow run --configfile config.yaml                 # the whole workflow, with a progress view",
            "llsmflow status results/demo                          # what is done and what is left",
        )
        + "\n\nEach command's options, units and defaults: llsmflow COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"llsmflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of long steps")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_stage_commands(sub)
    register_init_commands(sub)
    register_run_commands(sub)
    register_container_commands(sub)
    register_status_commands(sub)
    register_hpc_commands(sub)
    register_reproduce_commands(sub)
    register_convert_commands(sub)
    register_export_commands(sub)
    register_watch_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "snakemake_args", None) and args.snakemake_args[:1] == ["--"]:
        args.snakemake_args = args.snakemake_args[1:]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        return args.func(args)
    except LlsmflowError as error:
        print(f"llsmflow {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llsmflow {args.command}: interrupted", file=sys.stderr)
        return 130
