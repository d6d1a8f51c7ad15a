"""``llsmflow reproduce RUN_DIR``: re-run a recorded run from its RO-Crate and compare every output."""

from __future__ import annotations

import os
from pathlib import Path

from llsmflow.provenance.reproduce import DEFAULT_CORES


def cmd_reproduce(args) -> int:
    from llsmflow.provenance.reproduce import reproduce

    out_dir = args.output or Path(f"reproduce-{Path(args.run_dir).resolve().name}-{os.getpid()}")
    return reproduce(
        args.run_dir,
        out_dir,
        cores=args.cores,
        raw_dir=args.raw_dir,
        trust_snapshot=args.trust_snapshot,
    )


def register_reproduce_commands(sub) -> None:
    """Add ``llsmflow reproduce``."""
    from llsmflow.cli.help_format import example

    p = sub.add_parser(
        "reproduce",
        help="re-run a recorded run from its RO-Crate into a fresh directory and compare every output",
        description="Re-run a recorded workflow run from its RO-Crate alone (its config, workflow snapshot\n"
        "and raw inputs checked by sha256) into a fresh directory, and compare every output.",
        epilog=example(
            "llsmflow reproduce results/demo/provenance -o rerun",
            "llsmflow reproduce results/demo/provenance --raw-dir /archive/demo/raw --cores 8",
        ),
    )
    p.add_argument(
        "run_dir", type=Path, help="crate directory (results/<dataset>/provenance) or the run directory"
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="fresh directory for the re-run (default: reproduce-<crate's directory>-<pid>)",
    )
    p.add_argument(
        "--cores", type=int, default=DEFAULT_CORES, help="CPU cores for the re-run (default: %(default)s)"
    )
    p.add_argument(
        "--raw-dir",
        type=Path,
        default=None,
        help="where the raw data are now, if moved: every recorded raw input is looked up here by its path "
        "relative to the recorded raw_dir and checked by sha256 (default: the recorded raw_dir)",
    )
    p.add_argument(
        "--trust-snapshot",
        action="store_true",
        help="run the crate's own workflow snapshot even if it differs from the installed llsmflow's "
        "workflow, or the crate (older llsmflow) records no checksums for it",
    )
    p.set_defaults(func=cmd_reproduce)
