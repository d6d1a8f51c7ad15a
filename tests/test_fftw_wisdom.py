"""The workflow's deconvolution jobs share FFTW plans through one wisdom file per dataset."""

import json
import re

import pytest

from llsmflow.decon import fft as decon_fft


def test_deconvolution_jobs_reuse_measured_plans(tiny_run):
    if not decon_fft.USE_PYFFTW or decon_fft.pyfftw is None:
        pytest.skip("pyFFTW is not installed: the scipy.fft fallback needs no plans")
    wisdom = tiny_run.run_dir / "work" / "tiny" / ".cache" / "fftw-wisdom"
    parts = wisdom.read_bytes().split(b"\0")
    assert len(parts) == 3 and b"fftw" in parts[1]  # FFTW's single-precision wisdom, text format
    logs = sorted((tiny_run.run_dir / "work" / "tiny" / "logs" / "deskew_deconvolve").glob("*.log"))
    planned = [
        match.group(1)
        for log in logs
        for match in re.finditer(r"FFTW planned (\(\d+, \d+, \d+\))", log.read_text())
    ]
    shapes = set(planned)
    assert 1 <= len(shapes) <= 2  # one padded shape per channel's PSF
    # each shape measured once, or once per job that started before the first one saved its plan (two jobs
    # run at once with --cores 2); without the shared file every job measured its own
    # (a job deconvolves a timepoint's volumes with the plans it measured or read once)
    records = (tiny_run.run_dir / "work" / "tiny" / "steps" / "deskew_deconvolve").glob("*.json")
    volumes = sum(len(json.loads(r.read_text())["volumes"]) for r in records)
    assert len(planned) <= 2 * len(shapes) < volumes
