"""Deskew and deconvolve one raw stack in one call: :func:`deskew_deconvolve`.

On a GPU (backend ``'cupy'``) the raw stack goes to the device once (whole, in its own dtype, through pinned
memory), is deskewed there (:mod:`llsmflow.deskew.device`), padded there (reflection) and deconvolved by the
same engine as :func:`llsmflow.decon.deconvolve`; the result comes back once. The engine (OTF, back
projector, workspace, cuFFT plans) and the prepared PSF are kept per process and reused for the next volume
of the same shape and PSF, so a job that processes the volumes of a timepoint pays that set-up once.

On the CPU it is exactly :func:`llsmflow.deskew.deskew` (or :func:`llsmflow.deskew.deskew_rotate`) followed by
:func:`llsmflow.decon.deconvolve`. ``xp=numpy`` runs the GPU code path on the host (tests, and the benchmark
without a GPU); it equals the CPU path bit for bit for deskew (deskew + rotation: within float32 round-off).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llsmflow.decon.api import DeconResult, checked_method_backend_iterations, deconvolve, log
from llsmflow.decon.backends import (
    _free_gpu_memory,
    _is_out_of_memory,
    choose_backend,
)
from llsmflow.decon.chunks import plan_chunks
from llsmflow.decon.engine import clear_engine_cache
from llsmflow.decon.execute import _run_plan
from llsmflow.decon.psf import _prepare_psf_cached, resolve_background
from llsmflow.decon.transfer import to_device
from llsmflow.errors import LlsmflowError, located


@dataclass
class DeskewDeconResult:
    """Output of :func:`deskew_deconvolve`.

    Attributes
    ----------
    data : numpy.ndarray
        Deskewed (objective frame, or coverslip frame with ``rotate=True``) and deconvolved ZYX volume,
        float32, on the host (the ``out`` array when one was given).
    voxel_size_um : tuple of float
        ``(dz, dy, dx)`` µm of ``data``.
    origin_offset_um : tuple of float
        Position (µm) of voxel (0, 0, 0) relative to raw voxel (0, 0, 0), as :class:`llsmflow.deskew.DeskewResult`
        (objective frame) or :func:`llsmflow.deskew.deskew_rotate` (coverslip frame) give it.
    shear_px_per_plane : float
        Shear of the deskew (pixels per plane along the scan axis).
    deconvolution : DeconResult
        What the deconvolution did (its ``data`` is ``data``; ``seconds`` is the whole call's).
    seconds : dict
        Wall time (s) of the steps: ``upload``, ``deskew``, ``deconvolution`` (download included) and ``total``.
    deskewed : numpy.ndarray or None
        The deskewed volume (float32) when the deskew ran on the host (always with ``keep_deskewed=True``);
        None when it ran on the GPU and stayed there.
    """

    data: np.ndarray
    voxel_size_um: tuple[float, float, float]
    origin_offset_um: tuple[float, float, float]
    shear_px_per_plane: float
    deconvolution: DeconResult
    seconds: dict = field(default_factory=dict)
    deskewed: np.ndarray | None = None

    def summary(self) -> dict:
        """For metadata and provenance: ``{"deskew": {...}, "deconvolution": DeconResult.summary()}``."""
        return {
            "deskew": {
                "voxel_size_um": list(self.voxel_size_um),
                "origin_offset_um": list(self.origin_offset_um),
                "shear_px_per_plane": self.shear_px_per_plane,
            },
            "deconvolution": self.deconvolution.summary(),
        }


def _synchronize(xp) -> None:
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def deskew_deconvolve(
    raw_zyx,
    psf,
    psf_voxel_um,
    *,
    dz_um: float,
    dx_um: float,
    angle_deg: float,
    dy_um: float | None = None,
    scan_axis: str = "x",
    rotate: bool = False,
    output_voxel_um: float | None = None,
    fill_value: float = 0.0,
    iterations: int | None = None,
    background: float | str = "auto",
    psf_background: float | str = "auto",
    method: str = "rl",
    acceleration: bool = False,
    backend: str = "cpu",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    out: np.ndarray | None = None,
    psf_path: str | Path | None = None,
    max_memory_gb: float | None = None,
    client=None,
    keep_deskewed: bool = False,
    xp=None,
) -> DeskewDeconResult:
    """Deskew (optionally rotate to the coverslip frame) and deconvolve one raw stage-scan stack.

    Parameters
    ----------
    raw_zyx : numpy.ndarray
        Raw stack, ZYX (e.g. uint16 camera counts); never modified. A buffer from
        :func:`llsmflow.decon.transfer.pinned_empty` reaches the GPU in one copy.
    psf, psf_voxel_um
        Measured PSF, sampled like the *deskewed* data (as the workflow's PSF step writes it), and its voxel
        size ``(dz, dy, dx)`` µm; prepared with :func:`prepare_psf` once per process and PSF.
    dz_um, dx_um, angle_deg, dy_um, scan_axis, fill_value
        The deskew geometry, as :func:`llsmflow.deskew.deskew`.
    rotate, output_voxel_um
        ``rotate=True``: deskew and rotate to the coverslip frame with isotropic ``output_voxel_um`` voxels
        (default ``dx_um``), as :func:`llsmflow.deskew.deskew_rotate`.
    iterations, background, psf_background, method, acceleration, threads, progress, psf_path
        As :func:`llsmflow.decon.deconvolve` (the background is resolved on the deskewed volume).
    backend : {'cpu', 'auto', 'pycudadecon', 'cupy'}
        ``'cupy'``: everything on the GPU, the volume kept there between the steps. Other backends: the host
        deskew, then :func:`llsmflow.decon.deconvolve` on that backend. A GPU that runs out of memory falls
        back to the host deskew and :func:`deconvolve`'s chunked retries (``deconvolution.fallbacks``).
    out : numpy.ndarray, optional
        C-contiguous float32 array of the deskewed shape to write the result into (e.g. reused across the
        volumes of a job; a :func:`~llsmflow.decon.transfer.pinned_empty` buffer receives it in one copy).
    max_memory_gb : float, optional
        A memory budget (GB) for the deconvolution, as :func:`deconvolve`: with one, the host deskew and
        :func:`deconvolve`'s chunks (the volume then does not stay on the device). Default: the whole volume.
    client : dask.distributed.Client, optional
        Run the deconvolution's chunks on this Dask cluster, as :func:`deconvolve` (after the host deskew).
    keep_deskewed : bool
        Also return the deskewed volume on the host (``DeskewDeconResult.deskewed``; e.g. to write it as an
        intermediate). The deskew then runs on the host and only the deconvolution on the backend.
    xp : module, optional
        Array module of the device path; ``numpy`` runs the GPU code path on the host (tests, benchmarks).
        Default: CuPy for backend ``'cupy'``, else the host path.

    Returns
    -------
    DeskewDeconResult
    """
    iterations = checked_method_backend_iterations(method, backend, iterations)
    geometry = dict(dz_um=dz_um, dx_um=dx_um, angle_deg=angle_deg, dy_um=dy_um, scan_axis=scan_axis)
    start = time.perf_counter()
    name = backend if xp is not None else choose_backend(backend)
    if xp is None and name == "cupy" and max_memory_gb is None:
        import cupy as xp
    fallbacks: list[str] = []
    if xp is not None and max_memory_gb is None and client is None and not keep_deskewed:
        try:
            return _on_device(
                raw_zyx, psf, psf_voxel_um, geometry, rotate, output_voxel_um, fill_value, iterations,
                background, psf_background, method, acceleration, threads, progress, out, psf_path, xp, start,
            )  # fmt: skip
        except Exception as error:
            if xp is np or not _is_out_of_memory(error):
                raise
            clear_engine_cache()
            _free_gpu_memory("cupy")
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            log.warning(
                "deskew + deconvolution ran out of GPU memory (%s); deskewing on the host", first_line
            )
            fallbacks.append("deskew + deconvolution ran out of GPU memory; deskewed on the host")
    # the host deskew, then deconvolve() (which retries a GPU backend in chunks)
    t0 = time.perf_counter()
    deskewed, voxel, origin, shear = _deskew_host(
        raw_zyx, geometry, rotate, output_voxel_um, fill_value, threads
    )
    t1 = time.perf_counter()
    result = deconvolve(
        deskewed, psf, voxel, psf_voxel_um, iterations=iterations, background=background,
        psf_background=psf_background, backend=name, method=method, progress=progress, threads=threads,
        acceleration=acceleration, out=out, psf_path=psf_path, max_memory_gb=max_memory_gb, client=client,
    )  # fmt: skip
    result.fallbacks[:0] = fallbacks
    end = time.perf_counter()
    result.seconds = end - start
    seconds = {"upload": 0.0, "deskew": t1 - t0, "deconvolution": end - t1, "total": end - start}
    return DeskewDeconResult(result.data, voxel, origin, shear, result, seconds, deskewed)


def _deskew_host(raw_zyx, geometry, rotate, output_voxel_um, fill_value, threads):
    from llsmflow.deskew.stack import deskew_stack

    result = deskew_stack(
        raw_zyx, rotate=rotate, output_voxel_um=output_voxel_um, fill_value=fill_value, workers=threads,
        **geometry,
    )  # fmt: skip
    return result.data, result.voxel_size_um, result.origin_offset_um, result.shear_px_per_plane


def _on_device(
    raw_zyx, psf, psf_voxel_um, geometry, rotate, output_voxel_um, fill_value, iterations, background,
    psf_background, method, acceleration, threads, progress, out, psf_path, xp, start,
) -> DeskewDeconResult:  # fmt: skip
    from llsmflow.deskew.device import deskew_rotate_xp, deskew_xp
    from llsmflow.deskew.stack import scan_shear_px_per_plane

    raw = np.asarray(raw_zyx) if not hasattr(raw_zyx, "__cuda_array_interface__") else raw_zyx
    if raw.ndim != 3:
        raise LlsmflowError(f"raw stack has shape {tuple(raw.shape)}; expected a 3-D ZYX stack")
    if raw.dtype.kind not in "uif":
        raise LlsmflowError(
            f"raw stack has dtype {raw.dtype}; expected real integer or floating point values"
        )
    t0 = time.perf_counter()
    device_raw = to_device(raw, xp)
    if device_raw.dtype.kind == "f" and not bool(xp.isfinite(device_raw).all()):
        raise LlsmflowError("raw stack contains NaN or infinite values; expected finite intensities")
    _synchronize(xp)
    t1 = time.perf_counter()
    if rotate:
        deskewed, voxel, origin = deskew_rotate_xp(
            device_raw, output_voxel_um=output_voxel_um, fill_value=fill_value, xp=xp, **geometry
        )
        shear = scan_shear_px_per_plane(**geometry)
    else:
        deskewed, voxel, origin, shear = deskew_xp(device_raw, fill_value=fill_value, xp=xp, **geometry)
    del device_raw
    _synchronize(xp)
    t2 = time.perf_counter()
    if out is not None and (tuple(out.shape) != tuple(deskewed.shape) or out.dtype != np.float32):
        raise LlsmflowError(
            f"out array is {out.dtype} {tuple(out.shape)}; expected float32 of the deskewed shape {deskewed.shape}"
        )
    bg = resolve_background(deskewed, background)
    with located(psf_path):
        kernel = _prepare_psf_cached(psf, psf_voxel_um, voxel, background=psf_background)
    plan = plan_chunks(deskewed.shape, kernel.shape, None, acceleration=acceleration, method=method)
    data = _run_plan(
        deskewed, kernel, plan, bg, iterations, xp=xp, threads=threads, method=method, acceleration=acceleration,
        progress=progress, out=out, checked=True, cache=True,
    )  # fmt: skip
    end = time.perf_counter()
    name = "cupy" if xp is not np else "cpu"
    decon = DeconResult(data, name, iterations, bg, end - start, method, plan.count, [])
    seconds = {"upload": t1 - t0, "deskew": t2 - t1, "deconvolution": end - t2, "total": end - start}
    return DeskewDeconResult(data, voxel, origin, shear, decon, seconds)
