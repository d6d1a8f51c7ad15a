"""SLURM submissions of a large acquisition: at most 20 per 1,000 volumes with the shipped profiles and with
the one `llsmflow profile init` writes; dispatch settings that keep the scheduler fast. (The grouping itself is
counted on the real SLURM in tests/test_slurm.py: the sbatch submissions equal :func:`hpc.submissions`.)"""

import math

import pytest
import yaml

from llsmflow import hpc
from llsmflow.hpc.profiles import SiteAnswers, profile_settings, render_profile
from llsmflow.run.config import read_config
from tests.conftest import REPO

RAW = (201, 1024, 768)  # a Janelia-sized stack: the resource model scales with it, the job counts do not


def _sizes(timepoints: int) -> hpc.VolumeSizes:
    return hpc.VolumeSizes(
        raw_shape=RAW,
        deskewed_shape=(201, 1024, 1280),
        psf_shape=(64, 64, 64),
        fused_shape=(201, 2048, 2560),
        samples=4 * 2 * timepoints,
        tiles=4,
        channels=2,
        timepoints=timepoints,
    )


@pytest.mark.parametrize("profile", ["slurm", "slurm-apptainer", "rendered"])
def test_at_most_20_submissions_per_1000_volumes(profile, tmp_path):
    if profile == "rendered":
        (tmp_path / "config.yaml").write_text(render_profile(SiteAnswers(partition="cpu")))
        directory = tmp_path
    else:
        directory = REPO / "profiles" / profile
    cores, groups = profile_settings(directory)
    settings = yaml.safe_load((directory / "config.yaml").read_text())
    assert settings["scheduler"] == "greedy" and "max-jobs-per-second" not in settings
    config = read_config(None)
    for volumes in (1000, 5000, 20000):
        sizes = _sizes(volumes // 8)
        counts = hpc.submissions(hpc.step_resources(sizes, config, cores), groups)
        assert sum(counts.values()) <= 20 * volumes / 1000, (volumes, counts)
        # a deskew_deconvolve job per timepoint (jobs.unit: timepoint), N jobs per submission
        assert counts["volumes"] == math.ceil(volumes // 8 / groups["volumes"])
