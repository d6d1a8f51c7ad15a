"""One deskew_deconvolve job per timepoint (batch runs) or per volume (`llsmflow watch`): the same bytes.

Two real workflow runs on the tiny acquisition's first timepoint, one per `jobs.unit`, in the same work
directory (so both read the same FFTW wisdom file: plans measured anew may round differently at 1e-7),
the first run's volumes moved aside before the second.
"""

import json
import shutil

import numpy as np
import yaml

from llsmflow.ingest import read_acquisition
from llsmflow.io import read_volume, read_volume_description
from tests.conftest import run_workflow, workflow_config, write_workflow_config


def test_timepoint_and_volume_jobs_give_identical_volumes(tiny_acquisition, tmp_path):
    from llsmflow.deskew.shear import deskew

    raw_dir = tiny_acquisition / "raw"
    acq = read_acquisition(raw_dir)
    samples = [f"{t}-ch{c}-t0000" for t in acq.tiles["tile"] for c in range(len(acq.channels))]
    config = workflow_config("tiny", raw_dir, keep_intermediates=True)
    config["deconvolution"]["iterations"] = 2
    config_path = write_workflow_config(tmp_path, config)
    work = tmp_path / "work" / "tiny"
    targets = [f"work/tiny/deconvolved/{s}.ome.tif" for s in samples]
    run_workflow(tmp_path, config_path, "--", *targets)

    # one job, one step record with an entry per volume, in the order of the job's outputs
    record = json.loads((work / "steps/deskew_deconvolve/t0000.json").read_text())
    assert [v["sample"] for v in record["volumes"]] == samples
    for part in ("read", "deskew", "deconvolution", "write"):
        assert all(v[f"seconds_{part}"] >= 0 for v in record["volumes"])
        assert record["notes"][f"seconds_{part}"] == round(sum(v[f"seconds_{part}"] for v in record["volumes"]), 3)
    assert record["notes"]["volume_count"] == len(samples) and record["notes"]["backend"] == "cpu"
    # the deskewed volume (written only with keep_intermediates) is llsmflow's deskew of the raw stack, and the
    # deconvolved volume carries what fusion reads from its description
    row = acq.samples.set_index("sample_id").loc[samples[-1]]
    expected = deskew(read_volume(raw_dir / row["path"]).data, acq.dz_um, acq.dx_um, acq.angle_deg, dy_um=acq.dy_um)
    np.testing.assert_array_equal(read_volume(work / "deskewed" / f"{samples[-1]}.ome.tif").data, expected.data)
    description = read_volume_description(work / "deconvolved" / f"{samples[-1]}.ome.tif")
    assert description["frame"] == "objective" and description["deconvolution"]["iterations"] == 2
    assert description["origin_offset_um"] == list(expected.origin_offset_um)

    shutil.move(work / "deconvolved", tmp_path / "by_timepoint")
    shutil.move(work / "deskewed", tmp_path / "deskewed_by_timepoint")
    config["jobs"] = {"unit": "volume"}
    config_path.write_text(yaml.safe_dump(config))
    run_workflow(tmp_path, config_path, "--", *targets)
    assert sorted(p.stem for p in (work / "steps/deskew_deconvolve").glob("*-t0000.json")) == sorted(samples)
    for s in samples:
        name = f"{s}.ome.tif"
        assert (work / "deconvolved" / name).read_bytes() == (tmp_path / "by_timepoint" / name).read_bytes(), s
        assert (work / "deskewed" / name).read_bytes() == (tmp_path / "deskewed_by_timepoint" / name).read_bytes()


def test_watch_config_is_passed_last_and_validates():
    """`llsmflow watch` runs with WATCH_CONFIG (a job per volume): `--config` comes after the targets (it takes
    every word after it), and the values pass the schema."""
    from pathlib import Path

    from llsmflow.run.config import effective_config
    from llsmflow.run.launch import WATCH_CONFIG, snakemake_command
    from tests.conftest import REPO

    command = snakemake_command(REPO, REPO / "config/config.yaml", REPO / "profiles/local", 2, ["t.tif"], WATCH_CONFIG)
    assert command[-3:] == ["t.tif", "--config", 'jobs={"unit": "volume"}']
    assert yaml.safe_load(command[-1].split("=", 1)[1]) == WATCH_CONFIG["jobs"]
    config = effective_config(Path(REPO / "config/config.yaml"), REPO, WATCH_CONFIG, ignore_required=True)
    assert config["jobs"]["unit"] == "volume"


def test_a_grouped_submission_must_fit_a_node():
    """A job's memory is one volume's whatever the unit; a submission of the volumes group runs cores/threads
    jobs side by side, and their memory together must fit the node (one clear line otherwise)."""
    import pytest

    from llsmflow import hpc
    from llsmflow.errors import LlsmflowError
    from llsmflow.hpc.profiles import PartitionLimits, check_fit
    from llsmflow.run.config import read_config

    sizes = hpc.VolumeSizes((201, 1024, 768), (201, 1024, 1280), (64, 64, 64), (201, 2048, 2560), 800, 4, 2, 100)
    config = read_config(None)
    resources = hpc.step_resources(sizes, config, 8)
    job = resources["deskew_deconvolve"]
    config["jobs"]["unit"] = "volume"
    assert hpc.step_resources(sizes, config, 8)["deskew_deconvolve"].mem_mb == job.mem_mb
    node = PartitionLimits("main", cpus=8, mem_mb=int(2.5 * job.mem_mb), gpus=0, time_min=None)
    assert check_fit(resources, 8, node) == 8  # each job fits
    with pytest.raises(LlsmflowError, match=r"runs 4 deskew_deconvolve jobs side by side .*at most 4:"):
        check_fit(resources, 8, node, groups={"volumes": 15})
    assert check_fit(resources, 4, node, groups={"volumes": 15}) == 4


def test_the_device_branch_of_a_job_equals_its_cpu_branch():
    """The job's GPU branch (raw stack deskewed and deconvolved without leaving the device), run with NumPy as
    the array module, gives the CPU branch's volume, voxel size and origin; the deskewed placeholder has the
    volume's shape (CuPy itself: docs/gpu.md, never run here)."""
    from llsmflow.run.batch import (
        DeconSettings,
        Geometry,
        Psf,
        deskew_and_deconvolve,
    )

    rng = np.random.default_rng(3)
    raw = (100 + rng.poisson(20, (24, 40, 48))).astype(np.uint16)
    raw[10:13, 18:22, 20:26] += 900
    z, y, x = np.indices((9, 9, 9)) - 4
    psf = Psf(np.exp(-(z**2 / 4.0 + y**2 / 2.0 + x**2 / 2.0)).astype(np.float32), (0.2, 0.104, 0.104), "psf")
    for rotate in (False, True):
        geometry = Geometry(dz_um=0.3, dx_um=0.104, dy_um=0.104, angle_deg=31.8, rotate=rotate)
        decon = DeconSettings(iterations=5, background=100.0, threads=1)
        cpu_deskewed, cpu = deskew_and_deconvolve(raw, psf, geometry, decon)
        dev_deskewed, dev = deskew_and_deconvolve(raw, psf, geometry, decon, xp=np)
        assert dev_deskewed.data.shape == cpu_deskewed.data.shape == dev.data.shape
        assert dev_deskewed.data.strides == (0, 0, 0) and cpu_deskewed.data.strides != (0, 0, 0)
        kept, kept_decon = deskew_and_deconvolve(raw, psf, geometry, decon, keep_deskewed=True, xp=np)
        np.testing.assert_array_equal(kept.data, cpu_deskewed.data)
        np.testing.assert_array_equal(kept_decon.data, cpu.data)
        assert dev_deskewed.voxel_size_um == cpu_deskewed.voxel_size_um
        np.testing.assert_allclose(dev_deskewed.origin_offset_um, cpu_deskewed.origin_offset_um, atol=1e-9)
        scale = float(np.abs(cpu.data).max())
        assert float(np.abs(dev.data - cpu.data).max()) <= 1e-5 * scale, rotate
        assert dev.summary()["iterations"] == cpu.summary()["iterations"] == 5
