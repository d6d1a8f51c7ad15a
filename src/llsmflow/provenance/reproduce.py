"""``llsmflow reproduce RUN_DIR``: re-run a recorded workflow run from its RO-Crate alone and compare outputs.

The crate (:mod:`llsmflow.provenance.crate`) holds everything needed: the resolved configuration (``config.yaml``), the
workflow snapshot that ran (``workflow/Snakefile``), the raw inputs by absolute path with their sha256, and the
sha256 of every output file (``run-record.json``). Reproducing:

1. verifies the workflow snapshot: every file against the sha256 the crate records for it, and the whole
   against the installed llsmflow's workflow; a changed, unlisted or missing file is refused, and a snapshot
   that differs from the installed workflow runs only with ``trust_snapshot`` (``--trust-snapshot``), see
   :mod:`llsmflow.provenance.snapshot`;
2. checks every raw input against its recorded sha256 (at the recorded path, or relative to ``raw_dir``
   given for moved data) and refuses (exit 2, one line naming the file) when one is missing or changed, or
   when the workflow would read another file than those verified;
3. says what it will run (workflow version, git commit, installed workflow or the crate's snapshot) and warns
   when Python, package versions or the container image differ from the recorded ones;
4. runs the snapshot with Snakemake (a subprocess) into a fresh directory, with the recorded configuration
   (``results_dir``/``work_dir`` pointed into that directory, ``raw_dir`` the verified directory);
5. compares every recorded output with its re-run counterpart: *identical* (same bytes), *within tolerance*
   (same values up to :data:`RTOL`, measure printed) or *different* (measure printed); exit 1 if any differs.

Comparison measures (hand-written because no library compares these formats with one stated measure), after a
byte comparison:

- numeric arrays (each Zarr array of the OME-Zarr archive, TIFF): ``max|a - b| / max|a|`` <= :data:`RTOL`
  (relative to the largest magnitude of the original, so values near zero do not inflate it);
- tables (Parquet, CSV): same columns and rows; numeric columns ``max|a - b| / max|a|`` <= :data:`TABLE_RTOL`
  (:data:`COLUMN_RTOL` for trackpy's noise-sensitive ``signal`` and ``ep``), the worst column (largest ratio of
  measure to tolerance) named; other columns equal;
- PNG previews and plots (8 bit): fewer than :data:`PNG_MAX_FRACTION` of the pixels differing at all, and
  fewer than :data:`PNG_MAX_OUTLIER_FRACTION` off by more than :data:`PNG_MAX_LEVELS` levels (an anti-aliased
  edge of a tile outline or a label that moved by a round-off flips a handful of pixels completely);
- JSON (Zarr metadata): equal structure and strings, numbers within ``RTOL·|a| + JSON_ATOL``; ``sha256``
  and ``bytes`` values are skipped (they describe files compared in their own right), and so are ``software``
  blocks (the package versions of the environment that ran: they are not results, and
  :func:`version_warnings` reports every difference from the recorded versions before the comparison).

The archive's own ``checksums.sha256`` is not compared (derived from the files that are), nor the QC report
(``qc/report.html``: run times and hosts; the figures it embeds are compared as PNG files). Files outside the
recorded outputs (``provenance/`` with its timestamps and host names, logs, step records) are not compared: they
differ by design.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from llsmflow.errors import LlsmflowError
from llsmflow.provenance.crate import METADATA
from llsmflow.provenance.record import container_info, package_versions
from llsmflow.run.config import fill_defaults, load_schema, load_yaml_file, validate_config

DEFAULT_CORES = 2

RTOL = 1e-5  # arrays (Zarr, TIFF) and JSON numbers: max|a - b| / max|a|
TABLE_RTOL = 1e-4  # table columns: per-particle measures amplify image differences (~1e-5 seen, e.g. mass)
# trackpy's ``signal`` (peak of the band-passed image) and ``ep`` (localisation error from a noise estimate) amplify
# the ~4e-7 run-to-run image differences some 300-fold (up to 1.2e-4 seen): tolerated to 1e-2.
COLUMN_RTOL = {"signal": 1e-2, "ep": 1e-2}
# JSON keys not compared: file checksums and sizes (the files are compared in their own right) and the
# environment's package versions (not results; version_warnings reports them)
JSON_NOT_COMPARED = frozenset({"sha256", "bytes", "software"})
JSON_ATOL = 1e-12  # JSON numbers: |a - b| <= RTOL * |a| + JSON_ATOL (residuals of ~1e-17 are rounding noise)
PNG_MAX_FRACTION = 0.01  # 8-bit previews and plots: fewer than 1 % of pixels differing at all ...
PNG_MAX_LEVELS = 2  # ... and fewer than 0.01 % of them off by more than 2 of 255 levels
PNG_MAX_OUTLIER_FRACTION = 1e-4  # (measured: 0.0013 % of the mosaic's pixels, edges of its outlines)
NOT_COMPARED = "checksums.sha256"
# the QC report shows when, where and how long each step ran: it differs by design (its figures are compared)
NOT_COMPARED_REPORT = Path("qc") / "report.html"


@dataclass
class Comparison:
    """Outcome for one output: ``status`` is ``identical``, ``within tolerance``, ``different`` or ``missing``."""

    path: str
    status: str
    detail: str = ""


# ---------------------------------------------------------------------------------------------- the crate


def locate_crate(run_dir: str | Path) -> Path:
    """The crate root: ``run_dir`` itself if it holds ``ro-crate-metadata.json``, else the one crate under
    ``run_dir/*/*/provenance`` (a run directory with ``results/<dataset>/provenance``)."""
    run_dir = Path(run_dir)
    if (run_dir / METADATA).is_file():
        return run_dir
    found = sorted(run_dir.glob(f"*/*/provenance/{METADATA}"))
    if len(found) == 1:
        return found[0].parent
    if not found:
        raise LlsmflowError(
            f"no {METADATA} found; expected a run crate (results/<dataset>/provenance)", run_dir
        )
    raise LlsmflowError(f"{len(found)} run crates found; expected one, give its directory", run_dir)


def load_crate(crate_dir: Path) -> tuple[dict, dict, dict]:
    """``(graph by @id, run record, config)`` of a crate; the config is read as boundedly as a user's
    (:func:`llsmflow.run.config.load_yaml_file`: no aliases, no tags, size capped)."""
    path = crate_dir / METADATA
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
        path = crate_dir / "run-record.json"
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise LlsmflowError(
            "the crate lacks a file it needs; expected a crate written by llsmflow", error.filename
        ) from None
    except ValueError as error:
        raise LlsmflowError(f"is not valid JSON ({error}); expected a crate written by llsmflow", path) from None
    config = load_yaml_file(crate_dir / "config.yaml", "crate config")
    if not isinstance(config, dict) or not isinstance(metadata, dict) or "@graph" not in metadata:
        raise LlsmflowError("is not a run crate's metadata or config; expected a crate written by llsmflow", path)
    graph = {entity["@id"]: entity for entity in metadata["@graph"]}
    return graph, record, config


def _ids(value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v["@id"] for v in values if isinstance(v, dict) and "@id" in v]


def recorded_inputs(
    graph: dict, raw_dir: Path | None = None, run_dir: Path | None = None
) -> list[tuple[Path, str]]:
    """``[(absolute path, sha256)]`` of the files the run read (the ``object`` of the run's CreateAction):
    ``#raw/…`` ids under ``raw_dir``, other ``#…`` ids under the run directory, ``file://`` URIs (crates written
    before local ids) as they are."""
    run = graph["#run"]
    inputs = []
    for entity_id in _ids(run.get("object")):
        entity = graph.get(entity_id, {})
        if entity.get("@type") != "File":
            continue
        if entity_id.startswith("file://"):
            inputs.append((Path(unquote(urlparse(entity_id).path)), entity["sha256"]))
        elif entity_id.startswith("#raw/") and raw_dir is not None:
            inputs.append((Path(raw_dir) / unquote(entity_id.removeprefix("#raw/")), entity["sha256"]))
        elif entity_id.startswith("#") and "/" in entity_id and not entity_id.startswith("#external/") and run_dir:
            inputs.append((Path(run_dir) / unquote(entity_id[1:]), entity["sha256"]))
    return inputs


def check_inputs(inputs: list[tuple[Path, str]], moved: bool = False) -> None:
    """Refuse (raise) on the first input that is missing or whose sha256 differs from the recorded one."""
    from llsmflow.io import sha256_file

    for path, sha256 in inputs:
        if not path.is_file():
            raise LlsmflowError(
                "raw input recorded in the crate is missing; expected the file the run read"
                + ("" if moved else " (moved? give its new directory with --raw-dir)"),
                path,
            )
        actual = sha256_file(path)
        if actual != sha256:
            raise LlsmflowError(
                f"raw input changed since the run: sha256 {actual[:16]}…, recorded {sha256[:16]}…; refusing to "
                "reproduce from different data",
                path,
            )


def version_warnings(record: dict) -> list[str]:
    """Differences between the recorded software (Python, packages, container) and this environment."""
    warnings = []
    recorded = record.get("software", {})
    if recorded.get("python") and recorded["python"] != platform.python_version():
        warnings.append(f"Python {platform.python_version()} here, {recorded['python']} recorded")
    now = package_versions()
    for name, version in sorted((recorded.get("packages") or {}).items()):
        if now.get(name) != version:
            warnings.append(f"{name} {now.get(name, 'absent')} here, {version} recorded")
    then_container, now_container = record.get("container") or {}, container_info()
    for key in ("reference", "digest"):
        if then_container.get(key) != now_container.get(key):
            warnings.append(
                f"container {key} {now_container.get(key, 'none')} here, {then_container.get(key, 'none')} recorded"
            )
    return warnings


def rerun_config(config: dict, run_dir: Path) -> dict:
    """The recorded config with paths resolved against the original run and outputs into the fresh directory."""
    config = json.loads(json.dumps(config))
    for key in ("raw_dir", "metadata"):
        if config.get(key) and not Path(config[key]).is_absolute():
            config[key] = str((run_dir / config[key]).resolve())
    config["results_dir"] = "results"
    config["work_dir"] = "work"
    return config


def run_workflow(crate_dir: Path, config: dict, out_dir: Path, cores: int, extra_args=()) -> int:
    """Run the crate's workflow snapshot with ``config`` in ``out_dir``; return Snakemake's exit status."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    configfile = out_dir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(crate_dir / "workflow" / "Snakefile"),
        "--configfile",
        str(configfile),
        "--directory",
        str(out_dir),
        "--cores",
        str(cores),
        *extra_args,
    ]
    log = out_dir / "reproduce-snakemake.log"
    with open(log, "w", encoding="utf-8") as handle:
        return subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=out_dir)


# ---------------------------------------------------------------------------------------------- comparison


def relative_difference(a, b) -> float:
    """``max|a - b| / max|a|`` of two numeric arrays (0 when both are all zero; inf if shapes differ)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    diff = np.nanmax(np.abs(a - b)) if np.isfinite(a).any() else 0.0
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    scale = np.nanmax(np.abs(a)) if np.isfinite(a).any() else 0.0
    if diff == 0:
        return 0.0
    return float(diff / scale) if scale > 0 else float("inf")


def _verdict(path: str, measure: float, what: str, rtol: float = RTOL) -> Comparison:
    detail = f"{what} max|a-b|/max|a| = {measure:.3g}"
    if measure <= rtol:
        return Comparison(path, "within tolerance", f"{detail} <= {rtol:g}")
    return Comparison(path, "different", f"{detail} > {rtol:g}")


def compare_png(a, b, path: str) -> Comparison:
    """8-bit previews: the largest pixel difference in levels of 255 and the fraction of differing pixels."""
    import numpy as np

    if a.shape != b.shape:
        return Comparison(path, "different", f"shape {b.shape} vs {a.shape}")
    levels = np.abs(a.astype(np.float64) - b.astype(np.float64)) * (255 if a.dtype.kind == "f" else 1)
    worst, fraction = float(levels.max()), float((levels > 0.5).mean())
    outliers = float((levels > PNG_MAX_LEVELS + 0.5).mean())
    detail = (
        f"pixels: max {worst:.0f} levels of 255, {100 * fraction:.3g} % differ, "
        f"{100 * outliers:.3g} % by more than {PNG_MAX_LEVELS}"
    )
    if fraction < PNG_MAX_FRACTION and outliers < PNG_MAX_OUTLIER_FRACTION:
        return Comparison(
            path,
            "within tolerance",
            f"{detail} (tolerated: < {100 * PNG_MAX_FRACTION:g} % differ, "
            f"< {100 * PNG_MAX_OUTLIER_FRACTION:g} % by more than {PNG_MAX_LEVELS})",
        )
    return Comparison(path, "different", detail)


def json_differences(a, b, where: str = "", moved: dict[str, str] | None = None) -> list[str]:
    """Differences between two parsed JSON documents: numbers within tolerance, the keys of
    :data:`JSON_NOT_COMPARED` skipped; ``[]`` if they agree. ``moved`` maps a directory of the re-run to the
    recorded one (raw data given with ``--raw-dir``): a string of ``b`` naming it counts as naming the other."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) - JSON_NOT_COMPARED != set(b) - JSON_NOT_COMPARED:
            return [f"{where or '/'}: keys {sorted((set(a) ^ set(b)) - JSON_NOT_COMPARED)}"]
        found = []
        for key in (k for k in a if k not in JSON_NOT_COMPARED):
            found += json_differences(a[key], b[key], f"{where}/{key}", moved)
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(b)} items vs {len(a)}"]
        found = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found += json_differences(x, y, f"{where}[{i}]", moved)
        return found
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return [] if abs(a - b) <= RTOL * abs(a) + JSON_ATOL else [f"{where}: {b!r} vs {a!r}"]
    if isinstance(a, str) and isinstance(b, str):
        for new, old in (moved or {}).items():
            if b == new or b.startswith(new.rstrip("/") + "/"):
                b = old + b[len(new) :]
    return [] if a == b else [f"{where}: {b!r} vs {a!r}"]


def compare_tables(a, b, path: str) -> Comparison:
    """Tables (pandas DataFrames): same columns and rows, numeric columns within tolerance, others equal."""
    import numpy as np

    if list(a.columns) != list(b.columns):
        added = [c for c in b.columns if c not in a.columns]
        removed = [c for c in a.columns if c not in b.columns]
        detail = (
            f"columns added {added}, removed {removed}" if added or removed else "columns in another order"
        )
        common = [c for c in a.columns if c in b.columns]
        if common:
            detail += "; common columns: " + compare_tables(a[common], b[common], path).detail
        return Comparison(path, "different", detail)
    if len(a) != len(b):
        return Comparison(path, "different", f"{len(b)} rows vs {len(a)} recorded")
    if a.columns.empty:
        return Comparison(path, "identical" if b.columns.empty else "different", "no columns")
    worst, worst_column = -1.0, None  # worst = largest measure / tolerance
    for column in a.columns:
        if np.issubdtype(a[column].dtype, np.number) and np.issubdtype(b[column].dtype, np.number):
            measure = relative_difference(a[column].to_numpy(), b[column].to_numpy())
        else:
            measure = 0.0 if a[column].astype(str).equals(b[column].astype(str)) else float("inf")
        rtol = COLUMN_RTOL.get(column, TABLE_RTOL)
        if measure / rtol > worst:
            worst, worst_column, worst_measure, worst_rtol = measure / rtol, column, measure, rtol
    return _verdict(path, worst_measure, f"worst column {worst_column!r}:", worst_rtol)


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _read_image(path: Path):
    if path.suffix == ".png":
        from matplotlib.image import imread

        return imread(path)
    import tifffile

    return tifffile.imread(path)


def compare_file(original: Path, rerun: Path, path: str, moved: dict[str, str] | None = None) -> Comparison:
    """Compare one file: bytes first, then by content according to its type."""
    from llsmflow.io import sha256_file

    if not rerun.is_file():
        return Comparison(path, "missing", "not produced by the re-run")
    if sha256_file(original) == sha256_file(rerun):
        return Comparison(path, "identical")
    suffix = original.suffix.lower()
    try:
        if suffix in (".csv", ".parquet"):
            return compare_tables(_read_table(original), _read_table(rerun), path)
        if suffix == ".png":
            return compare_png(_read_image(original), _read_image(rerun), path)
        if suffix in (".tif", ".tiff"):
            return _verdict(path, relative_difference(_read_image(original), _read_image(rerun)), "pixels")
        if suffix == ".json":
            found = json_differences(
                json.loads(original.read_text()), json.loads(rerun.read_text()), moved=moved
            )
            if found:
                more = f" and {len(found) - 5} more" if len(found) > 5 else ""
                return Comparison(path, "different", "JSON " + "; ".join(found[:5]) + more)
            return Comparison(
                path,
                "within tolerance",
                f"JSON numbers within {RTOL:g}|a| + {JSON_ATOL:g}; {', '.join(sorted(JSON_NOT_COMPARED))} not compared",
            )
    except (ValueError, OSError) as error:
        return Comparison(path, "different", f"unreadable: {error}")
    return Comparison(path, "different", "bytes differ")


def compare_zarr(
    original: Path, rerun: Path, path: str, files: list[str], moved: dict[str, str] | None = None
) -> list[Comparison]:
    """Compare a Zarr store: per array (values) and per non-chunk file (tables, metadata)."""
    import warnings

    import zarr

    from llsmflow.io import sha256_file

    if not rerun.is_dir():
        return [Comparison(path, "missing", "not produced by the re-run")]
    changed = [
        f for f in files if not (rerun / f).is_file() or sha256_file(original / f) != sha256_file(rerun / f)
    ]
    changed = [f for f in changed if Path(f).name != NOT_COMPARED]
    if not changed:
        return [Comparison(path, "identical", f"{len(files)} files")]
    results = []
    a, b = zarr.open_group(str(original), mode="r"), zarr.open_group(str(rerun), mode="r")
    with warnings.catch_warnings():
        # zarr 3 warns of every non-Zarr entry it meets while listing (tables/, checksums.sha256): expected here
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        arrays = {name for name, _ in a.arrays()} | {f"{g}/{n}" for g, sub in a.groups() for n, _ in sub.arrays()}
    for name in sorted(arrays):
        prefix = f"{name}/"
        if not any(f.startswith(prefix) for f in changed):
            continue
        try:
            measure = relative_difference(a[name][...], b[name][...])
        except (KeyError, ValueError) as error:
            results.append(Comparison(f"{path}/{name}", "different", f"unreadable: {error}"))
            continue
        results.append(_verdict(f"{path}/{name}", measure, "array"))
    covered = tuple(f"{n}/" for n in arrays)
    for f in changed:
        if f.startswith(covered) and not f.endswith("zarr.json"):
            continue
        results.append(compare_file(original / f, rerun / f, f"{path}/{f}", moved))
    if all(r.status in ("identical", "within tolerance") for r in results):
        worst = [r.detail for r in results if r.status == "within tolerance"]
        return [Comparison(path, "within tolerance" if worst else "identical", "; ".join(worst))]
    return [r for r in results if r.status not in ("identical",)]


def compare_outputs(
    record: dict, original_dir: Path, rerun_dir: Path, moved: dict[str, str] | None = None
) -> list[Comparison]:
    """Compare every recorded output file (grouped per Zarr store) between the original run and the re-run
    (``moved``: see :func:`json_differences`)."""
    stores: dict[str, list[str]] = {}
    singles = []
    for entry in record["outputs"]:
        path = entry["path"]
        parts = Path(path).parts
        zarr_index = next((i for i, part in enumerate(parts) if part.endswith(".zarr")), None)
        if zarr_index is None:
            if Path(path).parts[-2:] != NOT_COMPARED_REPORT.parts:
                singles.append(path)
        else:
            store = str(Path(*parts[: zarr_index + 1]))
            stores.setdefault(store, []).append(str(Path(*parts[zarr_index + 1 :])))
    results = []
    for store, files in sorted(stores.items()):
        results += compare_zarr(original_dir / store, rerun_dir / store, store, files, moved)
    for path in sorted(singles):
        results.append(compare_file(original_dir / path, rerun_dir / path, path, moved))
    return results


# ---------------------------------------------------------------------------------------------- command


def reproduce(
    run_dir,
    out_dir,
    cores: int = DEFAULT_CORES,
    config_overrides: dict | None = None,
    echo=print,
    raw_dir=None,
    trust_snapshot: bool = False,
) -> int:
    """Reproduce the run whose crate is at (or under) ``run_dir`` into ``out_dir``; return the exit code.

    Nothing runs before the workflow snapshot and the raw inputs are verified (:mod:`llsmflow.provenance.snapshot`):
    a snapshot that differs from the installed llsmflow's workflow runs only with ``trust_snapshot``; the re-run
    reads the raw files it verified, at the recorded paths or, with ``raw_dir``, at the same paths relative to
    that directory.
    """
    from llsmflow.provenance import snapshot

    crate_dir = locate_crate(run_dir).resolve()
    graph, record, config = load_crate(crate_dir)
    check = snapshot.check_workflow(crate_dir, graph, trust_snapshot=trust_snapshot)
    original_dir = Path(record.get("run_dir") or crate_dir.parents[2])
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LlsmflowError("output directory is not empty; expected a fresh directory", out_dir)
    # a config recorded by an older workflow may leave out keys its snapshot's schema fills in
    schema = load_schema(crate_dir / "workflow")
    config = fill_defaults(config, schema)
    if schema is not None:  # the recorded config must satisfy its own workflow's schema (types included)
        validate_config(config, schema, crate_dir / "config.yaml")
    recorded_raw = snapshot.recorded_raw_dir(record, config, original_dir)
    inputs = recorded_inputs(graph, recorded_raw, original_dir)
    new_raw = recorded_raw
    if raw_dir is not None:
        new_raw = Path(raw_dir).resolve()
        if not new_raw.is_dir():
            raise LlsmflowError("--raw-dir is not a directory; expected the moved raw data", new_raw)
        inputs = snapshot.relocate(inputs, recorded_raw, new_raw)
    check_inputs(inputs, moved=raw_dir is not None)
    new_config = rerun_config(config, original_dir)
    configured = Path(new_config["raw_dir"])
    if configured.resolve() != recorded_raw.resolve():
        echo(
            f"note: config.yaml names raw_dir {configured}, not the {recorded_raw} the run read; re-running on "
            f"the verified raw data in {new_raw} (--raw-dir gives their new place when they moved)"
        )
    new_config["raw_dir"] = str(new_raw)
    metadata = (record.get("config") or {}).get("metadata") or config.get("metadata")
    if metadata:
        recorded_metadata = snapshot.resolve_path(metadata, original_dir)
        new_config["metadata"] = str(
            snapshot.relocate([(recorded_metadata, "")], recorded_raw, new_raw)[0][0]
        )
    else:
        new_config["metadata"] = None
    snapshot.check_selection(new_config, [path for path, _ in inputs])
    for line in snapshot.describe(record, check):
        echo(line)
    echo(
        f"inputs: {len(inputs)} files in {new_raw} match their recorded sha256; the re-run reads exactly these"
    )
    for warning in version_warnings(record):
        echo(f"warning: software differs: {warning}")
    new_config.update(config_overrides or {})
    wisdom = crate_dir / "fftw-wisdom"
    if wisdom.is_file():  # the run's FFT plans: the same FFT algorithms, hence the same round-off
        cache = out_dir / new_config["work_dir"] / str(new_config["dataset"]) / ".cache"
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wisdom, cache / "fftw-wisdom")
    echo(f"re-running the recorded workflow into {out_dir} ...")
    status = run_workflow(crate_dir, new_config, out_dir, cores)
    if status != 0:
        raise LlsmflowError(
            f"the re-run failed (Snakemake exit {status}); see reproduce-snakemake.log", out_dir
        )
    moved = {str(new_raw): str(recorded_raw)} if new_raw != recorded_raw else None
    results = compare_outputs(record, original_dir, out_dir, moved)
    width = max(len(r.status) for r in results)
    for r in results:
        echo(f"{r.status.upper():<{width}}  {r.path}" + (f"  ({r.detail})" if r.detail else ""))
    counts = {
        s: sum(r.status == s for r in results)
        for s in ("identical", "within tolerance", "different", "missing")
    }
    echo(
        f"{counts['identical']} identical, {counts['within tolerance']} within tolerance, "
        f"{counts['different']} different, {counts['missing']} missing; not compared: provenance/ "
        "(timestamps, hosts), logs and step records, the archive's checksums.sha256 (derived), qc/report.html "
        "(run times and hosts; its figures are compared), software versions in metadata (warned above)"
    )
    return 1 if counts["different"] or counts["missing"] else 0
