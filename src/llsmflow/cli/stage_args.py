"""The arguments, help and examples of the commands that run one step on one file (their work:
:mod:`llsmflow.cli.stages`): every argument with its unit and default, every command with an example."""

from __future__ import annotations

import argparse
from pathlib import Path

from llsmflow.cli.help_format import example
from llsmflow.cli.stages import (
    cmd_archive,
    cmd_deconvolve,
    cmd_deskew,
    cmd_stitch,
    cmd_synth,
    cmd_track,
    cmd_verify,
)
from llsmflow.decon.backends import BACKENDS, DEFAULT_ITERATIONS, METHODS  # standard library only


def _parse_tiles(text: str) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile grid {text!r} is invalid; expected NYxNX, e.g. 2x1") from None
    if ny < 1 or nx < 1:
        raise argparse.ArgumentTypeError(f"tile grid {text!r} is invalid; expected at least 1x1")
    return ny, nx


def _background(text: str):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"background {text!r} is invalid; expected a number or 'auto'"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"background {value} is invalid; expected >= 0 or 'auto'")
    return value


def register_stage_arguments(sub) -> None:
    """Add synth, deskew, deconvolve, stitch, track, archive and verify to the ``llsmflow`` subcommands."""

    p = sub.add_parser(
        "synth",
        help="write a synthetic stage-scan LLSM acquisition with ground truth",
        description="Write a synthetic stage-scan lattice light-sheet acquisition (raw stacks, PSFs,\n"
        "acquisition.json) and its ground truth (particle positions and tracks).",
        epilog=example("llsmflow synth --tiny data/demo", "llsmflow synth --tiles 2x2 --timepoints 10 data/big"),
    )
    p.add_argument("outdir", type=Path, help="output directory (raw/ and truth/ are created in it)")
    p.add_argument(
        "--tiles",
        type=_parse_tiles,
        default=(2, 1),
        help="tile grid NYxNX: across × along the scan (default 2x1)",
    )
    p.add_argument("--channels", type=int, default=2, help="number of channels, 1–3")
    p.add_argument("--timepoints", type=int, default=5, help="number of timepoints")
    p.add_argument("--angle", type=float, default=31.5, help="sheet angle, degrees")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same data)")
    p.add_argument("--tiny", action="store_true", help="smaller stacks (32×64×96 voxels), for tests")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "deskew",
        help="deskew a stage-scanned stack (optionally rotate to the coverslip frame)",
        description="Deskew one stage-scanned stack (ZYX) into the objective frame, or with --rotate into\n"
        "the coverslip frame with isotropic voxels; writes an OME-TIFF with voxel sizes in µm.",
        epilog=example(
            "llsmflow deskew raw.tif deskewed.ome.tif --dx 0.104 --dz 0.3 --angle 31.5",
            "llsmflow deskew cell.czi deskewed.ome.tif --channel 1 --timepoint 0 --rotate",
        ),
    )
    p.add_argument("input", type=Path, help="raw stack: TIFF (ZYX), OME-TIFF or ImageJ hyperstack")
    p.add_argument("output", type=Path, help="output OME-TIFF (float32, with voxel sizes)")
    p.add_argument("--dx", type=float, default=None, help="camera pixel size in µm (default: the file's)")
    p.add_argument(
        "--dy", type=float, default=None, help="pixel size along y in µm (default: --dx, else the file's)"
    )
    p.add_argument(
        "--dz", type=float, default=None, help="stage step between planes in µm (default: the file's)"
    )
    p.add_argument(
        "--angle",
        type=float,
        default=None,
        help="sheet angle in degrees (e.g. 31.5; Zeiss LLS7: 30); default: the file's, required if it "
        "states none",
    )
    p.add_argument(
        "--scan-axis",
        choices=("x", "y"),
        default=None,
        help="stage scan axis (y for Zeiss LLS7 and OPM; default: the file's, else x)",
    )
    p.add_argument(
        "--rotate", action="store_true", help="also rotate to the coverslip frame, isotropic voxels"
    )
    p.add_argument(
        "--channel",
        type=int,
        default=None,
        help="channel index, from 0, in a multi-channel file (default: the file's only channel)",
    )
    p.add_argument(
        "--timepoint",
        type=int,
        default=None,
        help="timepoint index, from 0, in a time-lapse file (default: the file's only timepoint)",
    )
    p.set_defaults(func=cmd_deskew)

    p = sub.add_parser(
        "deconvolve",
        help="Richardson–Lucy or Wiener–Butterworth deconvolution of a (deskewed) volume",
        description="Deconvolve one volume (ZYX) with a measured PSF: Richardson–Lucy or the\n"
        "Wiener–Butterworth back projector, on the CPU or a GPU, in chunks when it does not fit in memory.",
        epilog=example(
            "llsmflow deconvolve deskewed.ome.tif decon.ome.tif --psf PSF_ch0_488nm.tif --iterations 10",
            "llsmflow deconvolve deskewed.ome.tif decon.ome.tif --psf psf.tif --method wb --backend auto",
        ),
    )
    p.add_argument(
        "input", type=Path, help="volume to deconvolve: OME-TIFF (ZYX), e.g. written by llsmflow deskew"
    )
    p.add_argument("output", type=Path, help="output OME-TIFF (float32, the input's voxel size)")
    p.add_argument(
        "--psf", type=Path, required=True, help="PSF stack (bead image, ZYX TIFF); skewed or objective frame"
    )
    p.add_argument("--dx", type=float, default=None, help="data pixel size in µm (default: the file's)")
    p.add_argument(
        "--dz",
        type=float,
        default=None,
        help="data z spacing in µm (deskewed: dz·sin θ; default: the file's)",
    )
    p.add_argument(
        "--dxpsf", type=float, default=None, help="PSF pixel size in µm (default: the PSF file's, else --dx)"
    )
    p.add_argument(
        "--dzpsf", type=float, default=None, help="PSF z step in µm (default: the PSF file's, else --dz)"
    )
    p.add_argument(
        "--psf-geometry",
        choices=("auto", "skewed", "objective"),
        default="auto",
        help="skewed: a stage-scanned PSF, deskewed and cropped to the bead first; objective: used as is; "
        "auto: skewed when the bead moves between planes as a stage scan moves it",
    )
    p.add_argument(
        "--angle", type=float, default=None, help="data sheet angle, degrees (default: from llsmflow deskew)"
    )
    p.add_argument(
        "--stage-step",
        type=float,
        default=None,
        help="data stage step in µm (default: from llsmflow deskew's output)",
    )
    p.add_argument(
        "--scan-axis",
        choices=("x", "y"),
        default=None,
        help="data stage scan axis (default: from llsmflow deskew's output, else x)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations (default: "
        + ", ".join(f"{n} for {method}" for method, n in DEFAULT_ITERATIONS.items())
        + ")",
    )
    p.add_argument(
        "--background",
        type=_background,
        default="auto",
        help="constant camera background in counts, subtracted before deconvolving, or 'auto' (estimated "
        "from the volume)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="rl",
        help="rl: Richardson–Lucy; wb: Wiener–Butterworth back projector (best after 1–3 iterations)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="cpu",
        help="where to compute; auto: pycudadecon, else CuPy, else the CPU, whichever is available",
    )
    p.add_argument(
        "--max-memory",
        type=float,
        default=None,
        help="working-set budget in GB: larger volumes are deconvolved in overlapping chunks (default: no "
        "budget, the whole volume at once)",
    )
    p.add_argument(
        "--channel",
        type=int,
        default=None,
        help="channel index, from 0, in a multi-channel input (default: the file's only channel)",
    )
    p.add_argument(
        "--timepoint",
        type=int,
        default=None,
        help="timepoint index, from 0, in a time-lapse input (default: the file's only timepoint)",
    )
    p.add_argument(
        "--compression",
        choices=("none", "zlib"),
        default="none",
        help="output TIFF compression: zlib about halves the file but is single-threaded (seconds per volume; "
        "default: none)",
    )
    p.set_defaults(func=cmd_deconvolve)

    p = sub.add_parser(
        "stitch",
        help="register and fuse tiles into a Zarr volume",
        description="Register overlapping deskewed tiles (phase correlation, then a global fit) and fuse\n"
        "them with blended seams into one Zarr volume (ZYX, µm).",
        epilog=example("llsmflow stitch --tiles tiles.csv --output fused.zarr --transforms transforms.json"),
    )
    p.add_argument(
        "--tiles",
        type=Path,
        required=True,
        help="tiles.csv with columns path,x_um,y_um,z_um (deskewed OME-TIFFs and stage positions in µm)",
    )
    p.add_argument("--output", type=Path, required=True, help="output Zarr store (fused volume)")
    p.add_argument(
        "--transforms",
        type=Path,
        default=None,
        help="transforms.json: used if it exists, else written with the registered positions (default: "
        "registered, not written)",
    )
    p.add_argument(
        "--min-quality",
        type=float,
        default=0.5,
        help="drop pairs whose normalised cross-correlation is lower (0–1, unitless)",
    )
    p.add_argument("--max-shift-um", type=float, default=3.0, help="largest stage error searched, µm")
    p.add_argument("--blend-width-um", type=float, default=2.0, help="width of the blending ramps, µm")
    p.add_argument(
        "--max-memory",
        type=float,
        default=None,
        help="memory budget in GB: tiles read lazily, chunks in flight bounded (default: no budget, tiles "
        "read whole)",
    )
    p.set_defaults(func=cmd_stitch)

    p = sub.add_parser(
        "track",
        help="detect and link particles in an OME-Zarr archive (trackpy)",
        description="Detect particles in every timepoint of one channel of an OME-Zarr archive and link\n"
        "them into tracks with trackpy; positions in µm, times in s.",
        epilog=example(
            "llsmflow track results/demo/demo.ome.zarr --output tracks.csv",
            "llsmflow track cell.ome.zarr --output ch1.csv --channel 1 --diameter-um 0.9 0.5 0.5",
        ),
    )
    p.add_argument("input", type=str, help="OME-Zarr archive (TCZYX): a directory or an http(s):// or s3:// URL")
    p.add_argument("--output", type=Path, required=True, help="tracks.csv (a .parquet is written beside it)")
    p.add_argument("--channel", type=int, default=0, help="channel index to track, from 0")
    p.add_argument(
        "--diameter-um",
        type=float,
        nargs="+",
        default=[0.5],
        help="particle diameter in µm: one value, or three for z y x (e.g. 0.9 0.5 0.5)",
    )
    p.add_argument("--search-range-um", type=float, default=1.2, help="largest displacement per frame, µm")
    p.add_argument("--memory", type=int, default=1, help="frames a particle may vanish and keep its track")
    p.add_argument(
        "--min-track-length", type=int, default=3, help="shortest track kept, in frames (timepoints)"
    )
    p.add_argument(
        "--min-mass",
        type=float,
        default=None,
        help="minimum integrated brightness, in intensity units × voxels (default: auto, from the data)",
    )
    p.set_defaults(func=cmd_track)

    p = sub.add_parser(
        "archive",
        help="assemble fused Zarr volumes into an OME-Zarr archive (TCZYX)",
        description="Assemble fused volumes into one OME-Zarr archive (TCZYX, µm and s) with a sha256\n"
        "manifest, the tables given and the checksums of the raw inputs.",
        epilog=example(
            "llsmflow archive t0c0.zarr t0c1.zarr t1c0.zarr t1c1.zarr --output demo.ome.zarr "
            "--channels 2 --timepoints 2 --time-interval-s 6 --channel-names GFP mCherry"
        ),
    )
    p.add_argument("fused", nargs="+", help="fused Zarr stores ordered t0c0, t0c1, …, t1c0, …")
    p.add_argument("--output", type=Path, required=True, help="output .ome.zarr")
    p.add_argument("--channels", type=int, required=True, help="number of channels (C) in the fused list")
    p.add_argument("--timepoints", type=int, required=True, help="number of timepoints (T) in the fused list")
    p.add_argument(
        "--time-interval-s", type=float, required=True, help="time between two timepoints, s"
    )
    p.add_argument(
        "--channel-names", nargs="+", default=None, help="one name per channel (default: ch0, ch1, …)"
    )
    p.add_argument(
        "--ngff-version",
        choices=("0.4", "0.5"),
        default="0.5",
        help="OME-NGFF version: 0.5 (Zarr v3) or 0.4 (Zarr v2, for readers that do not read 0.5 yet)",
    )
    p.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a Parquet table (tracks, statistics) to store beside the image; repeatable (default: none)",
    )
    p.add_argument(
        "--raw-files",
        nargs="*",
        default=[],
        help="raw inputs whose sha256 go into the manifest (default: none)",
    )
    p.add_argument(
        "--acquisition",
        type=Path,
        default=None,
        help="acquisition.json (as `llsmflow init`/the workflow's ingest writes it): channel names, emission "
        "wavelengths (colours) and the acquisition metadata kept in the archive (default: none)",
    )
    p.add_argument(
        "--emission-nm",
        type=float,
        nargs="+",
        default=None,
        help="emission wavelength (nm) per channel, for the display colours (default: from --acquisition)",
    )
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser(
        "verify",
        help="check an archive against its sha256 manifest (missing, changed, extra)",
        description="Check every file of an archive, and the raw inputs it lists, against its sha256\n"
        "manifest; exit 1 and list what is missing, changed or extra.",
        epilog=example(
            "llsmflow verify results/demo/demo.ome.zarr",
            "llsmflow verify results/demo/demo.ome.zarr --raw-dir /archive/demo/raw",
        ),
    )
    p.add_argument("archive", type=str, help="the .ome.zarr archive: a directory or an http(s):// or s3:// URL")
    p.add_argument(
        "--raw-dir",
        type=str,  # a folder or a URL (s3://…/raw): Path would fold the URL's //
        default=None,
        help="where the raw inputs are now, a folder or a URL (default: where they were when archived)",
    )
    p.set_defaults(func=cmd_verify)
