"""The workflow config: where the workflow lives, reading a config file, checking it, and its defaults.

``config/schema.yaml`` states every default of the config once. :func:`fill_defaults` is the one place that
applies them outside Snakemake (whose ``validate`` applies the same schema inside the workflow): ``llsmflow
run``, ``status``, ``estimate`` and ``reproduce`` all read a config through :func:`read_config` or
:func:`check_config`, so none of them re-types a default such as ``results_dir: results``.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from llsmflow.errors import LlsmflowError

#: The source checkout this module lies in (``src/llsmflow/run/config.py`` → the checkout), which holds the
#: workflow and its ``config/schema.yaml`` when llsmflow runs from a checkout or an editable install.
SOURCE_TREE = Path(__file__).resolve().parents[3]
SCHEMA = Path("config") / "schema.yaml"


def find_workflow_root(explicit: str | None = None) -> Path:
    """The directory holding the workflow's ``Snakefile``: explicit, the current directory, or the source tree."""
    candidates = [Path(explicit)] if explicit else [Path.cwd(), SOURCE_TREE]
    for candidate in candidates:
        if (candidate / "Snakefile").is_file():
            return candidate.resolve()
    raise LlsmflowError(
        "no Snakefile found; expected --workflow-dir pointing at an llsmflow checkout", candidates[0]
    )


def load_schema(workflow_root: str | Path | None = None) -> dict | None:
    """The config schema of a workflow checkout (default: as :func:`find_workflow_root` finds it); None when
    there is none."""
    import yaml

    if workflow_root is None:
        try:
            workflow_root = find_workflow_root()
        except LlsmflowError:
            return None
    path = Path(workflow_root) / SCHEMA
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def fill_defaults(config: dict, schema: Mapping | None) -> dict:
    """Fill in, in place, every default of ``schema`` that ``config`` leaves out, nested sections included
    (as Snakemake's ``validate(config, schema)`` does); returns ``config``."""
    for key, spec in ((schema or {}).get("properties") or {}).items():
        if key not in config and "default" in spec:
            config[key] = copy.deepcopy(spec["default"])
        if isinstance(config.get(key), dict) and "properties" in spec:
            fill_defaults(config[key], spec)
    return config


def _read_yaml_mapping(configfile: Path) -> dict:
    import yaml

    if not configfile.is_file():
        raise LlsmflowError("config file not found", configfile)
    config = yaml.safe_load(configfile.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise LlsmflowError("config file is not a YAML mapping; expected keys such as raw_dir", configfile)
    return config


def read_config(configfile: str | Path | None, workflow_root: str | Path | None = None) -> dict:
    """A config file (or none: ``{}``) with the schema's defaults filled in, not validated (``estimate``
    answers for a config that is still being written)."""
    config = {} if configfile is None else _read_yaml_mapping(Path(configfile))
    schema = load_schema(workflow_root)
    if schema is None:
        raise LlsmflowError(
            "no workflow config schema (config/schema.yaml) found, so no defaults for the config; expected "
            "to run in an llsmflow checkout",
            Path(workflow_root or Path.cwd()) / SCHEMA,
        )
    return fill_defaults(config, schema)


def schema_expectation(error) -> str:
    """What the schema wanted, in words, for a jsonschema validation error."""
    value = error.validator_value
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if error.validator in bounds:
        return f"a value {bounds[error.validator]} {value}"
    if error.validator == "enum":
        return f"one of {', '.join(map(repr, value))}"
    if error.validator == "type":
        return f"type {value if isinstance(value, str) else ' or '.join(value)}"
    if error.validator == "additionalProperties":
        return "only the keys documented in config/README.md"
    if error.validator == "required":
        return f"the keys {', '.join(value)}"
    if error.validator == "pattern":
        return f"text matching {value}"
    return "a value allowed by config/schema.yaml (see config/README.md)"


def check_config(configfile: Path, workflow_root: Path, check_files: bool = True) -> dict:
    """Validate a config file against the schema and read its acquisition, failing with one clear line.

    Returns the config with the schema's defaults filled in. ``check_files=False`` skips reading every
    stack's header and PSF (``llsmflow status`` must answer even when the raw data are no longer mounted)."""
    import jsonschema
    import yaml

    if not configfile.is_file():
        raise LlsmflowError("config file not found", configfile)
    config = yaml.safe_load(configfile.read_text(encoding="utf-8")) or {}
    schema = load_schema(workflow_root)
    if schema is None:
        raise LlsmflowError(
            "workflow has no config schema; expected an llsmflow checkout", workflow_root / SCHEMA
        )
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise LlsmflowError(
            f"config key {key}: {error.message}; expected {schema_expectation(error)}", configfile
        )
    fill_defaults(config, schema)
    from llsmflow.ingest import read_acquisition

    read_acquisition(config["raw_dir"], config.get("metadata"), config["overrides"], check_files=check_files)
    return config


def snakemake_base_command(workflow_root: Path, configfile: Path) -> list[str]:
    """``snakemake --snakefile WORKFLOW/Snakefile --configfile CONFIG``: the start of every Snakemake call."""
    return [
        snakemake_executable(),
        "--snakefile",
        str(workflow_root / "Snakefile"),
        "--configfile",
        str(configfile),
    ]


def snakemake_executable() -> str:
    """The ``snakemake`` command of this environment (beside this Python first, then on PATH)."""
    snakemake = shutil.which(
        "snakemake", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    )
    if snakemake is None:
        raise LlsmflowError("the snakemake command was not found; expected `pip install llsmflow[workflow]`")
    return snakemake
