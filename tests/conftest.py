"""Shared fixtures: a tiny synthetic acquisition, generated once per test session."""

import os
from pathlib import Path

import pytest

from llsmflow.synth import SynthParams, generate


def _find_real_data() -> Path:
    """The shared real LLSM samples: $LLSMFLOW_REAL_DATA, else ../shared/data/real beside the checkout."""
    candidates = [
        os.environ.get("LLSMFLOW_REAL_DATA"),
        Path(__file__).resolve().parents[2] / "shared/data/real",
        "/work/shared/data/real",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


REAL_DATA = _find_real_data()


def tiny_params(**overrides) -> SynthParams:
    """Small but complete: 2 tiles × 2 channels × 5 timepoints of 32×64×96 raw stacks."""
    params = SynthParams(raw_shape_zyx=(32, 64, 96), particles_per_tile=6)
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


@pytest.fixture(scope="session")
def tiny_acquisition(tmp_path_factory) -> Path:
    """Directory holding raw/ and truth/ of the tiny synthetic acquisition (treat as read-only)."""
    outdir = tmp_path_factory.mktemp("tiny_acquisition")
    generate(outdir, tiny_params())
    return outdir


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real LLSM sample data not found at {REAL_DATA}")
    return REAL_DATA
