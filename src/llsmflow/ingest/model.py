"""The acquisition model: what the workflow needs to know about one raw acquisition, whatever its format.

Every reader fills the same :class:`Acquisition` (``acquisition.json``, Zeiss CZI, Janelia/3i folders,
OME-TIFF/ImageJ hyperstacks: :mod:`llsmflow.ingest.detect`), so the workflow, the resource model and the archive
never look at a format's own metadata.

A sample (one tile × channel × timepoint) is a row of ``samples``: ``path`` (relative to the raw folder),
``file_channel``/``file_timepoint`` (the volume's C and T index inside a multi-volume file such as a CZI or a
hyperstack; ``None`` for a file holding one volume) and ``time_s`` (its real acquisition time when the files
say it, else ``timepoint × time_interval_s``). A channel's ``excitation_nm``/``emission_nm`` may be ``None``
(unknown: instruments do not always write them; acquisition.json requires the emission).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llsmflow.deskew.frames import deskewed_plane_spacing_um
from llsmflow.errors import LlsmflowError
from llsmflow.io import UrlPath, as_path, is_url, redact

if TYPE_CHECKING:  # pandas (0.3 s) is imported where a table is made, not by every user of tile_name
    import pandas as pd


def raw_folder(raw_dir) -> Path | UrlPath:
    """The raw folder as a path: a local directory, or a URL (:class:`llsmflow.io.UrlPath`) whose files are
    listed by the server (an HTML directory listing over HTTP, e.g. python's ``http.server``; an object store
    lists natively) and read with range requests, only what is needed.

    Raises
    ------
    LlsmflowError
        Not a directory; a URL that cannot be listed (named without credentials).
    """
    folder = as_path(raw_dir)
    if folder.is_dir():
        return folder
    if is_url(raw_dir):
        raise LlsmflowError(
            "cannot be listed as a raw data folder; expected a URL whose server lists the folder's files (an "
            "HTML directory listing, as python -m http.server gives, or an s3:// prefix), or a local folder",
            redact(raw_dir),
        )
    raise LlsmflowError("raw data directory not found; expected a directory of raw data", folder)


def tile_name(ix: int, iy: int, iz: int) -> str:
    """The tile's name in sample ids and outputs: ``000x_001y_000z``."""
    return f"{int(ix):03d}x_{int(iy):03d}y_{int(iz):03d}z"


@dataclass
class Acquisition:
    """Everything the workflow needs to know about one raw acquisition (µm, s, degrees).

    ``declared_timepoints`` is the number of timepoints the metadata declares (``timepoints``), or, when it
    declares none, one more than the last timepoint found; every timepoint ``0 … declared_timepoints − 1``
    has a stack in every tile and channel (checked by :func:`llsmflow.ingest.read_acquisition`), except the
    ``missing_timepoints`` (missing from every tile and channel), accepted only with
    ``read_acquisition(allow_missing_timepoints=True)`` (config ``ingest.allow_missing_timepoints``).
    """

    raw_dir: Path
    metadata_path: Path
    angle_deg: float
    dz_um: float
    dx_um: float
    dy_um: float
    scan_axis: str
    time_interval_s: float
    camera_offset: float
    channels: list[dict]
    tiles: pd.DataFrame
    samples: pd.DataFrame
    metadata: dict = field(default_factory=dict)
    declared_timepoints: int | None = None
    missing_timepoints: list[int] = field(default_factory=list)
    instrument: str = "generic"
    format: str = "acquisition.json"

    @property
    def deskewed_voxel_size_um(self) -> tuple[float, float, float]:
        """Voxel size (dz', dy, dx) in µm after deskewing."""
        return (deskewed_plane_spacing_um(self.dz_um, self.angle_deg), self.dy_um, self.dx_um)

    @property
    def channel_names(self) -> list[str]:
        return [c["name"] for c in self.channels]

    @property
    def timepoints(self) -> list[int]:
        return sorted(int(t) for t in self.samples["timepoint"].unique())

    @property
    def frame_times_s(self) -> list[float]:
        """Real acquisition time (s) of each of :attr:`timepoints`: the earliest ``time_s`` of its stacks
        (``timepoint × time_interval_s`` when the files give no time stamps)."""
        first = self.samples.groupby("timepoint")["time_s"].min()
        return [float(first.loc[t]) for t in self.timepoints]

    def sample_path(self, tile: str, channel: int, timepoint: int) -> Path:
        """Absolute path of the raw stack for (tile, channel, timepoint)."""
        row = self.samples.loc[
            (self.samples["tile"] == tile)
            & (self.samples["channel"] == channel)
            & (self.samples["timepoint"] == timepoint)
        ]
        if len(row) != 1:
            raise LlsmflowError(
                f"no raw stack for tile {tile}, channel {channel}, timepoint {timepoint}", self.raw_dir
            )
        return self.raw_dir / row["path"].iloc[0]

    @property
    def metadata_files(self) -> list[Path]:
        """The files the acquisition's fields come from: the metadata file and an overriding acquisition.json."""
        files = [self.metadata_path]
        extra = self.metadata.get("overridden_by")
        if extra and as_path(extra) != self.metadata_path:
            files.append(as_path(extra))
        return files

    def sample_selector(self, sample_id: str) -> dict:
        """``{'path', 'channel', 'timepoint'}`` to read a sample's volume: ``io.read_volume(path,
        channel=, timepoint=)`` (``None`` selectors for a file holding one volume)."""
        row = self.samples.loc[self.samples["sample_id"] == sample_id]
        if len(row) != 1:
            raise LlsmflowError(f"no raw stack for sample {sample_id}", self.raw_dir)
        row = row.iloc[0]

        def index(value):
            import pandas as pd

            return None if value is None or pd.isna(value) else int(value)

        return {
            "path": self.raw_dir / row["path"],
            "channel": index(row.get("file_channel")),
            "timepoint": index(row.get("file_timepoint")),
        }

    @property
    def display_wavelengths_nm(self) -> list[float] | None:
        """Per channel the emission wavelength, else the excitation (for display colours); None if a channel
        has neither."""
        waves = [c.get("emission_nm") or c.get("excitation_nm") for c in self.channels]
        return None if any(w is None for w in waves) else [float(w) for w in waves]

    def psf_path(self, channel: int) -> Path:
        return self.raw_dir / self.channels[channel]["psf"]


def tiles_csv_table(acquisition: Acquisition, deskewed_paths: dict[str, str | Path]) -> pd.DataFrame:
    """The ``tiles.csv`` table (``path,x_um,y_um,z_um``) of nominal objective-frame tile origins."""
    import pandas as pd

    rows = []
    for _, tile in acquisition.tiles.iterrows():
        rows.append(
            {
                "path": str(deskewed_paths[tile["tile"]]),
                "x_um": tile["x_um"],
                "y_um": tile["y_um"],
                "z_um": tile["z_um"],
                "tile": tile["tile"],
            }
        )
    return pd.DataFrame(rows)
