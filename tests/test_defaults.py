"""Every default is stated once: config/schema.yaml for the workflow; library signatures agree with it.

Each schema default of a processing section is either the default of a named library parameter (checked
to be equal) or listed in ``WORKFLOW_ONLY`` with the reason it has no library counterpart. A schema key
that is neither fails the test, so a new option cannot add a second, silently different default.
"""

import inspect
from pathlib import Path

import pytest
import yaml

from llsmflow.archive.ome_zarr import write_ome_zarr
from llsmflow.decon import BACKENDS, METHODS
from llsmflow.decon.api import deconvolve
from llsmflow.decon.psf import prepare_psf, prepare_psf_for_run
from llsmflow.deskew.shear import deskew
from llsmflow.deskew.stack import deskew_stack
from llsmflow.hpc.cluster import DEFAULTS as DASK_DEFAULTS
from llsmflow.hpc.resources import cached_volume_sizes, volume_sizes
from llsmflow.ingest.read import read_acquisition
from llsmflow.stitch.fusion import fuse_to_zarr
from llsmflow.stitch.optimise import optimise_positions, register_tiles
from llsmflow.stitch.pairwise import register_pair
from llsmflow.track.detect import detect_particles
from llsmflow.track.link import track_particles

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text(encoding="utf-8"))

# (section, key) -> the library parameters that take the same value: (function, parameter name)
LIBRARY = {
    ("deskew", "fill_value"): [(deskew, "fill_value")],
    # which deskew the job calls, and the frame the ingest check prepares each PSF in
    # and the volumes and PSF kernels the resource model sizes jobs with
    ("deskew", "rotate"): [
        (deskew_stack, "rotate"), (read_acquisition, "rotate"), (prepare_psf_for_run, "rotate"),
        (volume_sizes, "rotate"), (cached_volume_sizes, "rotate"),
    ],
    ("deconvolution", "iterations"): [(deconvolve, "iterations")],
    ("deconvolution", "background"): [(deconvolve, "background")],
    ("deconvolution", "psf_background"): [
        (deconvolve, "psf_background"), (prepare_psf, "background"), (prepare_psf_for_run, "background"),
        (read_acquisition, "psf_background"),
        (volume_sizes, "psf_background"), (cached_volume_sizes, "psf_background"),
    ],
    ("deconvolution", "psf_geometry"): [
        (prepare_psf, "geometry"), (prepare_psf_for_run, "geometry"), (volume_sizes, "psf_geometry"),
        (cached_volume_sizes, "psf_geometry"), (read_acquisition, "psf_geometry"),
    ],
    ("deconvolution", "backend"): [(deconvolve, "backend")],
    ("deconvolution", "method"): [(deconvolve, "method")],
    ("deconvolution", "max_memory_gb"): [(deconvolve, "max_memory_gb")],
    ("stitch", "min_quality"): [(register_tiles, "min_quality"), (optimise_positions, "min_quality")],
    ("stitch", "upsample_factor"): [(register_tiles, "upsample_factor"), (register_pair, "upsample_factor")],
    ("stitch", "max_shift_um"): [(register_tiles, "max_shift_um")],
    ("stitch", "blend_width_um"): [(fuse_to_zarr, "blend_width_um")],
    ("stitch", "max_memory_gb"): [(fuse_to_zarr, "max_memory_gb")],
    ("stitch", "chunks"): [(fuse_to_zarr, "chunks")],
    ("track", "diameter_um"): [(track_particles, "diameter_um"), (detect_particles, "diameter_um")],
    ("track", "search_range_um"): [(track_particles, "search_range_um")],
    ("track", "memory"): [(track_particles, "memory")],
    ("track", "min_track_length"): [(track_particles, "min_track_length")],
    ("track", "min_mass"): [(track_particles, "min_mass"), (detect_particles, "min_mass")],
    ("track", "percentile"): [(track_particles, "percentile"), (detect_particles, "percentile")],
    ("archive", "ngff_version"): [(write_ome_zarr, "ngff_version")],
    ("archive", "chunks"): [(write_ome_zarr, "chunks_zyx")],
}

WORKFLOW_ONLY = {
    ("deconvolution", "threads"): "the job's core request; the library's threads=None means every core the "
    "process may use, and the workflow passes the job's threads",
    ("stitch", "reference_channel"): "which tiles the register job reads; the library registers what it is given",
    ("stitch", "reference_timepoint"): "which tiles the register job reads",
    ("track", "channels"): "which channels get a track job",
}

SECTIONS = ("deskew", "deconvolution", "stitch", "track", "archive")


def schema_defaults(section: str) -> dict:
    return {key: spec["default"] for key, spec in SCHEMA["properties"][section]["properties"].items()}


def comparable(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("section", SECTIONS)
def test_each_library_default_equals_the_schema_default(section):
    for key, expected in schema_defaults(section).items():
        if (section, key) in WORKFLOW_ONLY:
            continue
        assert (section, key) in LIBRARY, f"{section}.{key}: no library parameter and not listed as workflow-only"
        for function, name in LIBRARY[(section, key)]:
            default = inspect.signature(function).parameters[name].default
            assert comparable(default) == expected, (
                f"{function.__module__}.{function.__name__}({name}={default!r}) vs {section}.{key}: {expected!r}"
            )


def test_dask_defaults_are_the_schemas():
    assert DASK_DEFAULTS == schema_defaults("dask")


def test_choices_are_the_librarys():
    section = SCHEMA["properties"]["deconvolution"]["properties"]
    assert set(section["method"]["enum"]) == set(METHODS)
    assert set(section["backend"]["enum"]) == {"auto", *BACKENDS}


def test_the_lists_name_real_schema_keys():
    """No stale entry: every listed key exists in the schema (a renamed option must be renamed here)."""
    for section, key in [*LIBRARY, *WORKFLOW_ONLY]:
        assert key in schema_defaults(section), f"{section}.{key}"


# The stage commands restate the defaults in their flags so that `--help` can show them; each is checked
# here against the schema: (subcommand, argparse dest) -> (section, key)
CLI = {
    ("deconvolve", "iterations"): ("deconvolution", "iterations"),
    ("deconvolve", "background"): ("deconvolution", "background"),
    ("deconvolve", "method"): ("deconvolution", "method"),
    ("deconvolve", "backend"): ("deconvolution", "backend"),
    ("deconvolve", "max_memory"): ("deconvolution", "max_memory_gb"),
    ("stitch", "min_quality"): ("stitch", "min_quality"),
    ("stitch", "max_shift_um"): ("stitch", "max_shift_um"),
    ("stitch", "blend_width_um"): ("stitch", "blend_width_um"),
    ("stitch", "max_memory"): ("stitch", "max_memory_gb"),
    ("track", "diameter_um"): ("track", "diameter_um"),
    ("track", "search_range_um"): ("track", "search_range_um"),
    ("track", "memory"): ("track", "memory"),
    ("track", "min_track_length"): ("track", "min_track_length"),
    ("track", "min_mass"): ("track", "min_mass"),
    ("archive", "ngff_version"): ("archive", "ngff_version"),
}


def subcommand_actions() -> dict:
    import argparse

    from llsmflow.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {a.dest: a for a in p._actions} for name, p in sub.choices.items()}


def test_stage_command_flags_default_to_the_schema():
    actions = subcommand_actions()
    for (command, dest), (section, key) in CLI.items():
        flag, expected = actions[command][dest], schema_defaults(section)[key]
        default = flag.default[0] if flag.nargs == "+" and len(flag.default) == 1 else flag.default
        assert default == expected, f"llsmflow {command} {flag.option_strings[0]} {default!r} vs {section}.{key}"
        if flag.choices is not None:
            assert set(flag.choices) == set(SCHEMA["properties"][section]["properties"][key]["enum"])
