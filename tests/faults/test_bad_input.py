"""Bad input: one clear error line naming the file, the value and the expectation; non-zero exit; no output
that looks complete. Every case goes through a real entry point: ``llsmflow run`` (the whole workflow, on a
damaged copy of a real acquisition) or an ``llsmflow`` step subcommand on one damaged file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import LLSMFLOW, REPO
from tests.faults.conftest import (
    DATASET,
    STACK_PREFIX,
    copy_acquisition,
    run_workflow,
    write_config,
)

# ------------------------------------------------------------------------------------------------ helpers


def assert_one_clear_error(result, prefix: str, *needles: str) -> str:
    """Exactly one line of stderr starts with ``prefix`` and holds every needle; the exit status is non-zero.

    Returns that line.
    """
    assert result.returncode != 0, f"exit 0 on bad input:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one line starting {prefix!r}:\n{result.stderr[-4000:]}"
    line = lines[0]
    assert "Traceback" not in result.stderr.split(line)[0][-200:]
    for needle in needles:
        assert needle in line, f"{needle!r} not in the error line:\n{line}"
    assert "expected" in line, line
    return line


def assert_nothing_complete(run_dir: Path) -> None:
    results = run_dir / "results" / DATASET
    assert not (results / "provenance" / "run-record.json").exists()
    assert not (results / f"{DATASET}.ome.zarr").exists()


def _metadata(raw: Path) -> dict:
    return json.loads((raw / "acquisition.json").read_text(encoding="utf-8"))


def _write_metadata(raw: Path, meta: dict) -> None:
    (raw / "acquisition.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _stacks(raw: Path) -> list[Path]:
    return sorted(raw.glob(f"{STACK_PREFIX}*.tif"))


def _psf(raw: Path) -> Path:
    return raw / _metadata(raw)["channels"][0]["psf"]


# ------------------------------------------------------------------------------- damage, one case each
# Each returns (what to look for in the error line...). `raw` is a writable copy of the small acquisition.


def truncated_stack(raw, run_dir):
    stack = _stacks(raw)[2]
    data = stack.read_bytes()
    stack.write_bytes(data[: len(data) // 2])  # an interrupted copy from the instrument
    return stack.name, "truncated", str(len(data) // 2)


def complex_stack(raw, run_dir):
    stack = _stacks(raw)[1]
    tifffile.imwrite(stack, np.zeros((32, 64, 96), np.complex64))
    return stack.name, "complex64", "integer or floating point"


def four_d_stack(raw, run_dir):
    stack = _stacks(raw)[0]
    tifffile.imwrite(stack, np.zeros((32, 2, 64, 96), np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    return stack.name, "ZCYX", "(32, 2, 64, 96)", "3-D ZYX"


def two_d_stack(raw, run_dir):
    stack = _stacks(raw)[3]
    tifffile.imwrite(stack, np.zeros((64, 96), np.uint16))
    return stack.name, "(1, 64, 96)", "(32, 64, 96)"


def missing_psf(raw, run_dir):
    psf = _psf(raw)
    psf.unlink()
    return psf.name, "not found"


def psf_larger_than_volume(raw, run_dir):
    # a bead blurred over ~±6 µm in z: 75 planes on the deskewed grid, the volume has 32
    z, y, x = np.mgrid[:161, :41, :41].astype(np.float32)
    bead = 1000 * np.exp(-((z - 80) ** 2) / (2 * 20.0**2) - ((y - 20) ** 2 + (x - 20) ** 2) / (2 * 3.0**2))
    tifffile.imwrite(_psf(raw), (100 + bead).astype(np.uint16))
    return _psf(raw).name, "larger than the deskewed volume", "(32, 64, "


def psf_without_signal(raw, run_dir):
    noise = np.random.default_rng(0).poisson(100, size=(61, 31, 31)).astype(np.uint16)
    tifffile.imwrite(_psf(raw), noise)
    return _psf(raw).name, "no signal above background"


def psf_with_nan(raw, run_dir):
    psf = tifffile.imread(_psf(raw)).astype(np.float32)
    psf[30, 15, 15] = np.nan
    tifffile.imwrite(_psf(raw), psf)
    return _psf(raw).name, "NaN or infinite"


def _set(key, value, *needles):
    def change(raw, run_dir):
        meta = _metadata(raw)
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
        _write_metadata(raw, meta)
        return ("acquisition.json", key, *needles)

    change.__name__ = f"{key}_{value}"
    return change


def duplicated_sample(raw, run_dir):
    stack = _stacks(raw)[0]
    twin = raw / stack.name.replace("stack0000", "stack00")  # another name for timepoint 0
    twin.write_bytes(stack.read_bytes())
    return "two files map to sample", stack.name, twin.name


def missing_stack(raw, run_dir):
    stack = _stacks(raw)[-1]
    stack.unlink()
    return str(raw), "1 stack(s) missing", "timepoint 2"


def psf_escaping_raw_dir(raw, run_dir):
    meta = _metadata(raw)
    outside = raw.parent / "PSF outside.tif"
    outside.write_bytes(_psf(raw).read_bytes())
    meta["channels"][0]["psf"] = "../PSF outside.tif"
    _write_metadata(raw, meta)
    return "acquisition.json", "'../PSF outside.tif'", "escapes the raw data directory"


def empty_directory(raw, run_dir):
    for path in raw.iterdir():
        path.unlink()
    return str(raw), "acquisition metadata file not found"


def no_stacks(raw, run_dir):
    for path in _stacks(raw):
        path.unlink()
    return str(raw), "no raw stacks match"


def missing_raw_dir(raw, run_dir):
    gone = raw.parent / "not mounted"
    write_config(run_dir, gone)
    return str(gone), "raw data directory not found"


def channel_without_psf(raw, run_dir):
    meta = _metadata(raw)
    del meta["channels"][0]["psf"]
    _write_metadata(raw, meta)
    return "acquisition.json", "channel 0 names no PSF file"


def zero_psf_voxel_size(raw, run_dir):
    meta = _metadata(raw)
    meta["channels"][0]["psf_voxel_size_um"] = [0.1, 0.0, 0.104]
    _write_metadata(raw, meta)
    return "acquisition.json", "channel 0 psf_voxel_size_um (0.1, 0.0, 0.104)", "positive"


def _config(changes, *needles):
    def change(raw, run_dir):
        write_config(run_dir, raw, **changes)
        return ("config.yaml", *needles)

    change.__name__ = "config_" + "_".join(changes)
    return change


PREFLIGHT_CASES = [
    truncated_stack,
    complex_stack,
    four_d_stack,
    two_d_stack,
    missing_psf,
    psf_larger_than_volume,
    psf_without_signal,
    psf_with_nan,
    _set("dz_um", 0, "(0.0, 0.104, 0.104)", "positive"),
    _set("dx_um", -0.104, "-0.104", "positive"),
    _set("dz_um", None, "is missing"),
    _set("angle_deg", 95, "95", "0 < |angle| < 90"),
    _set("angle_deg", 0, "= 0", "0 < |angle| < 90"),
    duplicated_sample,
    missing_stack,
    psf_escaping_raw_dir,
    empty_directory,
    no_stacks,
    missing_raw_dir,
    channel_without_psf,
    zero_psf_voxel_size,
    _config(
        {"deconvolution": {"iterations": 0}}, "deconvolution.iterations", "0 is less than the minimum of 1"
    ),
    _config({"deconvolution": {"iteratons": 5}}, "config key deconvolution", "'iteratons' was unexpected"),
    _config({"overrides": {"dz_um": -0.3}}, "config key overrides.dz_um", "-0.3"),
    _config({"overrides": {"angle_deg": 120}}, "config key overrides.angle_deg", "120"),
]


@pytest.mark.parametrize("damage", PREFLIGHT_CASES, ids=lambda f: f.__name__)
def test_run_refuses_bad_input(damage, small_acquisition, tmp_path):
    """`llsmflow run` stops before any step with one line naming the file, the value and the expectation."""
    raw = copy_acquisition(small_acquisition, tmp_path / "raw copy")
    run_dir = tmp_path / "run"
    write_config(run_dir, raw)
    needles = damage(raw, run_dir)
    result = run_workflow(run_dir, timeout=300)
    assert result.returncode == 2
    assert_one_clear_error(result, "llsmflow run: error:", *needles)
    assert not (run_dir / "work").exists()  # refused before any step ran
    assert_nothing_complete(run_dir)


def test_channels_with_inconsistent_shapes(tiny_acquisition, tmp_path):
    """Channel 1's stacks narrower than channel 0's: refused, naming the first odd stack and both shapes."""
    raw = copy_acquisition(tiny_acquisition / "raw", tmp_path / "raw")
    for stack in sorted(raw.glob("Scan_*_ch1_*.tif")):
        tifffile.imwrite(stack, tifffile.imread(stack)[:, :, :90])
    run_dir = tmp_path / "run"
    write_config(run_dir, raw)
    result = run_workflow(run_dir, timeout=300)
    first = sorted(raw.glob("Scan_*_ch1_*.tif"))[0]
    assert_one_clear_error(
        result, "llsmflow run: error:", first.name, "channel 1", "(32, 64, 90)", "expected (32, 64, 96)"
    )
    assert_nothing_complete(run_dir)


def test_nan_voxels_stop_the_workflow(small_acquisition, tmp_path):
    """A raw stack with NaN voxels passes the header checks; its deskew_deconvolve job fails, and `llsmflow
    run` ends with one line naming the stack, no archive, no run record and no volume of the failed job (the
    volumes of its timepoint written before the bad one are removed with it)."""
    raw = copy_acquisition(small_acquisition, tmp_path / "raw")
    stack = _stacks(raw)[4]
    data = tifffile.imread(stack).astype(np.float32)
    data[5, 10, 20] = np.nan
    tifffile.imwrite(stack, data)
    run_dir = tmp_path / "run"
    write_config(run_dir, raw)
    result = run_workflow(run_dir, "--", "--until", "deskew_deconvolve", timeout=600)
    assert_one_clear_error(result, "llsmflow run: error:", stack.name, "NaN or infinite")
    assert_nothing_complete(run_dir)
    match = re.search(r"_ch(\d+)_.*stack(\d+)_.*_(\d+)x_(\d+)y_(\d+)z_", stack.name)
    channel, timepoint, ix, iy, iz = (int(g) for g in match.groups())
    sample = f"{ix:03d}x_{iy:03d}y_{iz:03d}z-ch{channel}-t{timepoint:04d}"
    deconvolved = run_dir / "work" / DATASET / "deconvolved"
    assert not list(deconvolved.glob(f"*{sample}*")), "the failed step left an output"
    assert not list(deconvolved.glob(f"*-t{timepoint:04d}.*")), "the failed job left a volume of its timepoint"


# ------------------------------------------------------------------------------- step subcommands


def _stack_file(tmp_path, data, name="stack é.tif"):
    path = tmp_path / name
    tifffile.imwrite(path, data)
    return path


def _cli(*args):
    return subprocess.run([str(LLSMFLOW), *map(str, args)], capture_output=True, text=True, timeout=300)


DESKEW = ("--dx", "0.104", "--dz", "0.3", "--angle", "31.5")


@pytest.fixture
def raw_stack(small_acquisition):
    return _stacks(small_acquisition)[0]


def test_deskew_truncated(raw_stack, tmp_path):
    data = raw_stack.read_bytes()
    bad = tmp_path / "cut short.tif"
    bad.write_bytes(data[: len(data) * 2 // 3])
    result = _cli("deskew", bad, tmp_path / "out.tif", *DESKEW)
    assert_one_clear_error(result, "llsmflow deskew: error:", str(bad), "truncated")
    assert not (tmp_path / "out.tif").exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    "data, needles",
    [
        (np.full((8, 16, 16), np.inf, np.float32), ("NaN or infinite",)),
        (np.zeros((8, 16, 16), np.complex64), ("complex64", "integer or floating point")),
        (np.zeros((16, 16), np.uint16), ("(1, 16, 16)", "at least 2 planes")),
        (np.zeros((3, 8, 16, 16), np.uint16), ("3 entries along T", "expected one")),
    ],
    ids=["inf", "complex", "2-D", "4-D"],
)
def test_deskew_bad_stack(data, needles, tmp_path):
    path = _stack_file(tmp_path, data)
    if data.ndim == 4:
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    result = _cli("deskew", path, tmp_path / "out.tif", *DESKEW)
    assert_one_clear_error(result, "llsmflow deskew: error:", str(path), *needles)
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize(
    "option, value, needles",
    [
        ("--angle", "95", ("95", "0 < |angle| < 90")),
        ("--angle", "0", ("0.0°", "0 < |angle| < 90")),
        ("--dz", "0", ("(0.0, 0.104, 0.104)", "positive")),
        ("--dx", "-0.1", ("-0.1", "positive")),
    ],
)
def test_deskew_bad_geometry(raw_stack, option, value, needles, tmp_path):
    args = list(DESKEW)
    args[args.index(option) + 1] = value
    result = _cli("deskew", raw_stack, tmp_path / "out.tif", *args)
    assert_one_clear_error(result, "llsmflow deskew: error:", raw_stack.name, *needles)
    assert not (tmp_path / "out.tif").exists()


@pytest.fixture
def deskewed(raw_stack, tmp_path_factory):
    out = tmp_path_factory.mktemp("deskewed") / "deskewed.tif"
    result = _cli("deskew", raw_stack, out, *DESKEW)
    assert result.returncode == 0, result.stderr
    return out


DECON = ("--dx", "0.104", "--dz", "0.1565", "--dxpsf", "0.104", "--dzpsf", "0.1", "--iterations", "2")


def test_deconvolve_missing_psf(deskewed, tmp_path):
    psf = tmp_path / "no such psf.tif"
    result = _cli("deconvolve", deskewed, tmp_path / "out.tif", "--psf", psf, *DECON)
    assert_one_clear_error(result, "llsmflow deconvolve: error:", str(psf), "not found")
    assert not (tmp_path / "out.tif").exists()


def test_deconvolve_psf_without_signal(deskewed, tmp_path):
    psf = _stack_file(tmp_path, np.random.default_rng(1).poisson(100, (41, 31, 31)).astype(np.uint16))
    result = _cli("deconvolve", deskewed, tmp_path / "out.tif", "--psf", psf, *DECON)
    assert_one_clear_error(result, "llsmflow deconvolve: error:", str(psf), "no signal above background")
    assert not (tmp_path / "out.tif").exists()


def test_deconvolve_psf_larger_than_volume(small_acquisition, deskewed, tmp_path):
    volume = tifffile.imread(deskewed)[:6]  # 6 planes; the PSF spans more once on the data grid
    thin = _stack_file(tmp_path, volume, "thin volume.tif")
    psf = _psf(small_acquisition)
    result = _cli("deconvolve", thin, tmp_path / "out.tif", "--psf", psf, *DECON)
    assert_one_clear_error(
        result, "llsmflow deconvolve: error:", str(psf), "larger than the volume (6, 64,", "z: "
    )
    assert not (tmp_path / "out.tif").exists()


def test_deconvolve_nan_volume(small_acquisition, deskewed, tmp_path):
    volume = tifffile.imread(deskewed)
    volume[3, 4, 5] = np.nan
    bad = _stack_file(tmp_path, volume, "nan volume.tif")
    result = _cli("deconvolve", bad, tmp_path / "out.tif", "--psf", _psf(small_acquisition), *DECON)
    assert_one_clear_error(result, "llsmflow deconvolve: error:", str(bad), "NaN or infinite")
    assert not (tmp_path / "out.tif").exists()


def test_plain_snakemake_checks_files_in_the_ingest_step(small_acquisition, tmp_path):
    """Without `llsmflow run`, the ingest step runs the same file checks (the workflow's parse does not, as
    every cluster job parses it again): a truncated stack fails the ingest job, named in its log."""
    raw = copy_acquisition(small_acquisition, tmp_path / "raw")
    stack = _stacks(raw)[2]
    stack.write_bytes(stack.read_bytes()[:100_000])
    run_dir = tmp_path / "run"
    write_config(run_dir, raw)
    snakemake = Path(LLSMFLOW).parent / "snakemake"
    result = subprocess.run(
        [str(snakemake), "--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml"]
        + ["--cores", "1", "--until", "ingest"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    log = (run_dir / "work" / DATASET / "logs" / "ingest.log").read_text(encoding="utf-8")
    failed = [line for line in log.splitlines() if "step ingest failed:" in line]
    assert len(failed) == 1 and stack.name in failed[0] and "truncated" in failed[0], log
    assert not (run_dir / "work" / DATASET / "samples.tsv").exists()
