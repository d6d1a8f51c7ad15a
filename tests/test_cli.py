"""The command line: each stage runs on real files, and bad input gives one clear line and a non-zero exit."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from llsmflow.io import read_volume, read_volume_description

LLSMFLOW = str(Path(sys.executable).parent / "llsmflow")
REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    return subprocess.run([LLSMFLOW, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_error_line(result, *fragments):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "command", ["synth", "deskew", "deconvolve", "stitch", "track", "archive", "verify", "run"]
)
def test_every_subcommand_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert "usage: llsmflow" in result.stdout


def test_deskew_and_deconvolve_commands(tiny_acquisition, tmp_path):
    raw = sorted((tiny_acquisition / "raw").glob("*_ch0_*000x_000y_000z_0000t.tif"))[0]
    deskewed = tmp_path / "deskewed.ome.tif"
    result = run("deskew", raw, deskewed, "--dx", 0.104, "--dz", 0.3, "--angle", 31.5)
    assert result.returncode == 0, result.stderr
    volume = read_volume(deskewed)
    assert volume.voxel_size_um == pytest.approx((0.3 * np.sin(np.radians(31.5)), 0.104, 0.104))
    assert read_volume_description(deskewed)["frame"] == "objective"

    decon = tmp_path / "decon.ome.tif"
    psf = tiny_acquisition / "raw" / "PSF_ch0_488nm.tif"
    dzp = volume.voxel_size_um[0]
    result = run(
        "deconvolve",
        deskewed,
        decon,
        "--psf",
        psf,
        "--dx",
        0.104,
        "--dz",
        dzp,
        "--dzpsf",
        0.1,
        "--iterations",
        5,
        "--backend",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "backend cpu" in result.stdout
    out = read_volume(decon)
    assert out.data.shape == volume.data.shape
    # deconvolution concentrates intensity: the brightest voxels get brighter relative to the mean
    assert out.data.max() / out.data.mean() > volume.data.max() / volume.data.mean()

    rotated = tmp_path / "rotated.ome.tif"
    result = run("deskew", raw, rotated, "--dx", 0.104, "--dz", 0.3, "--angle", 31.5, "--rotate")
    assert result.returncode == 0, result.stderr
    assert read_volume(rotated).voxel_size_um == pytest.approx((0.104, 0.104, 0.104))


def test_bad_inputs_give_one_clear_line(tiny_acquisition, tmp_path):
    raw = sorted((tiny_acquisition / "raw").glob("*.tif"))[-1]
    one_error_line(
        run(
            "deskew", tmp_path / "missing.tif", tmp_path / "o.tif", "--dx", 0.1, "--dz", 0.3, "--angle", 31.5
        ),
        "missing.tif",
        "file not found",
    )
    one_error_line(
        run("deskew", raw, tmp_path / "o.tif", "--dx", 0.1, "--dz", 0.3, "--angle", 95),
        "angle",
        "expected 0 < |angle| < 90",
    )
    one_error_line(
        run("deskew", raw, tmp_path / "o.tif", "--dx", 0, "--dz", 0.3, "--angle", 31.5), "voxel size"
    )
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(raw.read_bytes()[:5000])
    one_error_line(
        run("deskew", truncated, tmp_path / "o.tif", "--dx", 0.1, "--dz", 0.3, "--angle", 31.5),
        "truncated.tif",
        "expected a readable TIFF",
    )
    assert not (tmp_path / "o.tif").exists()
    flat_psf = tmp_path / "flat_psf.tif"
    import tifffile

    tifffile.imwrite(flat_psf, np.full((9, 9, 9), 100, np.uint16))
    one_error_line(
        run("deconvolve", raw, tmp_path / "d.tif", "--psf", flat_psf, "--dx", 0.1, "--dz", 0.2), "PSF"
    )
    assert not (tmp_path / "d.tif").exists()


def test_run_rejects_config_that_fails_schema(tmp_path, tiny_acquisition):
    config = {"dataset": "x", "raw_dir": str(tiny_acquisition / "raw"), "deconvolution": {"iterations": -3}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    one_error_line(run("run", "--configfile", path, "--workflow-dir", REPO), "deconvolution.iterations", "-3")
    config = {"dataset": "x", "raw_dir": str(tmp_path / "nowhere")}
    path.write_text(yaml.safe_dump(config))
    one_error_line(run("run", "--configfile", path, "--workflow-dir", REPO), "nowhere", "raw data directory")


def test_synth_rejects_bad_tile_grid(tmp_path):
    result = run("synth", tmp_path / "s", "--tiles", "2by1")
    assert result.returncode != 0
    assert "expected NYxNX" in result.stderr


def test_stage_commands_chain(tiny_acquisition, tmp_path):
    """deskew → deconvolve → stitch → archive → track, one file at a time, as a facility engineer would."""
    import json

    import pandas as pd

    from llsmflow.archive import read_ome_zarr
    from llsmflow.ingest import read_acquisition

    acq = read_acquisition(tiny_acquisition / "raw")
    truth = json.loads((tiny_acquisition / "truth" / "tiles.json").read_text())["tiles"]
    dzp = acq.deskewed_voxel_size_um[0]
    fused = []
    for timepoint in range(3):
        rows = []
        for tile in acq.tiles.itertuples():
            raw = acq.sample_path(tile.tile, 0, timepoint)
            deskewed = tmp_path / f"{tile.tile}_t{timepoint}_deskewed.ome.tif"
            decon = tmp_path / f"{tile.tile}_t{timepoint}_decon.ome.tif"
            assert (
                run(
                    "deskew", raw, deskewed, "--dx", acq.dx_um, "--dz", acq.dz_um, "--angle", acq.angle_deg
                ).returncode
                == 0
            )
            result = run(
                "deconvolve",
                deskewed,
                decon,
                "--psf",
                acq.psf_path(0),
                "--dx",
                acq.dx_um,
                "--dz",
                dzp,
                "--dzpsf",
                0.1,
                "--backend",
                "cpu",
            )
            assert result.returncode == 0, result.stderr
            rows.append(
                {
                    "path": decon.name,
                    "tile": tile.tile,
                    "x_um": tile.x_um,
                    "y_um": tile.y_um,
                    "z_um": tile.z_um,
                }
            )
        tiles_csv = tmp_path / f"tiles_t{timepoint}.csv"
        pd.DataFrame(rows).to_csv(tiles_csv, index=False)
        transforms = tmp_path / "transforms.json"  # registered on t0, reused for later timepoints
        out = tmp_path / f"fused_t{timepoint}.zarr"
        result = run("stitch", "--tiles", tiles_csv, "--output", out, "--transforms", transforms)
        assert result.returncode == 0, result.stderr
        fused.append(out)
    registered = json.loads(transforms.read_text())["tiles"]
    first, second = (np.asarray(registered[row["tile"]]["origin_um"]) for row in rows[:2])
    expected = np.asarray(truth["000x_001y_000z"]["origin_um"]) - np.asarray(
        truth["000x_000y_000z"]["origin_um"]
    )
    assert np.all(np.abs((second - first) - expected) < 0.5 * np.asarray(acq.deskewed_voxel_size_um))

    archive = tmp_path / "tiny.ome.zarr"
    result = run(
        "archive",
        *fused,
        "--output",
        archive,
        "--channels",
        1,
        "--timepoints",
        3,
        "--time-interval-s",
        acq.time_interval_s,
        "--channel-names",
        "ch0_488nm",
    )
    assert result.returncode == 0, result.stderr
    image, meta = read_ome_zarr(archive)
    assert image.shape[:2] == (3, 1) and meta["channel_names"] == ["ch0_488nm"]
    assert meta["time_interval_s"] == pytest.approx(acq.time_interval_s)

    tracks_csv = tmp_path / "tracks.csv"
    result = run("track", archive, "--output", tracks_csv, "--channel", 0)
    assert result.returncode == 0, result.stderr
    tracks = pd.read_csv(tracks_csv)
    assert tracks["particle"].nunique() >= 8 and set(tracks["frame"]) == {0, 1, 2}
    assert (tmp_path / "tracks.parquet").is_file()


# ---------------------------------------------------------------------------------------------- help


def _parsers():
    """Every parser of the command line, with the words that reach it: [((), llsmflow), (("run",), …), …]."""
    import argparse

    from llsmflow.cli import build_parser

    found, todo = [], [((), build_parser())]
    while todo:
        words, parser = todo.pop(0)
        found.append((words, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [((*words, name), sub) for name, sub in action.choices.items()]
    return found


def _subcommands(parser) -> dict:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


UNITS = ("µm", " s", "s)", "GB", "degree", "unitless", "counts", "intensity units", "(nm)")


def test_every_argument_has_help_with_its_default_and_unit():
    """Each argument says what it is; each optional one what happens when it is not given (its default,
    shown from the flag's default, which tests/test_defaults.py checks against the schema); each number
    with a physical meaning its unit."""
    import argparse

    from llsmflow.cli.help_format import HelpFormatter

    checked = 0
    for words, parser in _parsers():
        formatter = HelpFormatter(prog="llsmflow")
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            name = " ".join(["llsmflow", *words, action.option_strings[0] if action.option_strings else action.dest])
            text = formatter._get_help_string(action)
            assert text and len(text) > 10, f"{name}: no help text"
            optional = action.option_strings and not action.required
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if (optional and not flag) or action.nargs in ("?", "*", argparse.REMAINDER):
                assert "default" in text.lower(), f"{name}: help does not say its default: {text!r}"
            if action.type is float:
                assert any(unit in text for unit in UNITS), f"{name}: no unit in {text!r}"
            checked += 1
    assert checked > 80


def test_every_subcommand_shows_an_example():
    for words, parser in _parsers():
        if not words:
            continue
        epilog = parser.epilog or ""
        assert epilog.startswith("example"), f"llsmflow {' '.join(words)}: no example"
        assert " ".join(["llsmflow", *words]) in epilog, (words, epilog)
        assert f"llsmflow {' '.join(words)}" in parser.format_help()


def test_help_has_no_markup_and_names_only_commands_that_exist():
    import re

    root = _parsers()[0][1]
    for words, parser in _parsers():
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, (words, text)
        for mention in re.finditer(r"\bllsmflow((?: [a-z][a-z-]*)+)", text):
            node = root
            for word in mention.group(1).split():
                commands = _subcommands(node)
                if not commands:
                    break
                assert word in commands, f"`llsmflow{mention.group(1)}` in the help of {words}: no command {word!r}"
                node = commands[word]
        # a group's one-line help lists only its own actions ("container: recipe, build, pin, info")
        import argparse

        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            for choice in action._choices_actions:
                group = _subcommands(action.choices[choice.dest])
                if group and ":" in (choice.help or ""):
                    listed = re.findall(r"[a-z]+", choice.help.split(":", 1)[1].split("(")[0])
                    assert set(listed) <= set(group), (choice.dest, listed, sorted(group))


def test_help_defaults_are_the_libraries():
    """Defaults the stage flags state that tests/test_defaults.py does not list: the synthetic acquisition's
    (SynthParams) and the deconvolution choices (llsmflow.decon.backends)."""
    from llsmflow.decon.backends import BACKENDS, DEFAULT_ITERATIONS, METHODS
    from llsmflow.synth import SynthParams

    commands = {words: parser for words, parser in _parsers()}
    synth = {a.dest: a for a in commands[("synth",)]._actions}
    params = SynthParams()
    assert synth["tiles"].default == (params.tiles_y, params.tiles_x)
    assert synth["channels"].default == params.channels and synth["timepoints"].default == params.timepoints
    assert synth["angle"].default == params.angle_deg and synth["seed"].default == params.seed
    decon = {a.dest: a for a in commands[("deconvolve",)]._actions}
    assert set(decon["backend"].choices) == {"auto", *BACKENDS} and set(decon["method"].choices) == set(METHODS)
    assert all(f"{n} for {m}" in decon["iterations"].help for m, n in DEFAULT_ITERATIONS.items())
    estimate = {a.dest: a for a in commands[("estimate",)]._actions}
    assert set(estimate["backend"].choices) == {"auto", *BACKENDS}
