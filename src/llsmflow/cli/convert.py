"""``llsmflow convert``: a copy of an archive in another NGFF version (0.4 for Fiji/MoBIE/BigDataViewer)."""

from __future__ import annotations

from pathlib import Path


def cmd_convert(args) -> int:
    from llsmflow.archive.convert import convert_archive

    out = convert_archive(args.archive, args.output, args.ngff_version)
    from llsmflow.archive.remote import redact

    print(f"{out}: NGFF {args.ngff_version} copy of {redact(args.archive)} (check it with `llsmflow verify {out}`)")
    return 0


def register_convert_commands(sub) -> None:
    """Add ``llsmflow convert``."""
    from llsmflow.cli.help_format import example

    p = sub.add_parser(
        "convert",
        help="copy an archive into another NGFF version (0.4 for Fiji/MoBIE), without re-running anything",
        description="Copy an llsmflow archive into NGFF 0.4 (zarr v2: Fiji, MoBIE, BigDataViewer) or 0.5 "
        "(zarr v3), keeping channel names and colours, scale and translation, the acquisition and run "
        "metadata and the tables; the copy gets its own checksum manifest.",
        epilog=example(
            "llsmflow convert results/demo/demo.ome.zarr --ngff-version 0.4 -o demo-v04.ome.zarr",
            "llsmflow convert demo-v04.ome.zarr --ngff-version 0.5 -o demo-v05.ome.zarr",
            "llsmflow convert https://example.org/data/demo.ome.zarr --ngff-version 0.4 -o demo-v04.ome.zarr",
        ),
    )
    p.add_argument(
        "archive", type=str, help="the llsmflow .ome.zarr archive (read only): a folder or an http(s):// or s3:// URL"
    )
    p.add_argument(
        "--ngff-version",
        choices=("0.4", "0.5"),
        default="0.4",
        help="NGFF version of the copy (default: 0.4)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="the copy to write (must not exist)")
    p.set_defaults(func=cmd_convert)


def acquisition_for_archive(path: Path, n_channels: int) -> tuple[dict, list[str] | None, list | None]:
    """``(attributes, channel names, emission wavelengths in nm)`` for ``llsmflow archive --acquisition``:
    the acquisition.json's content under ``acquisition`` (as the workflow stores it), and its channels' names
    and emission wavelengths when it describes ``n_channels`` channels (else None)."""
    import json

    from llsmflow.errors import LlsmflowError

    try:
        acquisition = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlsmflowError(f"cannot read ({exc}); expected an acquisition.json", path) from exc
    if not isinstance(acquisition, dict):
        raise LlsmflowError("is not a JSON object; expected an acquisition.json", path)
    channels = acquisition.get("channels")
    if not isinstance(channels, list) or len(channels) != n_channels:
        return {"acquisition": acquisition}, None, None
    names = [c.get("name") if isinstance(c, dict) else None for c in channels]
    waves = [c.get("emission_nm") if isinstance(c, dict) else None for c in channels]
    return (
        {"acquisition": acquisition},
        names if all(isinstance(n, str) and n for n in names) else None,
        waves if any(w is not None for w in waves) else None,
    )
