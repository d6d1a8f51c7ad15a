"""Is a raw file complete? Only its headers are read: a file still being written is never read beyond them.

A file that stopped growing may still be incomplete (the instrument paused, the network share stalled, the
acquisition software crashed half-way): PetaKit5D's streaming mode calls a file complete after a minute
without change, and is wrong for such a file. Here a file is COMPLETE when, after it stopped growing for the
settle time (:mod:`llsmflow.watch.folder`), it also parses to the plane count its metadata declares:

* TIFF (generic ``acquisition.json`` stacks, Janelia/3i stacks, OME-TIFF/ImageJ hyperstacks): the chain of
  image file directories (one per plane) is walked and every plane's directory, tag values and pixel data
  must lie inside the file;
  the number of planes must equal the declared one: the acquisition metadata's ``raw_shape_zyx``, else the
  Janelia ``Settings.txt`` (planes of the channel's ``S PZT``/``Z PZT`` line), else what the file's own
  first page declares (tifffile's shaped description, ImageJ's ``images=``, OME-XML). A TIFF that declares
  nothing anywhere is complete when its chain of planes ends properly with every plane inside the file.
* CZI (Zeiss): every segment whole (their 32-byte headers walked to the end of the file), the file header's
  update-pending flag cleared, the subblock directory listing T × C × Z subblocks (the sizes the metadata XML
  declares) and every subblock's data inside the file (ZEN may write the directory first).

tifffile and czifile (already used by :mod:`llsmflow.io`) read the structures; nothing here decodes pixels.
"""

from __future__ import annotations

import logging
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

#: ``S PZT`` (stage scan) and ``Z PZT`` (objective scan) lines of a Janelia ``Settings.txt``: the third value is
#: the number of planes of channel ``(C)``'s stacks.
_JANELIA_PLANES = r"^{axis} PZT Offset, Interval \(um\), # of Pixels for Excitation \({channel}\)\s*:\s*(.*)$"


@contextmanager
def _quiet(*names: str):
    """tifffile and czifile log a warning for every broken structure of a truncated file: expected here."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def janelia_planes(settings: str | Path, channel: int) -> int | None:
    """Planes per stack of ``channel`` that a Janelia ``Settings.txt`` declares (stage scan: ``S PZT``,
    objective scan: ``Z PZT``); None when it does not say."""
    text = Path(settings).read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    stage_scan = re.search(r"^Z motion\s*:\s*(.*)$", text, re.M)
    axis = "S" if stage_scan and "sample" in stage_scan.group(1).lower() else "Z"
    match = re.search(_JANELIA_PLANES.format(axis=axis, channel=int(channel)), text, re.M)
    if not match:
        return None
    values = match.group(1).split("\t")
    try:
        planes = int(float(values[2]))
    except (IndexError, ValueError):
        return None
    return planes if planes > 0 else None


def _declared_by_file(tif) -> int | None:
    """Planes the TIFF's first page says the file holds: ImageJ ``images=``, tifffile's shaped description
    (its shape without the two image axes), or OME-XML ``SizeZ × SizeC × SizeT``."""
    first = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    description = getattr(first, "description", "") or ""
    match = re.search(r"^images=(\d+)", description, re.M)
    if match:
        return int(match.group(1))
    if description.startswith("{") and '"shape"' in description:
        import json

        try:
            shape = json.loads(description)["shape"]
        except (ValueError, KeyError, TypeError):
            return None
        samples = getattr(first, "samplesperpixel", 1) or 1
        image_axes = 3 if samples > 1 and len(shape) >= 3 and shape[-1] == samples else 2
        return int(math.prod(shape[:-image_axes])) if len(shape) > image_axes else 1
    if "<OME" in description:
        sizes = [re.search(rf'Size{a}="(\d+)"', description) for a in "ZCT"]
        if all(sizes):
            return int(math.prod(int(m.group(1)) for m in sizes))
    return None


def tiff_state(path: str | Path, declared_planes: int | None = None) -> tuple[bool, str]:
    """``(complete, why)`` of a TIFF file: its planes walked (headers only), each plane's data inside the file,
    their number equal to ``declared_planes`` (else to what the file itself declares)."""
    import tifffile

    path = Path(path)
    size = os.path.getsize(path)
    try:
        with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
            pages = tif.pages
            count = len(pages)
            header = tif.tiff
            for index in range(count):
                page = pages[index]
                # the plane's directory (tag count, tags, next offset), its tags' values and its pixel data
                extents = [(page.offset, header.tagnosize + len(page.tags) * header.tagsize + header.offsetsize)]
                extents += [(tag.valueoffset, tag.valuebytecount) for tag in page.tags.values()]
                extents += list(zip(page.dataoffsets, page.databytecounts, strict=False))
                if any(offset + length > size for offset, length in extents):
                    return False, f"plane {index + 1} of {count} ends beyond the {size} bytes written"
            declared = declared_planes if declared_planes is not None else _declared_by_file(tif)
    except Exception as error:  # noqa: BLE001 - tifffile raises many kinds on a half-written file
        return False, f"not a complete TIFF yet ({type(error).__name__}: {error})"
    if count == 0:
        return False, "no plane yet"
    if declared is not None and count != declared:
        return False, f"{count} plane(s) written of {declared} declared"
    return True, f"{count} plane(s)" + (" as declared" if declared is not None else "")


def _czi_segments_end(path: Path, size: int) -> int | None:
    """Walk a CZI's segment headers (32 bytes each: 16-byte id, allocated size, used size); the end of the
    last whole segment, or None when a segment runs beyond ``size`` bytes."""
    import struct

    position = 0
    with open(path, "rb") as handle:
        while position + 32 <= size:
            handle.seek(position)
            sid, allocated, _ = struct.unpack("<16sqq", handle.read(32))
            if not sid.startswith(b"ZISRAW") and sid.rstrip(b"\0") != b"DELETED":
                return None
            if allocated < 0 or position + 32 + allocated > size:
                return None
            position += 32 + allocated
    return position


def czi_state(path: str | Path) -> tuple[bool, str]:
    """``(complete, why)`` of a CZI file: every segment whole, its header's update-pending flag cleared, its
    subblock directory listing T × C × Z subblocks as its metadata declares, each inside the file."""
    from llsmflow.io import czi_header

    path = Path(path)
    size = os.path.getsize(path)
    try:
        end = _czi_segments_end(path, size)
        if end != size:
            return False, f"a segment runs beyond the {size} bytes written"
        with _quiet("czifile", "tifffile"):
            import czifile

            with czifile.CziFile(str(path)) as czi:
                if czi.header.update_pending:
                    return False, "its header says an update is pending (still being written)"
                entries = list(czi.filtered_subblock_directory)
                ends = []
                for entry in entries:
                    segment = entry.data_segment()  # the subblock's header only, not its pixels
                    ends.append(segment.data_offset + segment.data_size + segment.attachment_size)
            header = czi_header(path)
    except Exception as error:  # noqa: BLE001 - a half-written CZI fails in many ways
        return False, f"not a complete CZI yet ({type(error).__name__}: {error})"
    sizes = header["sizes"]
    declared = math.prod(int(sizes.get(a, 1)) for a in "TCZ")
    if any(end > size for end in ends):
        return False, f"a subblock ends beyond the {size} bytes written"
    if len(entries) != declared:
        return False, f"{len(entries)} plane(s) written of {declared} declared"
    return True, f"{declared} plane(s) as declared"


def file_state(path: str | Path, declared_planes: int | None = None) -> tuple[bool, str]:
    """``(complete, why)`` of a raw file by its suffix (``.czi``, else TIFF)."""
    if Path(path).suffix.lower() == ".czi":
        return czi_state(path)
    return tiff_state(path, declared_planes)
