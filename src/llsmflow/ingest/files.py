"""The files of an acquisition: stacks matched to samples, declared vs found, headers and PSFs checked.

Every file an acquisition uses lies inside the raw directory, stacks and PSFs alike (:func:`inside_raw_dir`):
the raw directory is the unit that is checksummed in the provenance manifest, archived and re-verified by
``llsmflow reproduce``. A symbolic link from it to a file elsewhere would make the run depend on data that
none of these cover (and that can change, or be anything readable on the machine, without the raw
directory changing), so such links are refused for stacks exactly as for PSFs. Links that stay inside the
raw directory are fine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a table is made: `llsmflow deconvolve` uses only the PSF check here
    import pandas as pd

from llsmflow.errors import LlsmflowError
from llsmflow.ingest.model import tile_name
from llsmflow.io import read_header, read_volume

STACK_SUFFIXES = (".tif", ".tiff")
# At most this many missing stacks are named one by one in the error line; the count says the rest.
MAX_LISTED = 10


def inside_raw_dir(raw_dir: Path, candidate: Path) -> bool:
    """Whether ``candidate`` (symbolic links followed) lies inside ``raw_dir`` (also resolved)."""
    try:
        candidate.resolve().relative_to(raw_dir.resolve())
    except ValueError:
        return False
    return True


def match_stacks(raw_dir: Path, pattern: re.Pattern, psf_names: set[str]) -> pd.DataFrame:
    """Sample table (``tile, channel, timepoint, path, sample_id``) of the stacks whose names match.

    ``path`` is the file name relative to ``raw_dir``. Hidden files, PSFs and non-TIFF names are skipped.
    A matching stack that is a symbolic link to a file outside ``raw_dir`` is refused (module docstring).
    """
    rows = []
    for file in sorted(raw_dir.iterdir()):
        if file.name in psf_names or file.suffix.lower() not in STACK_SUFFIXES or file.name.startswith("."):
            continue
        match = pattern.match(file.name)
        if not match:
            continue
        if file.is_symlink() and not inside_raw_dir(raw_dir, file):
            raise LlsmflowError(
                f"is a symbolic link to {file.resolve()}, outside the raw data directory; expected stacks "
                "inside it (it is what is checksummed, archived and reproduced: copy the file in)",
                file,
            )
        groups = match.groupdict()
        indices = {}
        for group in ("channel", "timepoint", "ix", "iy", "iz"):
            value = groups.get(group)
            if value is None and group in ("ix", "iy", "iz"):
                value = "0"
            try:
                indices[group] = int(value)
            except (TypeError, ValueError):
                raise LlsmflowError(
                    f"file_regex group {group} matched {value!r} in this name; expected digits (an index)",
                    file,
                ) from None
        rows.append(
            {
                "tile": tile_name(indices["ix"], indices["iy"], indices["iz"]),
                "channel": indices["channel"],
                "timepoint": indices["timepoint"],
                "path": file.name,
            }
        )
    if not rows:
        raise LlsmflowError(
            "no raw stacks match the metadata's file_regex; expected TIFF stacks of the acquisition", raw_dir
        )
    import pandas as pd

    samples = pd.DataFrame(rows)
    samples["sample_id"] = [
        f"{r.tile}-ch{r.channel}-t{r.timepoint:04d}" for r in samples.itertuples(index=False)
    ]
    duplicated = samples[samples["sample_id"].duplicated(keep=False)]
    if len(duplicated):
        names = ", ".join(duplicated["path"].head(2))
        raise LlsmflowError(
            f"two files map to sample {duplicated['sample_id'].iloc[0]} ({names}); "
            "expected one stack per tile, channel and timepoint",
            raw_dir,
        )
    return samples


def only_stacks(samples: pd.DataFrame, only_files, raw_dir: Path) -> pd.DataFrame:
    """The samples whose stack file is among ``only_files`` (names relative to ``raw_dir``; an acquisition
    still being written, ``llsmflow watch``); all of them when ``only_files`` is None."""
    if only_files is None:
        return samples
    kept = samples[samples["path"].isin(set(only_files))].reset_index(drop=True)
    if kept.empty:
        raise LlsmflowError("no complete stack yet; expected at least one to process", raw_dir)
    return kept


def _ranges(values) -> str:
    """``[1, 2, 3, 7]`` → ``'1–3, 7'``."""
    values = sorted(values)
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}–{v}")
            start = None
    return ", ".join(parts)


def check_declared_vs_found(
    samples: pd.DataFrame,
    tiles: list[str],
    n_channels: int,
    declared_timepoints: int | None,
    raw_dir: Path,
    metadata_path: Path,
    allow_missing_timepoints: bool = False,
    partial: bool = False,
) -> int:
    """Check that the stacks found are exactly the declared tiles × channels × timepoints.

    Declared: the metadata's tiles and channels, and timepoints ``0 … N−1`` with ``N`` its ``timepoints``
    (or, when it declares none, one more than the last timepoint found: a gap is still a gap). The archive's
    time axis is ``timepoint × time_interval_s``, so a missing timepoint is not skipped silently: it would
    label every later frame with the wrong time. Each missing timepoint, channel or tile is named; stacks
    missing here and there are counted and the first ones named. Returns ``N``.

    With ``allow_missing_timepoints`` (config ``ingest.allow_missing_timepoints``) a timepoint missing from
    every tile and channel is accepted (:func:`missing_timepoints` lists them; the workflow records them and
    keeps each frame's real time); a stack missing from only some tiles or channels is still an error.
    ``partial``: an acquisition still being written (``llsmflow watch``): stacks not written yet are not
    missing.
    """
    meta_name = metadata_path.name
    unknown_tiles = sorted(set(samples["tile"]) - set(tiles))
    if unknown_tiles:
        raise LlsmflowError(
            f"stacks for tile(s) {unknown_tiles} have no stage position in the metadata; expected a 'tiles' "
            "entry for every tile",
            metadata_path,
        )
    bad_channels = sorted(set(samples["channel"]) - set(range(n_channels)))
    if bad_channels:
        raise LlsmflowError(
            f"stacks for channel(s) {bad_channels} have no channel entry in the metadata; expected "
            f"channels 0..{n_channels - 1}",
            metadata_path,
        )
    found_t = set(int(t) for t in samples["timepoint"])
    if declared_timepoints is not None:
        n_t, source = int(declared_timepoints), f"of the {declared_timepoints} declared in {meta_name}"
        beyond = sorted(t for t in found_t if t >= n_t)
        if beyond:
            raise LlsmflowError(
                f"stacks for timepoint(s) {_ranges(beyond)} lie beyond the {n_t} timepoint(s) declared in "
                f"{meta_name}; expected timepoints 0..{n_t - 1} (correct 'timepoints' or remove the files)",
                raw_dir,
            )
    else:
        n_t = max(found_t) + 1
        source = f"(stacks found for timepoints {_ranges(found_t)}; {meta_name} declares no 'timepoints')"
    if partial:
        return n_t
    whole = []
    missing_t = sorted(set(range(n_t)) - found_t)
    if missing_t and not allow_missing_timepoints:
        whole.append(f"timepoint(s) {_ranges(missing_t)} {source}")
    missing_c = sorted(set(range(n_channels)) - set(samples["channel"]))
    if missing_c:
        whole.append(f"channel(s) {_ranges(missing_c)} (declared in {meta_name})")
    missing_tiles = sorted(set(tiles) - set(samples["tile"]))
    if missing_tiles:
        whole.append(f"tile(s) {', '.join(missing_tiles)} (declared in {meta_name})")
    if whole:
        accept = ", or accept a gap with ingest.allow_missing_timepoints: true"
        raise LlsmflowError(
            f"no stack at all for {'; '.join(whole)}; expected a stack for every tile, channel and timepoint "
            f"0..{n_t - 1} (the archive's time axis is timepoint × time_interval_s): copy the missing files"
            + (accept if missing_t and not allow_missing_timepoints else ""),
            raw_dir,
        )
    expected = {(t, c, tp) for t in tiles for c in range(n_channels) for tp in sorted(found_t)}
    found = set(zip(samples["tile"], samples["channel"], samples["timepoint"], strict=True))
    missing = sorted(expected - found, key=lambda k: (k[2], k[1], k[0]))
    if missing:
        named = [f"tile {t}, channel {c}, timepoint {tp}" for t, c, tp in missing[:MAX_LISTED]]
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        then = f"; then: {'; '.join(named[1:])}" if len(named) > 1 else ""
        raise LlsmflowError(
            f"{len(missing)} stack(s) missing, first: {named[0]}{then}{more}; expected every tile × channel "
            "× timepoint",
            raw_dir,
        )
    return n_t


def missing_timepoints(samples: pd.DataFrame, n_timepoints: int) -> list[int]:
    """Timepoints ``0 … n_timepoints − 1`` without any stack (accepted only with
    ``allow_missing_timepoints``)."""
    return sorted(set(range(int(n_timepoints))) - {int(t) for t in samples["timepoint"]})


def check_stacks(raw_dir: Path, samples: pd.DataFrame, expected_shape, metadata_path: Path) -> tuple:
    """Check every raw stack's header (readable, complete, real dtype, ZYX) and that all share one shape.

    Only headers are read (milliseconds per file), so a damaged or odd stack stops the run before any step
    starts instead of failing one job hours later. The expected shape is the metadata's ``raw_shape_zyx``
    when it has one, else the shape most stacks have.
    """
    shapes = {}
    for name in samples["path"]:
        shape, _ = read_header(raw_dir / name)
        shapes[name] = shape
    if expected_shape is not None:
        expected, source = tuple(int(n) for n in expected_shape), f"raw_shape_zyx in {metadata_path.name}"
    else:
        import pandas as pd

        counts = pd.Series([str(s) for s in shapes.values()]).value_counts()
        expected = next(s for s in shapes.values() if str(s) == counts.index[0])
        source = "most stacks"
    for name, shape in shapes.items():
        if shape != expected:
            row = samples.loc[samples["path"] == name].iloc[0]
            raise LlsmflowError(
                f"stack of tile {row.tile}, channel {row.channel}, timepoint {row.timepoint} has shape "
                f"{shape} (ZYX); expected {expected} ({source}): every tile, channel and timepoint must "
                "have one shape",
                raw_dir / name,
            )
    if expected[0] < 2:
        raise LlsmflowError(
            f"stacks have {expected[0]} plane(s); expected a stage-scan stack of at least 2 planes", raw_dir
        )
    return expected


def check_psf(
    path: Path,
    psf_voxel_um,
    data_voxel_um,
    volume_shape,
    channel: int,
    geometry: str = "auto",
    angle_deg: float | None = None,
    stage_step_um: float | None = None,
    scan_axis: str = "x",
    *,
    rotate: bool,
    background: float | str,
) -> None:
    """Check a channel's PSF: readable, 3-D, finite, with signal, and its kernel no larger than the volume.

    The kernel is the PSF as the deconvolution will use it, made by the workflow's ``prepare_psf`` step's
    function, :func:`llsmflow.decon.psf.prepare_psf_for_run` (``geometry``: the config's
    ``deconvolution.psf_geometry``; ``data_voxel_um``: the grid of the volumes deconvolved, with ``rotate``
    the rotated volumes' isotropic voxel; ``background``: the config's ``deconvolution.psf_background``), and
    compared with ``volume_shape`` (voxels, ZYX): the deskewed volume's, or with ``rotate`` (config
    ``deskew.rotate``) the rotated one's.
    """
    from llsmflow.decon.psf import prepare_psf_for_run
    from llsmflow.errors import located

    psf = read_volume(path)
    with located(path):
        kernel, _, _ = prepare_psf_for_run(
            psf.data,
            psf_voxel_um,
            data_voxel_um,
            geometry=geometry,
            angle_deg=angle_deg,
            stage_step_um=stage_step_um,
            scan_axis=scan_axis,
            rotate=rotate,
            background=background,
        )
    require_psf_within_volume(
        kernel.shape,
        volume_shape,
        path,
        what=f"PSF of channel {channel}",
        grid="the coverslip-frame grid (deskew.rotate)" if rotate else "the deskewed grid",
        volume="rotated volume" if rotate else "deskewed volume",
        sizes="psf_voxel_size_um; the PSF must be in the objective frame, or be declared skewed "
        "(deconvolution.psf_geometry: skewed)",
        hint="; or deconvolve in the objective frame (deskew.rotate: false)" if rotate else "",
    )


def check_psfs(
    raw_dir: Path, channels: list[dict], raw_shape, dz: float, dy: float, dx: float, angle: float, scan_axis: str,
    *, psf_geometry: str, rotate: bool, psf_background: float | str,
) -> None:
    """:func:`check_psf` for every channel, against the volume deconvolved from a raw stack of ``raw_shape``
    (ZYX raw voxels): the deskewed volume, or with ``rotate`` (config ``deskew.rotate``) the volume deskewed
    and rotated to the coverslip frame on its isotropic grid of ``dx`` µm (the shape
    :func:`llsmflow.deskew.deskew_rotate` gives, :func:`llsmflow.deskew.rotated_shape`)."""
    from llsmflow.deskew.frames import deconvolved_grid

    volume, voxel = deconvolved_grid(raw_shape, dz, dx, dy, angle, scan_axis, rotate)
    for index, channel in enumerate(channels):
        check_psf(
            raw_dir / channel["psf"], channel["psf_voxel_size_um"], voxel, volume, index,
            psf_geometry, angle, dz, scan_axis, rotate=rotate, background=psf_background,
        )


def require_psf_within_volume(
    kernel_shape,
    volume_shape,
    path,
    what: str = "PSF",
    grid: str = "the data grid",
    volume: str = "volume",
    sizes: str = "the voxel sizes",
    hint: str = "",
) -> None:
    """Raise if a prepared PSF (``kernel_shape``, voxels ZYX) is larger than the volume along any axis.

    Deconvolution itself copes (the volume is padded by reflection), but its result would then be shaped by
    the padding more than by the data: almost always a wrong PSF file or wrong PSF voxel sizes. ``hint`` ends
    the message (another way out, e.g. another frame).
    """
    larger = [f"{a}: {k} > {n}" for a, k, n in zip("zyx", kernel_shape, volume_shape, strict=True) if k > n]
    if larger:
        raise LlsmflowError(
            f"{what} spans {tuple(kernel_shape)} voxels (ZYX) on {grid}, larger than the {volume} "
            f"{tuple(volume_shape)} ({', '.join(larger)}); expected a PSF smaller than the volume "
            f"(check {sizes} and the PSF file{hint})",
            path,
        )
