"""``llsmflow convert``: a copy of an archive in another NGFF version (0.4 for Fiji/MoBIE/BigDataViewer)."""

from __future__ import annotations

from pathlib import Path


def cmd_convert(args) -> int:
    from llsmflow.archive.convert import convert_archive

    out = convert_archive(args.archive, args.output, args.ngff_version)
    print(f"{out}: NGFF {args.ngff_version} copy of {args.archive} (check it with `llsmflow verify {out}`)")
    return 0


def register_convert_commands(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="copy an archive into another NGFF version (0.4 for Fiji/MoBIE), without re-running anything",
        description="Copy an llsmflow archive into NGFF 0.4 (zarr v2: Fiji, MoBIE, BigDataViewer) or 0.5 "
        "(zarr v3), keeping channel names and colours, scale and translation, the llsmflow metadata and the "
        "tables; the copy gets its own checksum manifest. Example: "
        "llsmflow convert results/demo/demo.ome.zarr --ngff-version 0.4 -o demo-v04.ome.zarr",
    )
    p.add_argument("archive", type=Path, help="the llsmflow .ome.zarr archive (read only)")
    p.add_argument(
        "--ngff-version", choices=("0.4", "0.5"), default="0.4", help="NGFF version of the copy (default: 0.4)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="the copy to write (must not exist)")
    p.set_defaults(func=cmd_convert)
