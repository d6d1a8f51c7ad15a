"""How ``llsmflow … --help`` is laid out: every option's default shown, examples kept as written.

:class:`LlsmflowParser` is the parser class of ``llsmflow`` and, through ``add_subparsers``, of every
subcommand (argparse makes subparsers of the parent's class), so a new command gets the same help layout
without asking for it. Its formatter adds ``(default: …)`` to an option's help unless the help already says
what the default is, or the option has none worth stating (``None``, a flag, an empty list); the value shown is
the flag's own default, which ``tests/test_defaults.py`` checks against ``config/schema.yaml``. Descriptions
and epilogs (the examples) are printed as written, line breaks kept.
"""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "LlsmflowParser", "add_workflow_dir_argument", "example"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Raw descriptions and epilogs; ``(default: …)`` appended where the help does not state the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
            or not action.option_strings
        ):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default)
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


class LlsmflowParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help uses :class:`HelpFormatter` unless told otherwise."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def example(*lines: str) -> str:
    """An epilog: ``example:`` (or ``examples:``) then each command line indented."""
    head = "example:" if len(lines) == 1 else "examples:"
    return head + "\n" + "\n".join(f"  {line}" for line in lines)


def add_workflow_dir_argument(
    parser: argparse.ArgumentParser, holding: str = "the Snakefile", first: str | None = None
) -> None:
    """``--workflow-dir``, worded the same in every command that looks for the workflow.

    ``holding`` names what the command needs from the directory; ``first`` is a place searched before the
    current directory (``llsmflow status`` looks at the run's own workflow first).
    """
    searched = [first] if first else []
    searched += ["the current directory if it has a Snakefile", "llsmflow's own"]
    parser.add_argument(
        "--workflow-dir",
        default=None,
        help=f"directory holding {holding} (default: " + ", else ".join(searched) + ")",
    )
