"""Issue 17, case 5 (and the config half of case 8): reading a config is bounded and every type is checked.

A 589-byte YAML alias bomb, a ``!!python`` tag, invalid YAML, an oversized file and a boolean where a number is
expected each give one line naming the file (and the line), exit 2, in well under a second of work, for every
command that reads a config (``run``, ``status``, ``estimate``); ``--config`` overrides are checked too.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import LLSMFLOW, REPO
from tests.faults.conftest import write_config


def alias_bomb() -> str:
    """The classic "billion laughs": nine levels of nine aliases, about 600 bytes, ~10^9 strings expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def llsmflow(*args, cwd, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LLSMFLOW), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"llsmflow {command}: error: "), result.stderr
    return lines[0]


COMMANDS = {
    "run": lambda config: ["run", "--configfile", str(config), "--workflow-dir", str(REPO)],
    "status": lambda config: ["status", "--configfile", str(config), "--workflow-dir", str(REPO)],
    "estimate": lambda config: ["estimate", "--configfile", str(config)],
}


@pytest.fixture
def run_dir(tmp_path, small_acquisition) -> Path:
    write_config(tmp_path, small_acquisition)
    return tmp_path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_alias_bomb_fails_fast(run_dir, command):
    config = run_dir / "config.yaml"
    bomb = alias_bomb()
    assert len(bomb) < 700
    config.write_text(bomb, encoding="utf-8")
    start = time.monotonic()
    line = one_error(llsmflow(*COMMANDS[command](config), cwd=run_dir), command)
    assert time.monotonic() - start < 30  # was 88 s and 5.6 GB
    assert str(config) in line and "line 2" in line and "alias" in line and "expected" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_python_tag_refused_and_not_run(run_dir, command):
    config = run_dir / "config.yaml"
    marker = run_dir / "pwned"
    text = config.read_text(encoding="utf-8")
    config.write_text(text + f"extra: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    line = one_error(llsmflow(*COMMANDS[command](config), cwd=run_dir), command)
    assert not marker.exists()
    lineno = len(text.splitlines()) + 1
    assert str(config) in line and f"line {lineno}" in line and "python" in line and "expected" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_invalid_yaml_names_file_and_line(run_dir, command):
    config = run_dir / "config.yaml"
    config.write_text("dataset: small\nraw_dir: [unclosed\ncores: 2\n", encoding="utf-8")
    line = one_error(llsmflow(*COMMANDS[command](config), cwd=run_dir), command)
    assert str(config) in line and "invalid YAML" in line and "line " in line


def test_oversized_config_refused(run_dir):
    config = run_dir / "config.yaml"
    with config.open("a", encoding="utf-8") as handle:
        handle.write("# padding\n" * 120_000)
    line = one_error(llsmflow(*COMMANDS["run"](config), cwd=run_dir), "run")
    assert str(config) in line and "expected at most 1048576 bytes" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_boolean_is_not_a_number(run_dir, command):
    config = run_dir / "config.yaml"
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings["overrides"] = {"dz_um": True}
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    line = one_error(llsmflow(*COMMANDS[command](config), cwd=run_dir), command)
    assert str(config) in line and "overrides.dz_um" in line and "True" in line
    assert "expected type number" in line


def test_command_line_override_is_type_checked(run_dir):
    """`llsmflow run -- --config deconvolution='{iterations: true}'`: the effective config is checked."""
    config = run_dir / "config.yaml"
    result = llsmflow(
        *COMMANDS["run"](config),
        "--",
        "--dry-run",
        "--config",
        "deconvolution={iterations: true}",
        cwd=run_dir,
    )
    line = one_error(result, "run")
    assert "with --config" in line and "deconvolution.iterations" in line and "expected type integer" in line
    assert not (run_dir / "results").exists() and not (run_dir / "work").exists()


def test_second_configfile_after_dashes_refused(run_dir):
    """Snakemake would replace the run's config by a `--configfile` given after `--`: refused, one line."""
    config = run_dir / "config.yaml"
    line = one_error(
        llsmflow(*COMMANDS["run"](config), "--", "--configfile", str(config), cwd=run_dir), "run"
    )
    assert f"--configfile {config} after `--`" in line and "expected `llsmflow run --configfile FILE`" in line
