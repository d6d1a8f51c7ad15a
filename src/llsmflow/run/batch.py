"""The work of one deskew-and-deconvolve job: raw stacks → deskewed (in memory) → deconvolved volumes on disk.

A job of the ``deskew_deconvolve`` rule takes every volume (tiles × channels) of one timepoint
(``jobs.unit: timepoint``, batch runs) or one volume (``jobs.unit: volume``, ``llsmflow watch``). Both call
:func:`process_volume` once per volume, one volume at a time (its arrays are dropped before the next is read),
so a job needs one volume's memory whatever it takes, and the two units give the same bytes. What a job pays
once is shared by its volumes: imports, the PSFs (read once per channel), the FFTW plans of the shape.

The deskewed volume never reaches the disk unless asked for (``deskewed_path``: ``keep_intermediates``). The
deconvolved volume is written uncompressed: it is scratch that fusion reads once and the workflow deletes, and
a single-threaded zlib write of float32 took most of a volume's time (issue 18: 85 % on a GPU node;
``bench/bench_pipeline.py`` measures the choice).

:func:`deskew_and_deconvolve` is the one place that turns a raw array into the deconvolved array; with CuPy
the raw stack goes to the GPU once and is deskewed and deconvolved there
(:func:`llsmflow.decon.deskew_deconvolve`, never run on a GPU yet: docs/gpu.md). This module imports no
Snakemake and nothing heavy at import time (``bench/bench_pipeline.py`` runs it on a GPU machine without the
workflow's packages).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

# uncompressed scratch (see the module docstring); the deskewed volume, written only on request, too
DECONVOLVED_COMPRESSION = None


@dataclass(frozen=True)
class Geometry:
    """Stage-scan geometry of the raw stacks and how to deskew them (µm, degrees)."""

    dz_um: float
    dx_um: float
    dy_um: float
    angle_deg: float
    scan_axis: str = "x"
    fill_value: float = 0.0
    rotate: bool = False

    def description(self) -> dict:
        """The ``deskew`` entry of a volume's stored metadata."""
        return {
            "dz_um": self.dz_um,
            "dx_um": self.dx_um,
            "dy_um": self.dy_um,
            "angle_deg": self.angle_deg,
            "scan_axis": self.scan_axis,
            "rotate": bool(self.rotate),
        }


@dataclass(frozen=True)
class DeconSettings:
    """Deconvolution settings of a job (config ``deconvolution``), and the cores it may use."""

    iterations: int | None = None
    background: float | str = "auto"
    backend: str = "cpu"
    method: str = "rl"
    max_memory_gb: float | None = None
    threads: int | None = None
    client: object = None
    progress: Callable | None = None


@dataclass
class Psf:
    """A channel's prepared PSF, read once per job."""

    data: np.ndarray
    voxel_size_um: tuple[float, float, float]
    path: str

    @classmethod
    def read(cls, path) -> Psf:
        from llsmflow.io import read_volume

        volume = read_volume(path)
        return cls(volume.data, volume.voxel_size_um, str(path))


@dataclass
class Deskewed:
    """A deskewed volume (float32, ZYX) and where it sits: voxel size and origin offset (µm)."""

    data: np.ndarray
    voxel_size_um: tuple[float, float, float]
    origin_offset_um: tuple[float, float, float]
    seconds: float = 0.0


def deskew_raw(raw: np.ndarray, geometry: Geometry, workers: int | None = None) -> Deskewed:
    """Deskew one raw ZYX stack into the objective frame, or (``geometry.rotate``) into the coverslip frame
    (isotropic voxels of dx, one interpolation: :func:`llsmflow.deskew.deskew_stack`)."""
    from llsmflow.deskew.stack import deskew_stack

    t0 = time.perf_counter()
    g = geometry
    result = deskew_stack(
        raw, g.dz_um, g.dx_um, g.angle_deg, dy_um=g.dy_um, scan_axis=g.scan_axis, fill_value=g.fill_value,
        rotate=g.rotate, workers=workers,
    )  # fmt: skip
    return Deskewed(
        result.data, tuple(result.voxel_size_um), tuple(result.origin_offset_um), time.perf_counter() - t0
    )


def deskew_and_deconvolve(
    raw: np.ndarray, psf: Psf, geometry: Geometry, decon: DeconSettings, keep_deskewed: bool = False, xp=None
):
    """Raw ZYX stack → (deskewed, :class:`llsmflow.decon.api.DeconResult`), by
    :func:`llsmflow.decon.deskew_deconvolve`.

    With CuPy (the whole volume at once, no Dask cluster, no deskewed volume to keep) the raw stack goes to the
    GPU once and the deskewed volume never leaves it; the ``Deskewed`` returned then holds a zero-stride
    placeholder of the volume's shape instead of its voxels. Otherwise the deskew runs on the host and the
    volume goes to :func:`llsmflow.decon.deconvolve` on the configured backend. ``xp=numpy`` runs the GPU code
    path on the host (tests).
    """
    import dataclasses

    from llsmflow.decon.pipeline import deskew_deconvolve

    g = geometry
    both = deskew_deconvolve(
        raw,
        psf.data,
        psf.voxel_size_um,
        dz_um=g.dz_um,
        dx_um=g.dx_um,
        angle_deg=g.angle_deg,
        dy_um=g.dy_um,
        scan_axis=g.scan_axis,
        rotate=g.rotate,
        fill_value=g.fill_value,
        iterations=decon.iterations,
        background=decon.background,
        psf_background=0.0,  # prepared by prepare_psf
        method=decon.method,
        backend=decon.backend,
        max_memory_gb=decon.max_memory_gb,
        client=decon.client,
        threads=decon.threads,
        progress=decon.progress,
        psf_path=psf.path,
        keep_deskewed=keep_deskewed,
        xp=xp,
    )
    seconds = both.seconds
    voxels = both.deskewed
    if voxels is None:  # the deskewed voxels were not kept (on a GPU they never left it)
        voxels = np.broadcast_to(np.float32(0), both.data.shape)
    deskewed = Deskewed(
        voxels,
        tuple(both.voxel_size_um),
        tuple(both.origin_offset_um),
        seconds.get("upload", 0.0) + seconds.get("deskew", 0.0),
    )
    return deskewed, dataclasses.replace(both.deconvolution, seconds=seconds.get("deconvolution", 0.0))


@dataclass
class VolumeTask:
    """One volume of a job: its raw stack (and the volume inside a multi-volume file), its outputs."""

    sample: str
    raw_path: str
    output: str
    raw_channel: int | None = None
    raw_timepoint: int | None = None
    deskewed_output: str | None = None
    facts: dict = field(default_factory=dict)


def volume_metadata(task: VolumeTask, raw_shape, deskewed: Deskewed, geometry: Geometry) -> dict:
    """What the deskewed volume's description holds (fusion, registration and QC read it)."""
    return {
        "origin_offset_um": deskewed.origin_offset_um,
        "frame": "coverslip" if geometry.rotate else "objective",
        "source": task.raw_path,
        "source_channel": task.raw_channel,
        "source_timepoint": task.raw_timepoint,
        "raw_shape_zyx": tuple(raw_shape),
        "deskew": geometry.description(),
    }


def process_volume(task: VolumeTask, psf: Psf, geometry: Geometry, decon: DeconSettings) -> dict:
    """Read, deskew, deconvolve and write one volume; the per-volume entry of the job's step record
    (seconds of each part, shapes, what the deconvolution ran)."""
    from llsmflow.io import read_volume, write_volume

    t0 = time.perf_counter()
    raw = read_volume(task.raw_path, channel=task.raw_channel, timepoint=task.raw_timepoint).data
    t_read = time.perf_counter() - t0
    keep = bool(task.deskewed_output)
    deskewed, result = deskew_and_deconvolve(raw, psf, geometry, decon, keep_deskewed=keep)
    metadata = volume_metadata(task, raw.shape, deskewed, geometry)
    t1 = time.perf_counter()
    if task.deskewed_output:
        write_volume(
            task.deskewed_output, deskewed.data, deskewed.voxel_size_um, metadata,
            compression=DECONVOLVED_COMPRESSION,
        )
    write_volume(
        task.output,
        result.data,
        deskewed.voxel_size_um,
        metadata | {"deconvolution": result.summary()},
        compression=DECONVOLVED_COMPRESSION,
    )
    t_write = time.perf_counter() - t1
    return {
        "sample": task.sample,
        "seconds_read": round(t_read, 3),
        "seconds_deskew": round(deskewed.seconds, 3),
        "seconds_deconvolution": round(result.seconds, 3),
        "seconds_write": round(t_write, 3),
        "shape_raw": list(raw.shape),
        "shape_deskewed": list(deskewed.data.shape),
        **result.summary(),
    }


def run_job(
    tasks: list[VolumeTask],
    psf_paths: Mapping[str, str],
    channels: Mapping[str, int],
    geometry: Geometry,
    decon: DeconSettings,
    on_volume: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Process ``tasks`` one after the other (each volume freed before the next); PSFs read once per channel.

    ``psf_paths`` and ``channels`` map a sample to its PSF file and channel; ``on_volume`` gets each volume's
    entry as soon as it is written. Returns the entries in order.
    """
    psfs: dict[int, Psf] = {}
    entries = []
    for task in tasks:
        channel = int(channels[task.sample])
        if channel not in psfs:
            psfs[channel] = Psf.read(psf_paths[task.sample])
        entry = process_volume(task, psfs[channel], geometry, decon)
        entries.append(entry)
        if on_volume:
            on_volume(entry)
    return entries


def job_summary(entries: list[dict]) -> dict:
    """The job-level notes of a step record: what ran (one value, or the distinct values joined) and the
    seconds of each part summed over the job's volumes."""
    notes: dict = {"volume_count": len(entries)}
    for key in ("backend", "method", "iterations", "chunks"):
        values = list(dict.fromkeys(e[key] for e in entries if key in e))
        if values:
            notes[key] = values[0] if len(values) == 1 else ",".join(str(v) for v in values)
    fallbacks = [f for e in entries for f in e.get("fallbacks", [])]
    if fallbacks:
        notes["fallbacks"] = fallbacks
    for key in ("seconds_read", "seconds_deskew", "seconds_deconvolution", "seconds_write"):
        notes[key] = round(sum(e[key] for e in entries), 3)
    return notes
