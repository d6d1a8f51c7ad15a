"""Where a run's files go, and the pointer that leads ``llsmflow status`` from a results directory to its run.

``llsmflow run`` leaves a small pointer, ``.snakemake/llsmflow-runs/<dataset>.json`` in the directory it ran
in (config file, workflow directory, results and work directories), so that
``llsmflow status results/<dataset>`` can find the configuration of a results directory without being told.
"""

from __future__ import annotations

import json
from pathlib import Path

# inside Snakemake's own metadata folder: a run writes nothing beside results/, work/ and .snakemake/
POINTER_DIR = Path(".snakemake") / "llsmflow-runs"


def run_paths(config: dict) -> tuple[Path, Path]:
    """``(results, work)`` directories of a dataset, as the workflow lays them out (relative to the run dir).

    ``config`` has its defaults filled in (:func:`llsmflow.run.config.check_config`)."""
    dataset = config["dataset"]
    return Path(config["results_dir"]) / dataset, Path(config["work_dir"]) / dataset


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
