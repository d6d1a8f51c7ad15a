"""Janelia / 3i lattice light-sheet folders: ``<cell>_Settings.txt`` and one TIFF stack per channel and time.

No library: the acquisition software (Janelia's LLSM LabVIEW program, sold by 3i) writes a plain-text
``Settings.txt`` (``key :<TAB>values`` and ``key = value`` lines) that the standard library parses, and plain
TIFF stacks named ``<cell>_ch<C>_stack<T>_<λ>nm_<relative ms>msec_<absolute ms>msecAbs.tif`` (tifffile).

What is read:

* ``Z motion``: ``Sample piezo`` is a stage scan (skewed; the stage step is the ``S PZT`` interval, µm);
  ``Z galvo & piezo`` (or ``Z galvo``) is an objective scan (not skewed; plane spacing the ``Z PZT`` interval);
* the channels' lasers from ``Excitation Filter, Laser, Power (%), Exp(ms) (C)`` and the file names' ``λnm``;
* the time of every stack from the file name's relative ``msec`` field (the real acquisition time);
* the light sheet's angle from ``Angle between stage and bessel beam (deg)`` when the file has it;
* the camera pixel size: ``Camera type`` (a Hamamatsu Orca Flash 4.0 / Fusion has 6.5 µm pixels) divided by
  ``Magnification``; for another camera it must be given (``llsmflow init --dx``).

Emission wavelengths are not in these files: they stay unknown unless acquisition.json gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from llsmflow.errors import LlsmflowError

INSTRUMENT = "Janelia/3i lattice light-sheet"
SETTINGS_SUFFIX = "_Settings.txt"
#: ``<cell>_ch<C>_stack<T>_<λ>nm_<relative ms>msec_<absolute ms>msecAbs.tif``
STACK_NAME = re.compile(
    r"^(?P<cell>.+?)_ch(?P<channel>\d+)_stack(?P<timepoint>\d+)_(?P<wavelength>\d+)nm_"
    r"(?P<rel_ms>\d+)msec_(?P<abs_ms>\d+)msecAbs\.tiff?$"
)
#: Camera pixel pitch (µm) of the cameras these instruments use, by Settings.txt's ``Camera type``.
CAMERA_PIXEL_UM = {"orca4.0": 6.5, "orcaflash4.0": 6.5, "orcafusion": 6.5, "orca2.8": 3.63}
# A settings file far larger than this is not a Settings.txt.
MAX_SETTINGS_BYTES = 4 * 2**20


@dataclass
class JaneliaSettings:
    """What one ``Settings.txt`` says (µm, degrees, nm)."""

    path: Path
    z_motion: str
    skewed: bool
    stage_step_um: float | None
    plane_step_um: float | None
    lasers_nm: dict[int, float]
    stacks: dict[int, int]
    magnification: float | None
    camera: str | None
    camera_pixel_um: float | None
    angle_deg: float | None
    date: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def dx_um(self) -> float | None:
        if self.camera_pixel_um and self.magnification:
            return self.camera_pixel_um / self.magnification
        return None

    @property
    def dz_um(self) -> float | None:
        """The raw plane spacing: the stage step (stage scan) or the objective step (objective scan)."""
        return self.stage_step_um if self.skewed else self.plane_step_um


def _values(text: str, key: str) -> list[str] | None:
    match = re.search(rf"^{re.escape(key)}\s*[:=]\s*(.*)$", text, flags=re.MULTILINE)
    if not match:
        return None
    return [v.strip().strip('"') for v in match.group(1).strip().split("\t")]


def _number(values: list[str] | None, index: int) -> float | None:
    try:
        return float(values[index])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None


def parse_settings(path: str | Path) -> JaneliaSettings:
    """Parse a Janelia/3i ``Settings.txt``.

    Raises
    ------
    LlsmflowError
        Unreadable, too large, or without ``Z motion`` and the scan intervals it needs.
    """
    from llsmflow.io import as_path  # a URL too (raw data where they live)

    path = as_path(path)
    if not path.is_file():
        raise LlsmflowError("file not found; expected a Janelia/3i Settings.txt", path)
    if path.stat().st_size > MAX_SETTINGS_BYTES:
        raise LlsmflowError(f"is larger than {MAX_SETTINGS_BYTES} bytes; expected a Settings.txt", path)
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    z_motion_values = _values(text, "Z motion")
    if not z_motion_values:
        raise LlsmflowError(
            "has no 'Z motion' line; expected a Janelia/3i Settings.txt (Sample piezo or Z galvo & piezo)",
            path,
        )
    z_motion = z_motion_values[0]
    skewed = "sample" in z_motion.lower()
    lasers, stacks = {}, {}
    for match in re.finditer(
        r"^Excitation Filter, Laser, Power \(%\), Exp\(ms\) \((\d+)\)\s*:\s*(.*)$", text, re.M
    ):
        wave = _number(match.group(2).split("\t"), 1)
        if wave is not None:
            lasers[int(match.group(1))] = wave
    for match in re.finditer(r"^# of stacks \((\d+)\)\s*:\s*(\d+)", text, re.M):
        stacks[int(match.group(1))] = int(match.group(2))
    s_step = _number(_values(text, "S PZT Offset, Interval (um), # of Pixels for Excitation (0)"), 1)
    z_step = _number(_values(text, "Z PZT Offset, Interval (um), # of Pixels for Excitation (0)"), 1)
    if skewed and not s_step:
        raise LlsmflowError(
            f"Z motion is {z_motion!r} (stage scan) but the S PZT interval is {s_step}; expected a stage step "
            "in µm > 0",
            path,
        )
    if not skewed and not z_step:
        raise LlsmflowError(
            f"Z motion is {z_motion!r} (objective scan) but the Z PZT interval is {z_step}; expected a plane "
            "step in µm > 0",
            path,
        )
    camera = (_values(text, "Camera type") or [None])[0]
    key = re.sub(r"[\s_-]", "", camera or "").lower()
    return JaneliaSettings(
        path=path,
        z_motion=z_motion,
        skewed=skewed,
        stage_step_um=abs(s_step) if s_step else None,
        plane_step_um=abs(z_step) if z_step else None,
        lasers_nm=lasers,
        stacks=stacks,
        magnification=_number(_values(text, "Magnification"), 0),
        camera=camera,
        camera_pixel_um=CAMERA_PIXEL_UM.get(key),
        angle_deg=_number(_values(text, "Angle between stage and bessel beam (deg)"), 0),
        date=(_values(text, "Date") or [None])[0],
    )


def find_stacks(raw_dir: Path) -> list[dict]:
    """Every stack named as the acquisition software names them: cell, channel, timepoint (stack number),
    wavelength (nm), relative time (s) and file name."""
    stacks = []
    for file in sorted(raw_dir.iterdir()):
        match = STACK_NAME.match(file.name)
        if match and not file.name.startswith("."):
            stacks.append(
                {
                    "cell": match["cell"],
                    "channel": int(match["channel"]),
                    "timepoint": int(match["timepoint"]),
                    "wavelength_nm": float(match["wavelength"]),
                    "time_s": int(match["rel_ms"]) / 1000.0,
                    "abs_ms": int(match["abs_ms"]),
                    "path": file.name,
                }
            )
    return stacks


def is_psf_cell(cell: str) -> bool:
    """Bead acquisitions are named after the PSF (``psf642``, ``488_PSF``)."""
    return "psf" in cell.lower()
