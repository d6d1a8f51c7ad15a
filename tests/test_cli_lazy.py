"""`llsmflow <command>` builds and imports only its command group's parser, and that parser is the one the full
command line has (same help, same defaults); `llsmflow --help` still lists every command."""

import argparse
import subprocess
import sys

import pytest

from llsmflow.cli import _GROUP_OF, _command_word, build_parser, main


def _subparsers(parser) -> dict:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _tree(parser, words=()) -> dict:
    """Every parser under ``parser`` by the words that reach it, with its help text and its arguments."""
    arguments = [
        (a.option_strings, a.dest, a.default, sorted(a.choices) if isinstance(a.choices, dict) else a.choices)
        for a in parser._actions
    ]
    found = {words: (parser.format_help(), arguments)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_tree(sub, (*words, name)))
    return found


def test_each_command_alone_has_the_full_command_lines_parser():
    full = _subparsers(build_parser())
    assert set(full) == set(_GROUP_OF)  # the table names every command, and only those
    for command, parser in full.items():
        alone = _subparsers(build_parser(command))
        assert command in alone and set(alone) <= set(full)
        assert _tree(alone[command], (command,)) == _tree(parser, (command,)), command


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["deconvolve", "a.tif"], "deconvolve"),
        (["-v", "deconvolve", "--help"], "deconvolve"),
        (["--verbose", "profile", "init"], "profile"),
        (["-h", "deconvolve"], None),  # the top-level help: every command
        (["--version"], None),
        (["decon", "a.tif"], None),  # not a command: the full parser's own error, listing them all
        ([], None),
    ],
)
def test_command_word(argv, word):
    assert _command_word(argv) == word


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in _GROUP_OF:
        assert f"    {command} " in text, command


def test_deconvolve_imports_only_its_own_command_module():
    code = (
        "import sys\nfrom llsmflow.cli import main\n"
        "try:\n    main(['deconvolve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('llsmflow'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    modules = set(done.stdout.strip().splitlines()[-1].split())
    assert "llsmflow.cli.stage_args" in modules
    for other in ("llsmflow.cli.run", "llsmflow.cli.hpc", "llsmflow.cli.export", "llsmflow.cli.watch",
                  "llsmflow.run", "llsmflow.hpc", "llsmflow.provenance"):  # fmt: skip
        assert other not in modules, other
