"""The ``llsmflow`` command line: one subcommand per stage, plus ``run`` for the whole workflow.

Every subcommand takes physical units (µm, s), prints one clear line and exits non-zero on bad input, and
writes its outputs atomically. See ``llsmflow <command> --help``.

All argument parsing lives in this package, one module per group of commands; a command's ``cmd_*`` function
parses and prints, and the work is done by the library layers it calls (imported when the command runs, so
``llsmflow --help`` stays quick). ``llsmflow <command>`` builds and imports its own group's parser only (the
table ``_GROUPS``: a new command goes into it too; ``tests/test_cli_lazy.py``):

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


# The module of each command group, in the order of ``llsmflow --help``, and the commands its
# ``register_<group>_commands`` adds: ``llsmflow <command>`` builds (and imports) only its group's parser
# (tests/test_cli_lazy.py checks this table against the full parser).
_GROUPS = {
    "stages": ("synth", "deskew", "deconvolve", "stitch", "track", "archive", "verify"),
    "init": ("init",),
    "run": ("run",),
    "container": ("container",),
    "status": ("status",),
    "hpc": ("estimate", "profile"),
    "reproduce": ("reproduce",),
    "convert": ("convert",),
    "export": ("export",),
    "watch": ("watch",),
}
_REGISTER = {"stages": "register_stage_commands"}  # the others: register_<group>_commands
_GROUP_OF = {command: group for group, commands in _GROUPS.items() for command in commands}


def _command_word(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names before any other top-level option (``-h``, ``--version``, …), or None."""
    for word in argv:
        if word in ("-v", "--verbose"):
            continue
        return word if word in _GROUP_OF else None
    return None


def build_parser(command: str | None = None):
    """The ``llsmflow`` argument parser with every subcommand; with ``command`` (a subcommand's name), with
    that command's group only, whose module alone is imported (the parser of ``llsmflow <command> …``: the
    same subcommand parser; the top level then lists that group's commands only). Importing every command
    module (the run, HPC, container and provenance layers) cost each ``llsmflow deconvolve`` 0.06 s
    (``llsmflow deconvolve --help``: 0.11 s before, 0.05 s after; bench/RESULTS.md, session 8)."""
    from importlib import import_module

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
    groups = [_GROUP_OF[command]] if command in _GROUP_OF else list(_GROUPS)
    for group in groups:
        module = import_module(f"llsmflow.cli.{group}")
        getattr(module, _REGISTER.get(group, f"register_{group}_commands"))(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command_word(argv))
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
