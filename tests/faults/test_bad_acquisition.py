"""Bad acquisitions (issue 17, cases 2, 7, 8 and 9 in part): what the metadata declares against what the files
provide, wrong types in acquisition.json and overrides, 2-D PSFs, stack symlinks leaving the raw directory,
values that do not fit float32, empty axes, and a QC mosaic that round-off cannot move.

Each case runs through a real entry point on a damaged copy of a real synthetic acquisition: ``llsmflow run``
(exit 2, one line naming the file, the field or item, the value and the expectation, before any job runs,
nothing that looks complete, the raw files unchanged), or the library call and step subcommand concerned.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings

import numpy as np
import pytest
import tifffile

from llsmflow.errors import LlsmflowError
from llsmflow.ingest import read_acquisition
from tests.conftest import LLSMFLOW, sha256
from tests.faults.conftest import STACK_PREFIX, copy_acquisition, run_workflow, write_config
from tests.faults.test_bad_input import assert_nothing_complete, assert_one_clear_error

# ------------------------------------------------------------------------------------------------ helpers


def _metadata(raw):
    return json.loads((raw / "acquisition.json").read_text(encoding="utf-8"))


def _write_metadata(raw, meta) -> None:
    (raw / "acquisition.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _stacks(raw, pattern: str = "*"):
    return sorted(raw.glob(f"{STACK_PREFIX}{pattern}.tif"))


def _psf(raw):
    return raw / _metadata(raw)["channels"][0]["psf"]


def _raw_state(raw) -> dict:
    """Checksums and modification times of every file of the raw directory (links not followed)."""
    return {
        p.name: (os.readlink(p) if p.is_symlink() else sha256(p), p.lstat().st_mtime_ns)
        for p in sorted(raw.iterdir())
    }


# ------------------------------------------------------------------------------- damage, one case each
# Each takes a writable copy of the small acquisition (1 channel, timepoints 0..2, tiles 000x_000y and
# 000x_001y) and returns what the error line must hold.


def timepoint_missing_everywhere(raw):
    for stack in _stacks(raw, "*stack0001_*"):
        stack.unlink()
    return str(raw), "no stack at all for timepoint(s) 1 of the 3 declared in acquisition.json"


def timepoints_missing_undeclared(raw):
    """Without a `timepoints` declaration a gap is still named (the archive would mislabel later frames)."""
    meta = _metadata(raw)
    del meta["timepoints"]
    _write_metadata(raw, meta)
    for stack in _stacks(raw, "*stack0001_*"):
        stack.unlink()
    return str(raw), "no stack at all for timepoint(s) 1 (stacks found for timepoints 0, 2;"


def declared_channel_without_stacks(raw):
    meta = _metadata(raw)
    second = dict(meta["channels"][0], index=1, name="ch1_560nm", emission_nm=605)
    meta["channels"].append(second)
    _write_metadata(raw, meta)
    return str(raw), "no stack at all for channel(s) 1 (declared in acquisition.json)"


def declared_tile_without_stacks(raw):
    for stack in _stacks(raw, "*_001y_*"):
        stack.unlink()
    return str(raw), "no stack at all for tile(s) 000x_001y_000z (declared in acquisition.json)"


def stacks_beyond_declared_timepoints(raw):
    meta = _metadata(raw)
    meta["timepoints"] = 2
    _write_metadata(raw, meta)
    return str(raw), "timepoint(s) 2 lie beyond the 2 timepoint(s) declared", "expected timepoints 0..1"


def _field(key, value, *needles, channel: bool = False, tile: bool = False):
    def change(raw):
        meta = _metadata(raw)
        (meta["channels"][0] if channel else meta["tiles"][0] if tile else meta)[key] = value
        _write_metadata(raw, meta)
        return ("acquisition.json", *needles)

    change.__name__ = f"{'channel_' if channel else 'tile_' if tile else ''}{key}_{value}"
    return change


def _whole_file(text, *needles):
    def change(raw):
        (raw / "acquisition.json").write_text(text, encoding="utf-8")
        return ("acquisition.json", *needles)

    change.__name__ = f"file_{text[:12]}"
    return change


def two_d_psf(raw):
    psf = _psf(raw)
    plane = tifffile.imread(psf).max(axis=0)
    tifffile.imwrite(psf, plane)
    return psf.name, f"PSF has shape (1, {plane.shape[0]}, {plane.shape[1]})", "3-D bead stack"


def stack_symlink_outside(raw):
    stack = _stacks(raw)[1]
    outside = raw.parent / "elsewhere" / stack.name
    outside.parent.mkdir()
    stack.rename(outside)
    stack.symlink_to(outside)
    return (
        stack.name,
        "symbolic link",
        str(outside),
        "outside the raw data directory",
        "expected stacks inside",
    )


def psf_symlink_outside(raw):
    psf = _psf(raw)
    outside = raw.parent / "elsewhere psf" / psf.name
    outside.parent.mkdir()
    psf.rename(outside)
    psf.symlink_to(outside)
    return "acquisition.json", psf.name, "escapes the raw data directory"


def zero_size_axis(raw):
    stack = _stacks(raw)[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tifffile: "writing zero-size array"
        tifffile.imwrite(stack, np.zeros((0, 64, 96), np.uint16))
    return stack.name, "(0, 64, 96)", "an axis of size 0", "at least one voxel"


def regex_group_not_digits(raw):
    meta = _metadata(raw)
    meta["file_regex"] = meta["file_regex"].replace(r"_ch(?P<channel>\d+)_", r"_(?P<channel>ch\d+)_")
    _write_metadata(raw, meta)
    return _stacks(raw)[0].name, "file_regex group channel matched 'ch0'", "expected digits"


def emission_missing(raw):
    meta = _metadata(raw)
    del meta["channels"][0]["emission_nm"]
    _write_metadata(raw, meta)
    return "acquisition.json", "channels[0] has no emission_nm", "wavelength in nm"


REGEX = "^(?P<prefix>.*?)_ch(?P<channel>\\d+)_"
CASES = [
    # case 2: declared vs found
    timepoint_missing_everywhere,
    timepoints_missing_undeclared,
    declared_channel_without_stacks,
    declared_tile_without_stacks,
    stacks_beyond_declared_timepoints,
    # case 7: booleans are not numbers, a PSF is 3-D
    _field("dz_um", True, "dz_um = true (a boolean) has the wrong type", "expected a length in µm"),
    _field("angle_deg", False, "angle_deg = false (a boolean)", "expected an angle in degrees"),
    two_d_psf,
    # case 8: acquisition.json of the wrong shape or types
    _whole_file("42", "holds 42 (a number)", "expected a JSON object of acquisition fields"),
    _whole_file("null", "holds null", "expected a JSON object"),
    _whole_file('{"dz_um": NaN}', "holds NaN, which is not a JSON number", "expected finite numbers"),
    _field(
        "channels", "ch0", 'channels = "ch0" (text) has the wrong type', "expected a list of channel entries"
    ),
    _field("ix", "zero", 'tiles[0].ix = "zero" (text)', "expected a tile index (an integer >= 0)", tile=True),
    _field("psf", 5, "channels[0].psf = 5 (a number)", "expected a PSF file name", channel=True),
    _field("camera_offset", "auto", 'camera_offset = "auto" (text)', "expected the camera's dark level"),
    _field("camera_offset", -5, "camera_offset = -5 (a number) is too small", ">= 0"),
    _field("timepoints", 2.5, "timepoints = 2.5 (a number)", "an integer >= 1"),
    _field("raw_shape_zyx", [32, 64], "raw_shape_zyx = [32, 64] (a list) has 2 item(s)", "three integers"),
    _field("file_regex", "([", 'file_regex = "([" (text) is not a valid regular expression', "named groups"),
    _field("file_regex", REGEX, "has no named group timepoint", "(?P<timepoint>\\d+)"),
    _field("file_regex", ".*", "has no named group channel or timepoint", "expected named groups"),
    regex_group_not_digits,
    _field(
        "emission_nm",
        0.51,
        "channels[0].emission_nm = 0.51 (a number) is too small",
        "200 and 2000",
        channel=True,
    ),
    _field("excitation_nm", "488nm", 'channels[0].excitation_nm = "488nm" (text)', "in nm", channel=True),
    emission_missing,
    _field("name", "", 'channels[0].name = "" (text) is empty', "non-empty", channel=True),
    # case 9: symlinks leaving the raw directory (stacks as PSFs), an empty axis
    stack_symlink_outside,
    psf_symlink_outside,
    zero_size_axis,
]


@pytest.mark.parametrize("damage", CASES, ids=lambda f: f.__name__)
def test_run_refuses_bad_acquisition(damage, small_acquisition, tmp_path):
    """`llsmflow run` exits 2 before any job runs, with one line naming the file, the field or item, the value
    and the expectation; nothing looks complete; the raw files are as they were."""
    raw = copy_acquisition(small_acquisition, tmp_path / "raw copy")
    run_dir = tmp_path / "run"
    write_config(run_dir, raw)
    needles = damage(raw)
    before = _raw_state(raw)
    result = run_workflow(run_dir, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_one_clear_error(result, "llsmflow run: error:", *needles)
    assert "Traceback" not in result.stderr
    assert not (run_dir / "work").exists()  # refused before any step ran
    assert_nothing_complete(run_dir)
    assert _raw_state(raw) == before


def test_override_true_is_not_a_number(small_acquisition, tmp_path):
    """`overrides: {dz_um: true}` is refused by the config check (`llsmflow run`) and by the library."""
    run_dir = tmp_path / "run"
    write_config(run_dir, small_acquisition, overrides={"dz_um": True})
    result = run_workflow(run_dir, timeout=300)
    assert result.returncode == 2
    assert_one_clear_error(result, "llsmflow run: error:", "config.yaml", "overrides.dz_um", "True")
    with pytest.raises(LlsmflowError, match=r"override dz_um = True is not a number; expected a number"):
        read_acquisition(small_acquisition, overrides={"dz_um": True}, check_files=False)


# ------------------------------------------------------------------------------- the library, directly


def test_missing_timepoint_is_one_line_naming_it(small_acquisition, tmp_path):
    """Issue 17 case 2: declared `timepoints: 3`, files for 0 and 2 only, in every tile: one line listing
    timepoint 1 (and only a line: no partial table is returned)."""
    raw = copy_acquisition(small_acquisition, tmp_path / "raw")
    timepoint_missing_everywhere(raw)
    with pytest.raises(LlsmflowError) as info:
        read_acquisition(raw, check_files=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{raw}: no stack at all for timepoint(s) 1 ")
    assert "expected a stack for every tile, channel and timepoint 0..2" in message


def test_missing_stacks_here_and_there_are_each_named(small_acquisition, tmp_path):
    raw = copy_acquisition(small_acquisition, tmp_path / "raw")
    gone = [_stacks(raw, "*stack0000_*_001y_*")[0], _stacks(raw, "*stack0002_*_000y_*")[0]]
    for stack in gone:
        stack.unlink()
    with pytest.raises(LlsmflowError) as info:
        read_acquisition(raw, check_files=False)
    assert (
        "2 stack(s) missing, first: tile 000x_001y_000z, channel 0, timepoint 0; "
        "then: tile 000x_000y_000z, channel 0, timepoint 2; expected every tile × channel × timepoint"
    ) in str(info.value)


def test_complete_acquisition_records_its_timepoints(small_acquisition):
    acq = read_acquisition(small_acquisition, check_files=False)
    assert acq.declared_timepoints == 3 and acq.timepoints == [0, 1, 2]


def test_oversized_metadata_is_refused_unread(small_acquisition, tmp_path):
    raw = copy_acquisition(small_acquisition, tmp_path / "raw")
    with (raw / "acquisition.json").open("r+b") as fh:
        fh.truncate(16 * 2**20 + 1)  # sparse: nothing is read
    with pytest.raises(LlsmflowError, match=r"acquisition.json: is 16777217 bytes; expected .* at most"):
        read_acquisition(raw)


def test_prepare_psf_refuses_a_2d_psf():
    from llsmflow.decon import prepare_psf

    z, y, x = np.mgrid[:1, :21, :21]
    plane = 100 + 1000 * np.exp(-((y - 10) ** 2 + (x - 10) ** 2) / 8.0)
    with pytest.raises(LlsmflowError, match=r"PSF has shape \(1, 21, 21\) .*expected a 3-D bead stack"):
        prepare_psf(plane, (0.1, 0.1, 0.1), (0.1, 0.1, 0.1))


# ------------------------------------------------------------------------------- float32 overflow, raw file


def _cli(*args):
    return subprocess.run([str(LLSMFLOW), *map(str, args)], capture_output=True, text=True, timeout=300)


def _overflowing(stack, out):
    data = tifffile.imread(stack).astype(np.float64)
    data[3, 10, 20] = 1e300
    tifffile.imwrite(out, data)


def test_deskew_reports_float64_overflow_on_the_raw_file(small_acquisition, tmp_path):
    raw_stack = tmp_path / "overflow é.tif"
    _overflowing(_stacks(small_acquisition)[0], raw_stack)
    before = sha256(raw_stack)
    result = _cli(
        "deskew", raw_stack, tmp_path / "out.tif", "--dx", "0.104", "--dz", "0.3", "--angle", "31.5"
    )
    assert result.returncode == 2
    assert_one_clear_error(
        result, "llsmflow deskew: error:", str(raw_stack), "float64 values up to 1e+300", "fit float32"
    )
    assert not (tmp_path / "out.tif").exists() and not list(tmp_path.glob(".*partial"))
    assert sha256(raw_stack) == before


def test_workflow_reports_float64_overflow_on_the_raw_file(small_acquisition, tmp_path):
    """The header check passes (float64 is a real dtype); the deskew_deconvolve job then names the RAW stack,
    not a deskewed volume with infinite voxels."""
    raw = copy_acquisition(small_acquisition, tmp_path / "raw")
    stack = _stacks(raw)[4]
    _overflowing(stack, stack)
    before = _raw_state(raw)
    run_dir = tmp_path / "run"
    write_config(run_dir, raw)
    result = run_workflow(run_dir, "--", "--until", "deskew_deconvolve", timeout=600)
    line = assert_one_clear_error(result, "llsmflow run: error:", stack.name, "beyond float32's largest")
    assert "deskewed" not in line.split(":")[1]
    assert_nothing_complete(run_dir)
    assert _raw_state(raw) == before


# ------------------------------------------------------------------------------- QC mosaic under round-off


def test_mosaic_png_does_not_move_under_round_off(tmp_path):
    """Tile origins (and so the fused origin) that differ by 1e-9 µm, as a re-registration after a resume
    gives: byte-identical PNGs."""
    from llsmflow.qc.previews import save_mosaic

    rng = np.random.default_rng(0)
    projection = rng.poisson(50, (120, 170)).astype(np.float32)
    voxel = (0.1565, 0.104, 0.104)
    shape = (32, 64, 96)
    origins = {"000x_000y_000z": (0.0, 0.0, 0.0), "000x_001y_000z": (0.0183, 5.61283, 0.377129)}
    pairs = [{"a": "000x_000y_000z", "b": "000x_001y_000z", "quality": 0.93, "used": True}]
    digests = []
    for delta in (0.0, 1e-9, -1e-9):
        tiles = {name: (tuple(v + delta for v in origin), shape) for name, origin in origins.items()}
        fused_origin = tuple(min(o[i] for o, _ in tiles.values()) for i in range(3))
        out = tmp_path / f"mosaic {delta}.png"
        save_mosaic(projection, fused_origin, voxel, tiles, out, title="mosaic", pairs=pairs)
        digests.append(sha256(out))
    assert digests[0] == digests[1] == digests[2]
