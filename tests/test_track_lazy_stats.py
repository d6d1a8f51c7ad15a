"""The track job's start-up (issue 18): trackpy is imported with ``scipy.stats`` left unexecuted until first use.

``trackpy.utils`` imports ``scipy.stats`` at its top level for two functions the tracking here never calls
(:data:`llsmflow.track._common._TRACKPY_LAZY`). In a fresh interpreter, as the workflow's track job runs it
(``import_trackpy(defer_unused=True)``), the whole step
(detection, linking, statistics, tables) must run without executing ``scipy.stats`` and give exactly the
tracks and statistics this (pytest) process gives, and ``scipy.stats`` must still work for anyone who uses it
afterwards, as one module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd

from llsmflow import track

VOXEL = (0.2, 0.1, 0.1)  # µm, ZYX
DT = 0.5  # s


def _movie(path) -> list[np.ndarray]:
    """Six frames of eight Gaussian spots moving a little, with Poisson noise (saved to ``path``)."""
    rng = np.random.default_rng(5)
    shape = (16, 48, 48)
    start = rng.uniform((3, 8, 8), (13, 40, 40), size=(8, 3))
    z, y, x = np.indices(shape, dtype=np.float64)
    frames = []
    for t in range(6):
        expected = np.full(shape, 50.0)
        for p in start + 0.4 * t * rng.normal(size=(8, 3)) / np.array([2.0, 1.0, 1.0]):
            expected += 200.0 * np.exp(-(((z - p[0]) / 1.5) ** 2 + ((y - p[1]) / 1.2) ** 2 + ((x - p[2]) / 1.2) ** 2))
        frames.append(rng.poisson(expected).astype(np.uint16))
    np.save(path, np.stack(frames))
    return frames


def _step(frames):
    tracks = track.track_particles(frames, VOXEL, DT, diameter_um=0.5, search_range_um=1.0, min_track_length=3)
    msd = track.ensemble_msd(tracks, DT)
    return tracks, track.summarise_tracks(tracks, DT), msd, track.fit_diffusion(msd)


CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from llsmflow import track
    from llsmflow.track._common import import_trackpy
    tp = import_trackpy(defer_unused=True)  # as the track job asks for it
    frames = list(np.load(sys.argv[1]))
    tracks = track.track_particles(frames, (0.2, 0.1, 0.1), 0.5, diameter_um=0.5, search_range_um=1.0,
                                   min_track_length=3)
    msd = track.ensemble_msd(tracks, 0.5)
    summary = track.summarise_tracks(tracks, 0.5)
    fit = track.fit_diffusion(msd)
    track.write_tracks(tracks, sys.argv[2] + "/tracks.parquet", sys.argv[2] + "/tracks.csv")
    summary.to_parquet(sys.argv[2] + "/summary.parquet")
    msd.to_parquet(sys.argv[2] + "/msd.parquet")
    executed = sorted(m for m in sys.modules if m.startswith("scipy.stats."))
    assert not executed, executed  # the step ran without scipy.stats
    import scipy.stats
    assert sys.modules["scipy.stats"] is scipy.stats is tp.utils.stats  # one module for everyone
    assert abs(scipy.stats.norm.isf(0.05) - 1.6448536269514729) < 1e-12  # and it works when used
    assert tp.utils.stats_mode_scalar(np.array([1, 2, 2, 3])) == 2
    print(json.dumps(fit))
    """
)


def test_the_library_imports_scipy_stats_as_usual():
    """Inside someone else's program (no ``defer_unused``) the import is the usual one."""
    code = (
        "import sys; from llsmflow.track._common import import_trackpy; import_trackpy(); "
        "import importlib.util; assert not isinstance(sys.modules['scipy.stats'].__spec__.loader, "
        "importlib.util.LazyLoader); assert 'scipy.stats._distn_infrastructure' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_track_step_runs_without_executing_scipy_stats_and_gives_the_same_tracks(tmp_path):
    frames = _movie(tmp_path / "movie.npy")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "movie.npy"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tracks, summary, msd, fit = _step(frames)
    assert tracks["particle"].nunique() >= 6
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "tracks.parquet"), tracks.reset_index(drop=True))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "summary.parquet"), summary)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "msd.parquet"), msd)
    child_fit = json.loads(done.stdout.strip().splitlines()[-1])
    assert child_fit.keys() == fit.keys()
    np.testing.assert_array_equal([child_fit[k] for k in fit], [fit[k] for k in fit])
