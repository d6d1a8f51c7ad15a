"""What a watch round asks the workflow for: the targets of the volumes complete now, nothing else.

The targets are the workflow's own files (``workflow/rules/*.smk``), so a round is an ordinary Snakemake run
on fewer targets, and the final run (no targets) is the batch run itself: outputs equal a batch run's by
construction, and Snakemake's up-to-date logic makes a restart repeat nothing.

* a complete volume (sample): its deconvolved volume (one ``deskew_deconvolve`` job per volume: watch runs
  with ``jobs.unit: volume``); for the reference timepoint also its QC preview (``qc/tile_<tile>_ch<c>.png``);
* a timepoint whose tiles and channels are all complete, once the reference timepoint is: its fused volumes
  (registration first, once, from the reference timepoint's tiles);
* tracking, the archive, the mosaic, the report and the provenance crate need every timepoint: the final run.

Intermediates are temporary unless the config keeps them (Snakemake deletes a temporary file once the jobs
of the current run that read it are done). A round therefore also names, as targets, the deconvolved volumes
that a later fusion will read: they exist, so nothing runs for them, and they are not deleted before that
fusion. A volume, preview or fusion counts as done when its step record (``work/<dataset>/steps/…``) exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Plan:
    """One round: ``targets`` (paths relative to the run directory) and what they are for."""

    targets: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)  # sample ids deconvolved by this round
    timepoints: list[int] = field(default_factory=list)  # timepoints fused by this round
    register: bool = False

    def __bool__(self) -> bool:
        return bool(self.volumes or self.timepoints or self.register)


def sample_id(tile: str, channel: int, timepoint: int) -> str:
    return f"{tile}-ch{int(channel)}-t{int(timepoint):04d}"


class Layout:
    """The workflow's file names for one dataset (as ``workflow/rules/*.smk`` lays them out)."""

    def __init__(self, config: dict):
        from llsmflow.run.paths import run_paths

        self.results, self.work = run_paths(config)
        self.ref_channel = int(config["stitch"]["reference_channel"])
        self.ref_timepoint = int(config["stitch"]["reference_timepoint"])

    def step(self, name: str) -> Path:
        return self.work / "steps" / name

    def deconvolved(self, sample: str) -> Path:
        return self.work / "deconvolved" / f"{sample}.ome.tif"

    def volume_done(self, sample: str) -> bool:
        return self.step(f"deskew_deconvolve/{sample}.json").is_file()

    def preview(self, tile: str, channel: int) -> Path:
        return self.results / "qc" / f"tile_{tile}_ch{int(channel)}.png"

    def preview_done(self, tile: str, channel: int) -> bool:
        return self.step(f"qc_tile/{tile}-ch{int(channel)}.json").is_file()

    def fused(self, channel: int, timepoint: int) -> Path:
        return self.work / "fused" / f"ch{int(channel)}-t{int(timepoint):04d}.zarr"

    def fused_done(self, channel: int, timepoint: int) -> bool:
        return self.step(f"fuse/t{int(timepoint):04d}.json").is_file()  # a fuse job: every channel

    def register_done(self) -> bool:
        return self.step("register.json").is_file()


def plan_round(
    acq, complete: set[str], layout: Layout, skip: set[str] = frozenset(), processed: set[str] = frozenset()
) -> Plan:
    """The targets for the volumes of ``acq`` (an :class:`llsmflow.ingest.Acquisition` of the stacks complete
    so far) whose files are all in ``complete`` (names relative to the raw folder), PSFs included; ``skip``:
    targets that failed in an earlier round (left to the final run, which names the error); ``processed``:
    samples already known deconvolved (their step records are not looked at again)."""
    plan = Plan()

    def volume_done(sample: str) -> bool:
        return sample in processed or layout.volume_done(sample)

    psfs_ready = all(acq.psf_path(c).name in complete for c in range(len(acq.channels)))
    if not psfs_ready:
        return plan
    tiles = list(acq.tiles["tile"])
    channels = range(len(acq.channels))
    ready = {}
    for row in acq.samples.itertuples(index=False):
        if row.path in complete:
            ready[(row.tile, int(row.channel), int(row.timepoint))] = row.sample_id

    def add(path: Path) -> bool:
        if str(path) in skip:
            return False
        plan.targets.append(str(path))
        return True

    for (tile, channel, timepoint), sample in sorted(ready.items(), key=lambda kv: kv[0][::-1]):
        if not volume_done(sample) and add(layout.deconvolved(sample)):
            plan.volumes.append(sample)
        if timepoint == layout.ref_timepoint and not layout.preview_done(tile, channel):
            if add(layout.preview(tile, channel)) and sample not in plan.volumes:
                plan.volumes.append(sample)

    def whole(timepoint: int) -> bool:
        return all((t, c, timepoint) in ready for t in tiles for c in channels)

    if whole(layout.ref_timepoint):
        timepoints = sorted({t for (_, _, t) in ready})
        for timepoint in timepoints:
            if not whole(timepoint):
                continue
            wanted = [c for c in channels if not layout.fused_done(c, timepoint)]
            if wanted and all(add(layout.fused(c, timepoint)) for c in wanted):
                plan.timepoints.append(timepoint)
        plan.register = bool(plan.timepoints) and not layout.register_done()
    # deconvolved volumes that a later fusion reads: named so that this round does not delete them
    for (_, channel, timepoint), sample in ready.items():
        if sample in plan.volumes or not volume_done(sample):
            continue
        if not layout.fused_done(channel, timepoint) and layout.deconvolved(sample).exists():
            plan.targets.append(str(layout.deconvolved(sample)))
    return plan
