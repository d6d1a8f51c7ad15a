"""What ``llsmflow reproduce`` checks before it runs anything: the crate's workflow snapshot and the raw inputs.

A crate is often downloaded: its workflow snapshot is code that Snakemake would execute. Before a re-run,

1. every file of the snapshot (``<crate>/workflow``) is checked against the sha256 the crate records for it
   (its ``File`` entity in ``ro-crate-metadata.json``, and its ``provenance/workflow/…`` line in the crate's
   ``checksums.sha256`` when present): a changed, missing, unlisted or symlinked file is refused;
2. the snapshot is compared with the workflow of the installed llsmflow (:data:`llsmflow.run.config.SOURCE_TREE`,
   never the current directory): byte-identical means the re-run runs exactly the installed release's code;
   a snapshot that differs (or a crate without snapshot checksums, written by an older llsmflow) runs only
   with ``--trust-snapshot``;
3. the raw inputs are checked at the recorded paths (or, with ``--raw-dir NEW``, at the same paths relative
   to NEW), and the re-run's ``raw_dir`` is the verified directory; the files the workflow would select there
   must be exactly the verified ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llsmflow.errors import LlsmflowError

SNAPSHOT = "workflow"
TRUST_FLAG = "--trust-snapshot"


@dataclass
class SnapshotCheck:
    """Outcome of :func:`check_workflow`: what will run."""

    files: int
    verified: bool  # every file matched a recorded sha256
    installed_root: Path | None  # the installed llsmflow's checkout, when it has a workflow
    differs: list[str] = field(default_factory=list)  # snapshot paths that differ from the installed workflow

    @property
    def identical(self) -> bool:
        return self.installed_root is not None and not self.differs


def snapshot_files(crate_dir: Path) -> dict[str, Path]:
    """``{path relative to the crate: path}`` of the snapshot's files; a symlink is refused (not followed)."""
    root = crate_dir / SNAPSHOT
    if root.is_symlink() or not (root / "Snakefile").is_file():
        raise LlsmflowError(
            "the crate has no workflow snapshot (workflow/Snakefile) or it is a symlink; expected a crate "
            "written by llsmflow",
            root,
        )
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            if path.is_symlink():
                raise LlsmflowError(
                    f"symlink in the workflow snapshot (to {os.readlink(path)}); expected regular files only, "
                    "refusing to run it",
                    path,
                )
        for name in filenames:
            path = Path(dirpath, name)
            files[path.relative_to(crate_dir).as_posix()] = path
    return files


def recorded_snapshot_checksums(graph: dict) -> dict[str, str]:
    """``{path relative to the crate: sha256}`` of the snapshot files the crate's metadata lists with one."""
    found = {}
    for entity_id, entity in graph.items():
        if isinstance(entity_id, str) and entity_id.startswith(f"{SNAPSHOT}/") and entity.get("sha256"):
            found[entity_id] = str(entity["sha256"]).lower()
    return found


def manifest_snapshot_checksums(crate_dir: Path) -> dict[str, str]:
    """``{path relative to the crate: sha256}`` of the snapshot lines of the crate's ``checksums.sha256``
    (listed relative to the crate's parent, ``provenance/workflow/…``); empty when there are none."""
    from llsmflow.archive.manifest import _parse_manifest

    manifest = crate_dir / "checksums.sha256"
    if not manifest.is_file():
        return {}
    prefix = f"{crate_dir.name}/{SNAPSHOT}/"
    return {
        name[len(crate_dir.name) + 1 :]: digest
        for name, digest in _parse_manifest(manifest).items()
        if name.startswith(prefix)
    }


def verify_snapshot(crate_dir: Path, graph: dict) -> int | None:
    """Check every snapshot file against its recorded sha256; return the number of files checked, or None
    when the crate records no snapshot checksums at all (an older crate). Raise on the first file that is
    changed, missing, unlisted or a symlink."""
    from llsmflow.io import sha256_file

    files = snapshot_files(crate_dir)
    recorded = recorded_snapshot_checksums(graph)
    if not recorded:
        return None
    in_manifest = manifest_snapshot_checksums(crate_dir)
    for name, digest in sorted(in_manifest.items()):
        if name in recorded and recorded[name] != digest:
            raise LlsmflowError(
                f"the crate's checksums.sha256 records sha256 {digest[:16]}… for this snapshot file, its "
                f"metadata {recorded[name][:16]}…; expected one checksum, refusing to run it",
                crate_dir / name,
            )
    for name in sorted(set(recorded) | set(in_manifest)):
        if name not in files:
            raise LlsmflowError(
                "workflow snapshot file recorded in the crate is missing; expected the file that ran",
                crate_dir / name,
            )
    for name, path in sorted(files.items()):
        if name not in recorded:
            raise LlsmflowError(
                "file in the workflow snapshot is not listed in the crate (no recorded sha256); expected only "
                "the files that ran, refusing to run it",
                path,
            )
        actual = sha256_file(path)
        if actual != recorded[name]:
            raise LlsmflowError(
                f"workflow snapshot file changed since the run: sha256 {actual[:16]}…, recorded "
                f"{recorded[name][:16]}…; refusing to run it",
                path,
            )
    return len(files)


def installed_workflow() -> dict[str, Path] | None:
    """``{path relative to a crate: path}`` of the installed llsmflow's workflow files (those a crate's
    snapshot holds), or None when llsmflow is not installed from a checkout with a workflow."""
    from llsmflow.provenance.crate import WORKFLOW_FILES
    from llsmflow.run.config import SOURCE_TREE

    root = Path(SOURCE_TREE).resolve()
    if not (root / "Snakefile").is_file():
        return None
    files = {}
    for pattern in WORKFLOW_FILES:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                files[f"{SNAPSHOT}/{path.relative_to(root).as_posix()}"] = path
    return files


def differences(snapshot: dict[str, Path], installed: dict[str, Path]) -> list[str]:
    """Snapshot paths (relative to the crate) whose bytes differ from the installed workflow's, or that only
    one of the two has."""
    found = []
    for name in sorted(set(snapshot) | set(installed)):
        a, b = snapshot.get(name), installed.get(name)
        if a is None or b is None or a.read_bytes() != b.read_bytes():
            found.append(name)
    return found


def check_workflow(crate_dir: Path, graph: dict, trust_snapshot: bool = False) -> SnapshotCheck:
    """Verify the snapshot (:func:`verify_snapshot`) and compare it with the installed workflow; raise unless
    it is verified and identical to the installed workflow, or ``trust_snapshot``."""
    from llsmflow.run.config import SOURCE_TREE

    count = verify_snapshot(crate_dir, graph)
    if count is None and not trust_snapshot:
        raise LlsmflowError(
            "the crate records no sha256 for its workflow snapshot (written by an older llsmflow), so its code "
            f"cannot be verified; expected a crate with snapshot checksums, or {TRUST_FLAG} to run it anyway",
            crate_dir / SNAPSHOT,
        )
    snapshot = snapshot_files(crate_dir)
    installed = installed_workflow()
    if installed is None:
        check = SnapshotCheck(len(snapshot), count is not None, None, sorted(snapshot))
        if not trust_snapshot:
            raise LlsmflowError(
                f"the installed llsmflow has no workflow to compare the crate's snapshot with (no Snakefile in "
                f"{SOURCE_TREE}); expected llsmflow installed from its source checkout, or {TRUST_FLAG} to run "
                "the snapshot",
                crate_dir / SNAPSHOT,
            )
        return check
    diff = differences(snapshot, installed)
    if diff and not trust_snapshot:
        from llsmflow import __version__

        shown = ", ".join(diff[:5]) + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise LlsmflowError(
            f"the crate's workflow snapshot differs from the installed llsmflow {__version__} workflow in "
            f"{len(diff)} file(s): {shown}; expected the same workflow, or {TRUST_FLAG} to run the crate's code",
            crate_dir / SNAPSHOT,
        )
    return SnapshotCheck(len(snapshot), count is not None, Path(SOURCE_TREE), diff)


def describe(record: dict, check: SnapshotCheck) -> list[str]:
    """The lines ``reproduce`` prints before running: which workflow, and whose code it is."""
    from llsmflow import __version__
    from llsmflow.run.config import SOURCE_TREE

    wf = record.get("workflow") or {}
    commit = wf.get("commit")
    state = (
        f"git commit {commit}" + (" with uncommitted changes (dirty tree)" if wf.get("dirty") else "")
        if commit
        else "no git commit recorded"
    )
    lines = [
        f"workflow: {wf.get('name', 'llsmflow')} {wf.get('version', '(version not recorded)')}, {state}; "
        + (
            f"snapshot: {check.files} files match their recorded sha256"
            if check.verified
            else f"snapshot: {check.files} files, NOT verified (the crate records no checksums)"
        )
    ]
    if check.identical:
        lines.append(
            f"workflow: identical to the installed llsmflow {__version__} workflow ({SOURCE_TREE}); running it"
        )
    else:
        what = (
            f"differs from the installed llsmflow {__version__} workflow in {len(check.differs)} file(s): "
            + ", ".join(check.differs[:5])
            + (f" and {len(check.differs) - 5} more" if len(check.differs) > 5 else "")
            if check.installed_root is not None
            else "cannot be compared with an installed workflow"
        )
        lines.append(f"warning: running the crate's own workflow snapshot ({TRUST_FLAG}); it {what}")
    return lines


# ---------------------------------------------------------------------------------------------- raw inputs


def resolve_path(path, base: Path) -> Path:
    path = Path(path)
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def recorded_raw_dir(record: dict, config: dict, run_dir: Path) -> Path:
    """The raw directory the recorded run read: ``raw_dir`` of the run record's config (the crate's
    ``config.yaml`` when the record lacks it), resolved against the original run directory."""
    raw = (record.get("config") or {}).get("raw_dir") or config.get("raw_dir")
    if not raw:
        raise LlsmflowError("the crate records no raw_dir; expected a crate written by llsmflow")
    return resolve_path(raw, run_dir)


def relocate(inputs: list[tuple[Path, str]], old: Path, new: Path) -> list[tuple[Path, str]]:
    """The recorded inputs under ``old`` looked up under ``new`` by their path relative to ``old``; inputs
    outside ``old`` stay where they were recorded."""
    moved = []
    bases = dict.fromkeys((old, old.resolve()))  # the crate names files by resolved path
    for path, digest in inputs:
        path = Path(os.path.normpath(path))
        relative = next((path.relative_to(b) for b in bases if path.is_relative_to(b)), None)
        moved.append((path if relative is None else new / relative, digest))
    return moved


def selected_inputs(config: dict) -> list[Path]:
    """The raw files the workflow reads with ``config`` (as its ``RAW_FILES``: stacks, PSFs, metadata)."""
    from llsmflow.ingest import read_acquisition

    acq = read_acquisition(
        config["raw_dir"], config.get("metadata"), config.get("overrides") or {}, check_files=False,
        allow_missing_timepoints=(config.get("ingest") or {}).get("allow_missing_timepoints", False),
    )
    files = [acq.raw_dir / p for p in acq.samples["path"]]
    files += [acq.psf_path(c) for c in range(len(acq.channels))]
    files.append(acq.metadata_path)
    return [Path(f).resolve() for f in files]


def check_selection(config: dict, verified: list[Path]) -> None:
    """Refuse when the files the workflow would read with ``config`` are not exactly the verified ones."""
    selected = set(selected_inputs(config))
    verified_set = {Path(p).resolve() for p in verified}
    for path in sorted(selected - verified_set):
        raise LlsmflowError(
            "the re-run would read this raw file, which the recorded run did not; expected exactly the "
            "verified raw inputs",
            path,
        )
    for path in sorted(verified_set - selected):
        raise LlsmflowError(
            "raw input recorded in the crate would not be read by the re-run; expected exactly the verified "
            "raw inputs",
            path,
        )
