"""Where a run's files go, and the pointer that leads ``llsmflow status`` from a results directory to its run.

``llsmflow run`` leaves a small pointer, ``.snakemake/llsmflow-runs/<dataset>.json`` in the directory it ran
in (config file, workflow directory, results and work directories), so that
``llsmflow status results/<dataset>`` can find the configuration of a results directory without being told.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from llsmflow.errors import LlsmflowError

# inside Snakemake's own metadata folder: a run writes nothing beside results/, work/ and .snakemake/
POINTER_DIR = Path(".snakemake") / "llsmflow-runs"


def run_paths(config: dict) -> tuple[Path, Path]:
    """``(results, work)`` directories of a dataset, as the workflow lays them out (relative to the run dir).

    ``config`` has its defaults filled in (:func:`llsmflow.run.config.check_config`)."""
    dataset = config["dataset"]
    return Path(config["results_dir"]) / dataset, Path(config["work_dir"]) / dataset


#: Longest addition to the dataset's name in a file name the run writes: ``.<dataset>.ome.zarr.<8>.partial``
#: (27) and the run lock's private name ``.llsmflow-<dataset>.lock.<host>.<pid>`` (22 + host + pid).
NAME_MARGIN = 32


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output_paths(config: dict, run_dir: str | Path = ".") -> None:
    """Before any job runs: the results and work directories of ``config`` (its defaults filled in) can be
    written, the dataset's name fits in a file name there, and neither lies inside ``raw_dir`` (raw data are
    never written). Each problem is one :class:`LlsmflowError` naming the path and the expectation."""
    results, work = (Path(run_dir, p) for p in run_paths(config))
    raw = Path(run_dir, config["raw_dir"]).resolve()
    dataset = config["dataset"]
    for what, path in (("results", results), ("work", work)):
        resolved = path.resolve()
        if _inside(resolved, raw):
            raise LlsmflowError(
                f"the {what} directory {resolved} lies inside raw_dir {raw}; expected {what}_dir outside the "
                "raw data (raw data are never written)",
                path,
            )
        for base in dict.fromkeys((_existing_ancestor(path.parent), _existing_ancestor(path))):
            _check_writable_dir(base, path, what, dataset)


def _check_writable_dir(base: Path, path: Path, what: str, dataset: str) -> None:
    if not base.is_dir():
        raise LlsmflowError(f"{base} is not a directory; expected a directory for the {what}", path)
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = len(dataset.encode("utf-8")) + NAME_MARGIN + len(socket.gethostname()) + 8
    if longest > name_max:
        raise LlsmflowError(
            f"dataset name of {len(dataset)} characters makes file names of {longest} bytes under {base}; "
            f"expected a dataset name of at most {name_max - (longest - len(dataset.encode()))} "
            "characters (that file system's names are limited to "
            f"{name_max} bytes)",
            path,
        )
    if not os.access(base, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only_fs(base) else "is not writable by this user"
        raise LlsmflowError(
            f"{base} {reason}; expected a writable {what} directory ({what}_dir in the config)", path
        )


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_run_pointer(run_dir: Path, configfile: Path, workflow_root: Path, config: dict) -> Path:
    """Record where a dataset's run lives (``.snakemake/llsmflow-runs/<dataset>.json`` in ``run_dir``)."""
    results, work = run_paths(config)
    pointer = {
        "dataset": config["dataset"],
        "configfile": str(Path(configfile).resolve()),
        "workflow_dir": str(Path(workflow_root).resolve()),
        "run_dir": str(Path(run_dir).resolve()),
        "results": str((Path(run_dir) / results).resolve()),
        "work": str((Path(run_dir) / work).resolve()),
    }
    path = Path(run_dir) / POINTER_DIR / f"{config['dataset']}.json"
    if path.is_file():
        try:
            if json.loads(path.read_text(encoding="utf-8")) == pointer:
                return path
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    from llsmflow.io import write_json

    return write_json(path, pointer)


def find_run_pointer(results_dir: Path) -> dict | None:
    """The pointer ``llsmflow run`` left for ``results_dir``: looked for in the current directory and above it."""
    results_dir = Path(results_dir).resolve()
    dataset = results_dir.name
    for base in [Path.cwd().resolve(), *results_dir.parents]:
        path = base / POINTER_DIR / f"{dataset}.json"
        if not path.is_file():
            continue
        try:
            pointer = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if Path(pointer.get("results", "")) == results_dir:
            return pointer
    return None
