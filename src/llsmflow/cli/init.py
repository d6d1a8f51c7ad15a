"""``llsmflow init RAW_DIR [-o config.yaml]``: detect the instrument, say what its files hold, write a config.

Only what no file says is asked for (on a terminal) or must be given by a flag (otherwise): the light sheet's
angle for a plain OME-TIFF, the camera pixel size for a Janelia camera llsmflow does not know, … The reading
is :func:`llsmflow.ingest.detect.detect_format` and :func:`llsmflow.ingest.instrument.instrument_metadata`;
this module parses, asks and prints.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FLAGS = {
    "angle_deg": "angle",
    "dz_um": "dz",
    "dx_um": "dx",
    "scan_axis": "scan_axis",
    "time_interval_s": "interval",
}
QUESTIONS = {
    "angle_deg": "light-sheet angle to the coverslip (degrees)",
    "dz_um": "stage step between raw planes (µm)",
    "dx_um": "camera pixel size at the sample (µm)",
    "scan_axis": "camera axis the stage scans along (x or y)",
    "time_interval_s": "time between timepoints (s)",
}


def _ask(key: str):
    from llsmflow.errors import LlsmflowError

    answer = input(f"{QUESTIONS[key]}: ").strip()
    if key == "scan_axis":
        if answer not in ("x", "y"):
            raise LlsmflowError(f"scan axis {answer!r}; expected x or y")
        return answer
    try:
        return float(answer)
    except ValueError:
        raise LlsmflowError(f"{QUESTIONS[key]} {answer!r} is not a number; expected a number") from None


def _wave(value) -> str:
    return "unknown" if value is None else f"{value:g} nm"


def describe(acq, reading_notes=(), sources=None) -> list[str]:
    """The lines ``llsmflow init`` prints about an acquisition."""
    sources = sources or {}

    def src(key):
        return f"  [{sources[key]}]" if key in sources else ""

    samples = acq.samples
    times = samples.groupby("timepoint")["time_s"].min()
    lines = [
        f"instrument: {acq.instrument} ({acq.format}: {acq.metadata_path.name})",
        f"tiles: {len(acq.tiles)} ({', '.join(acq.tiles['tile'])})",
        f"channels: {len(acq.channels)}",
    ]
    for c in acq.channels:
        geometry = f", {c['psf_geometry']}" if c.get("psf_geometry") else ""
        lines.append(
            f"  {c['index']}: {c['name']}  excitation {_wave(c.get('excitation_nm'))}, emission "
            f"{_wave(c.get('emission_nm'))}  PSF {c.get('psf')} ({'×'.join(f'{v:.4g}' for v in c['psf_voxel_size_um'])}"
            f" µm{geometry})"
        )
    shown = ", ".join(f"{t:g}" for t in times.head(6)) + (" …" if len(times) > 6 else "")
    lines += [
        f"timepoints: {len(times)} (times s: {shown}; interval {acq.time_interval_s:g} s){src('time_interval_s')}",
        f"voxel size raw (dz stage step, dy, dx): {acq.dz_um:g}, {acq.dy_um:g}, {acq.dx_um:g} µm"
        f"{src('dz_um') or src('dx_um')}",
        f"light-sheet angle: {acq.angle_deg:g}°{src('angle_deg')}   scan axis: {acq.scan_axis}{src('scan_axis')}",
        "deskewed voxel size: " + ", ".join(f"{v:.4g}" for v in acq.deskewed_voxel_size_um) + " µm",
        f"stacks: {len(samples)} (tile × channel × timepoint), gaps: none",
    ]
    lines += [f"note: {n}" for n in reading_notes]
    return lines


# folder names that say what the files are, not which acquisition: the dataset is named after the parent
GENERIC_RAW_FOLDER_NAMES = frozenset({"raw", "raw_data", "rawdata", "data", "images", "input", "tif", "tiff", "czi"})


def _dataset_name(raw_dir: Path) -> str:
    """A dataset name from the raw folder: ``2026-03-01_hela/raw`` gives ``2026-03-01_hela``, not ``raw``."""
    folder = raw_dir.resolve()
    if folder.name.lower().replace("-", "_") in GENERIC_RAW_FOLDER_NAMES and folder.parent.name:
        folder = folder.parent
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name).strip("_.-")
    return name if name and name[0].isalnum() else f"dataset_{name}".rstrip("_")


def cmd_init(args) -> int:
    from llsmflow.errors import LlsmflowError
    from llsmflow.fair.rembi import write_rembi_template
    from llsmflow.ingest import read_acquisition
    from llsmflow.ingest.detect import detect_format
    from llsmflow.ingest.instrument import HOW_TO_GIVE, instrument_metadata
    from llsmflow.io import as_path

    raw_dir = as_path(args.raw_dir).resolve()  # a local folder, or a URL (docs/remote.md)
    output = Path(args.output)
    if output.exists() and not args.force:
        raise LlsmflowError("exists; expected a new config file name (or --force to replace it)", output)
    metadata = as_path(args.metadata) if args.metadata else None
    if metadata is not None and not metadata.is_absolute() and not metadata.exists():
        metadata = raw_dir / metadata
    metadata = metadata.resolve() if metadata is not None else None
    overrides = {key: getattr(args, flag) for key, flag in FLAGS.items() if getattr(args, flag) is not None}
    if args.dx is not None:
        overrides["dy_um"] = args.dx
    fmt, found = detect_format(raw_dir, metadata)
    notes, sources = [], {}
    if fmt != "acquisition.json":
        reading, meta, sources = instrument_metadata(raw_dir, fmt, found, metadata, overrides)
        notes = reading.notes
        missing = [k for k in HOW_TO_GIVE if k != "dy_um" and meta.get(k) is None]
        if missing and sys.stdin.isatty() and not args.no_input:
            for key in missing:
                overrides[key] = _ask(key)
                sources[key] = "asked"
            missing = []
        if missing:
            flags = ", ".join(f"--{FLAGS[k].replace('_', '-')}" for k in missing)
            raise LlsmflowError(
                f"{', '.join(missing)} not in the instrument's files; expected {flags} (no terminal to ask on)",
                found,
            )
        metadata = found if metadata is None else metadata
    acq = read_acquisition(raw_dir, metadata, overrides, check_files=True)
    for line in describe(acq, notes, sources):
        print(line)
    config = {
        "dataset": args.dataset or _dataset_name(raw_dir),
        "raw_dir": str(raw_dir),
        "metadata": str(metadata) if metadata is not None else None,
        "overrides": overrides,
    }
    rembi = output.resolve().with_name("rembi.yaml")
    config["rembi"] = str(rembi)
    kept = rembi.exists()
    _write_config(output, config, args.workflow_dir)
    print(f"wrote {output}: run it with `llsmflow run --configfile {output}`")
    write_rembi_template(acq, rembi, config["dataset"])
    print(f"{'kept' if kept else 'wrote'} {rembi}: REMBI metadata for deposits; fill in its FILL IN fields")
    return 0


def _write_config(output: Path, config: dict, workflow_dir) -> None:
    import yaml

    from llsmflow.io import atomic_output
    from llsmflow.run.config import find_workflow_root, load_schema, validate_config

    schema = load_schema(find_workflow_root(workflow_dir))
    if schema is not None:
        validate_config(config, schema, output)
    text = "# written by llsmflow init; every option is documented in config/README.md\n"
    text += yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    with atomic_output(output) as tmp:
        tmp.write_text(text, encoding="utf-8")


def register_init_commands(subparsers) -> None:
    """Add ``llsmflow init``."""
    from llsmflow.cli.help_format import add_workflow_dir_argument, example

    p = subparsers.add_parser(
        "init",
        help="detect a raw folder's instrument (Zeiss CZI, Janelia/3i, OME-TIFF, acquisition.json) and write "
        "a config",
        description="Detect the instrument of a raw folder (Zeiss CZI, Janelia/3i Settings.txt, OME-TIFF or\n"
        "ImageJ hyperstacks, acquisition.json), check what it declares against the files found, and write\n"
        "a workflow config; asks on a terminal for what no file states.",
        epilog=example(
            "llsmflow init data/demo/raw -o demo.yaml",
            "llsmflow init /data/cell1 -o cell1.yaml --angle 30 --interval 2.5 --no-input",
        ),
    )
    p.add_argument(
        "raw_dir",
        help="folder of raw data as the microscope wrote it (read-only), or its URL (https://…/raw/ that the "
        "server lists, s3://…; needs llsmflow[remote], docs/remote.md)",
    )
    p.add_argument("-o", "--output", default="config.yaml", help="config file to write")
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset name (default: the raw folder's name, or its parent's when the folder is called raw, "
        "data, images, …)",
    )
    p.add_argument(
        "--metadata",
        default=None,
        help="the acquisition's file when the folder holds several (a .czi, *_Settings.txt or hyperstack), or "
        "an acquisition.json overriding the files' fields (default: the one acquisition found)",
    )
    p.add_argument(
        "--angle", type=float, default=None, help="light-sheet angle, degrees (default: the files')"
    )
    p.add_argument(
        "--dx", type=float, default=None, help="camera pixel size at the sample, µm (default: the files')"
    )
    p.add_argument("--dz", type=float, default=None, help="stage step, µm (default: the files')")
    p.add_argument(
        "--scan-axis", choices=("x", "y"), default=None, help="stage scan axis (default: the files')"
    )
    p.add_argument(
        "--interval", type=float, default=None, help="time between timepoints, s (default: the files')"
    )
    p.add_argument("--no-input", action="store_true", help="never ask on the terminal; fail instead")
    p.add_argument("--force", action="store_true", help="replace an existing config file")
    add_workflow_dir_argument(p)
    p.set_defaults(func=cmd_init)
