"""Deconvolution of ZYX volumes with a measured PSF: Richardson–Lucy and Wiener–Butterworth, CPU or CUDA GPU.

What is here and why it is hand-written
---------------------------------------
* ``prepare_psf`` turns a measured bead PSF into the kernel the deconvolution needs: background removed,
  resampled to the data voxel size, peak on the central voxel of an odd-sized array, sum 1.
* ``richardson_lucy`` is the Richardson–Lucy iteration as the reference tool cudaDecon runs it (constant
  background subtracted and clamped at 0, the raw data as first estimate, optional Biggs–Andrews
  acceleration with λ clamped to [0, 1]; see ``field-notes.md``, "Richardson–Lucy as the reference tools do
  it"). ``wiener_butterworth`` is the same multiplicative iteration with the Wiener–Butterworth back
  projector of Guo et al. (Nat. Biotechnol. 2020): on small bead sets it reaches the quality of 10 RL
  iterations in 2–3 (measured in the tests and ``bench/bench_decon.py``); with a real LLSM PSF, in 1 from a
  flat start on beads on a dense texture, and not at all on sparse beads (``bench/bench_decon_quality.py``).
  Both are written once over an *array module* ``xp``: the same code runs with NumPy (CI, any CPU) and with
  CuPy (any CUDA GPU). No existing package offers that: ``skimage.restoration.richardson_lucy`` is
  NumPy-only and recomputes both convolutions, kernel FFT included, every iteration (six full-size FFTs per
  iteration on one core, against four here), and pycudadecon needs a shared library that pip cannot install
  (see the notes, "pycudadecon packaging").
* The CPU engine is written for speed because deconvolution is the workflow's most expensive step:
  real-to-complex FFTs in float32/complex64; the OTF and the back projector computed once per padded shape;
  FFTW through pyFFTW when it is importable (planned transforms, multithreaded; ``FFTW_MEASURE`` where the
  planning pays for itself, else ``FFTW_ESTIMATE``; measured plans are kept in a wisdom file, by default a
  per-user cache; one workspace serves every chunk of a volume), ``scipy.fft`` otherwise
  (``llsmflow.decon.fft.USE_PYFFTW = False`` forces it); every buffer preallocated and every element-wise step
  done in place, slab by slab (cache-sized blocks along z) on all threads. The 1/N of the inverse FFT is
  folded into the OTFs, so no extra pass normalises; the OTFs are pruned transforms of the small kernels.
  Prepared PSF kernels are kept per process and on disk (``kernel_cache``, the per-user cache): a repeated
  ``llsmflow deconvolve`` with the same PSF imports no SciPy.
* Volumes larger than a memory budget (``deconvolve(..., max_memory_gb=...)``) are deconvolved in
  overlapping chunks with a halo of real data around each (see ``plan_chunks``), read and written a few
  planes at a time (any array with slicing: zarr, h5py, memmap); away from the volume's border the result
  matches whole-volume deconvolution to a few 1e-4 of the maximum for RL (measured in the tests).
* ``radial_otf`` tabulates the radially averaged OTF the way cudaDecon writes it, to compare our PSF → OTF
  path with cudaDecon's.
* Differences from cudaDecon, on purpose: the volume is *padded* (reflect mode, then up to a fast FFT
  length) instead of cropped, so output and input shapes match and borders do not ring; the OTF is the full
  3-D real FFT of the prepared PSF (not a radially averaged one).
* ``deconvolve`` runs on the CPU by default (the workflow's default, ``config/schema.yaml``); with
  ``backend='auto'``, ``available_backends`` / ``choose_backend`` pick pycudadecon where its library really
  loads and a GPU is present, else CuPy on a GPU, else NumPy.

Units: voxel sizes are ``(dz_um, dy_um, dx_um)`` in µm; intensities are in the input's units (camera counts);
memory in GB (10^9 bytes); spatial frequencies in cycles per voxel unless stated.

Submodules, one per seam (each imports only what its step needs; the names below are re-exported here and
imported on first use, so ``import llsmflow.decon.backends`` costs no NumPy)
----------------------------------------------------------------------------------------------------------
* ``backends``: methods, ``DEFAULT_ITERATIONS``, ``BACKENDS`` / ``GPU_BACKENDS``, CUDA detection, backend
  choice, the out-of-memory retry policy. Standard library only: the Snakefile and the HPC layer read it.
* ``psf``: PSF preparation and the data background (SciPy ``ndimage``).
* ``otf``: OTF, radial OTF, Wiener–Butterworth back projector.
* ``padding``: fast FFT lengths, padded shapes, reflection padding (NumPy only).
* ``fft``: pyFFTW/``scipy.fft`` workspaces, the planning effort (``auto``: measured plans only where they pay,
  ``measuring_pays``) and the FFT settings (``USE_PYFFTW``, ``FFTW_PLANNER_EFFORT``,
  ``FFTW_PLANNING_TIMELIMIT_S``: set them on this submodule; ``LLSMFLOW_FFTW_PLANNING``).
* ``wisdom``: the FFTW wisdom file (``FFTW_WISDOM_ENV``; by default the per-user cache, keyed by machine),
  read only when it is FFTW wisdom, written atomically and merged under a lock (standard library only).
* ``engine``: the threaded RL/WB iteration on one padded block.
* ``chunks``: chunk planning and memory estimates (the HPC layer sizes jobs with them).
* ``execute``: running a chunk plan, in this process or on a dask client.
* ``volumes``: validating volumes and array-likes, reading and writing blocks in slabs.
* ``cudadecon``: the pycudadecon backend.
* ``api``: ``deconvolve``, ``richardson_lucy``, ``wiener_butterworth``, ``DeconResult``.
* ``transfer``: whole-array host ⇄ GPU transfers through pinned memory (``pinned_empty``).
* ``pipeline``: ``deskew_deconvolve``, a raw stack deskewed and deconvolved in one call, kept on the GPU
  between the steps with backend ``'cupy'`` (``docs/gpu.md``); engines kept per process
  (``clear_engine_cache``).
"""

from llsmflow._lazy import lazy_exports

_EXPORTS = {
    "BACKENDS": "backends",
    "GPU_BACKENDS": "backends",
    "METHODS": "backends",
    "DEFAULT_ITERATIONS": "backends",
    "GPU_OOM_RETRIES": "backends",
    "available_backends": "backends",
    "choose_backend": "backends",
    "prepare_psf": "psf",
    "deskew_psf": "psf",
    "resolve_psf_geometry": "psf",
    "PSF_GEOMETRIES": "psf",
    "resolve_background": "psf",
    "psf_to_otf": "otf",
    "radial_otf": "otf",
    "wb_back_projector": "otf",
    "padded_shape": "padding",
    "pyfftw": "fft",
    "USE_PYFFTW": "fft",
    "FFTW_PLANNER_EFFORT": "fft",
    "FFTW_PLANNING_TIMELIMIT_S": "fft",
    "FFTW_WISDOM_ENV": "fft",
    "FFTW_PLANNING_ENV": "fft",
    "ChunkPlan": "chunks",
    "estimate_memory": "chunks",
    "plan_chunks": "chunks",
    "reach_shape": "chunks",
    "DeconResult": "api",
    "deconvolve": "api",
    "richardson_lucy": "api",
    "wiener_butterworth": "api",
    "clear_engine_cache": "engine",
    "pinned_empty": "transfer",
    "DeskewDeconResult": "pipeline",
    "deskew_deconvolve": "pipeline",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
