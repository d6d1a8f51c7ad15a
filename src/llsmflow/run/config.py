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
CHECKOUT = Path(__file__).resolve().parents[3]
#: The copy of the workflow a wheel carries (``llsmflow/_workflow/``, packed by the checkout's ``setup.py``).
PACKAGED_WORKFLOW = Path(__file__).resolve().parents[1] / "_workflow"
#: Where the installed llsmflow's workflow lies: the checkout when there is one, else the wheel's copy (the
#: same layout: ``Snakefile``, ``workflow/``, ``config/``, ``profiles/``, ``envs/``).
SOURCE_TREE = (
    PACKAGED_WORKFLOW
    if not (CHECKOUT / "Snakefile").is_file() and (PACKAGED_WORKFLOW / "Snakefile").is_file()
    else CHECKOUT
)
SCHEMA = Path("config") / "schema.yaml"


def find_workflow_root(explicit: str | None = None) -> Path:
    """The directory holding the workflow's ``Snakefile``: explicit, the current directory, or the installed
    llsmflow's workflow (:data:`SOURCE_TREE`: its checkout, or the copy inside the wheel)."""
    candidates = [Path(explicit)] if explicit else [Path.cwd(), SOURCE_TREE]
    for candidate in candidates:
        if (candidate / "Snakefile").is_file():
            return candidate.resolve()
    raise LlsmflowError(
        "no Snakefile found; expected --workflow-dir pointing at an llsmflow checkout (or llsmflow installed "
        "from its wheel, which carries the workflow)",
        candidates[0],
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


#: Largest config file read (bytes): a workflow config is a few kB; a larger file is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20


def load_yaml_file(path: str | Path, what: str = "config file", max_bytes: int = MAX_CONFIG_BYTES):
    """Parse a small YAML file safely and boundedly: at most ``max_bytes``, no aliases (``*name``: a 589-byte
    "billion laughs" file expands to gigabytes), no ``!!python/...`` tags (safe loader). Any problem is one
    :class:`LlsmflowError` naming the file and the line."""
    import yaml

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise LlsmflowError(f"{what} is {size} bytes; expected at most {max_bytes} bytes of YAML", path)
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LlsmflowError(f"{what} not found", path) from None
    except UnicodeDecodeError as error:
        raise LlsmflowError(f"{what} is not UTF-8 text ({error.reason}); expected YAML", path) from None
    except IsADirectoryError:
        raise LlsmflowError(f"{what} is a directory; expected a YAML file", path) from None
    except OSError as error:
        raise LlsmflowError(
            f"{what} cannot be read ({error.strerror}); expected a readable file", path
        ) from None

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise LlsmflowError(
                    f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} is not allowed; expected "
                    "plain values (write each value out)",
                    path,
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise LlsmflowError(
            f"{where}invalid YAML ({problem}); expected plain YAML (no !!python tags)", path
        ) from None


def _read_yaml_mapping(configfile: Path) -> dict:
    config = load_yaml_file(configfile) or {}
    if not isinstance(config, dict):
        raise LlsmflowError("config file is not a YAML mapping; expected keys such as raw_dir", configfile)
    return config


def merge_overrides(config: dict, overrides: Mapping | None) -> dict:
    """Apply ``snakemake --config`` style overrides to ``config`` in place (nested mappings merged, as
    Snakemake's ``update_config`` does); returns ``config``."""
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            merge_overrides(config[key], value)
        else:
            config[key] = copy.deepcopy(value)
    return config


def read_config(configfile: str | Path | None, workflow_root: str | Path | None = None) -> dict:
    """A config file (or none: ``{}``) with the schema's defaults filled in; its values are type-checked, but
    keys may be missing (``estimate`` answers for a config that is still being written)."""
    config = {} if configfile is None else _read_yaml_mapping(Path(configfile))
    schema = load_schema(workflow_root)
    if schema is None:
        raise LlsmflowError(
            "no workflow config schema (config/schema.yaml) found, so no defaults for the config; expected "
            "to run in an llsmflow checkout",
            Path(workflow_root or Path.cwd()) / SCHEMA,
        )
    if configfile is not None:
        validate_config(config, schema, Path(configfile), ignore_required=True)
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


def validate_config(config: dict, schema: Mapping, source: Path, ignore_required: bool = False) -> None:
    """Check ``config`` against the schema (types included: a boolean is not a number), failing with one line
    naming ``source``, the key, the value and the expectation."""
    import jsonschema

    errors = [
        e
        for e in jsonschema.Draft202012Validator(schema).iter_errors(config)
        if not (ignore_required and e.validator == "required")
    ]
    if errors:
        error = sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])[0]
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise LlsmflowError(
            f"config key {key}: {error.message}; expected {schema_expectation(error)}", source
        )


def effective_config(
    configfile: Path, workflow_root: Path, overrides: Mapping | None = None, ignore_required: bool = False
) -> dict:
    """The config the workflow will run with: ``configfile``, then ``overrides`` (Snakemake ``--config``
    values, parsed by the CLI); validated, defaults filled in."""
    config = _read_yaml_mapping(Path(configfile))
    values = dict(overrides or {})
    merge_overrides(config, values)
    schema = load_schema(workflow_root)
    if schema is None:
        raise LlsmflowError(
            "workflow has no config schema; expected an llsmflow checkout", Path(workflow_root) / SCHEMA
        )
    source = Path(configfile) if not values else Path(f"{configfile} (with --config)")
    validate_config(config, schema, source, ignore_required=ignore_required)
    return fill_defaults(config, schema)


def check_config(
    configfile: Path, workflow_root: Path, check_files: bool = True, overrides: Mapping | None = None
) -> dict:
    """Validate a config file (with ``overrides``: Snakemake ``--config`` values) against the schema and read
    its acquisition, failing with one clear line.

    Returns the config with the schema's defaults filled in. ``check_files=False`` skips reading every
    stack's header and PSF (``llsmflow status`` must answer even when the raw data are no longer mounted)."""
    config = effective_config(Path(configfile), Path(workflow_root), overrides)
    config_acquisition(config, check_files=check_files)
    return config


def config_acquisition(config: Mapping, raw_dir=None, check_files: bool = True):
    """The acquisition a run's ``config`` (schema defaults filled in) describes: ``raw_dir`` (default: the
    config's) read with its ``metadata``, ``overrides`` and ``ingest.allow_missing_timepoints``, and with
    ``check_files`` every stack's header and PSF checked as the workflow will use them (``deskew.rotate``,
    ``deconvolution.psf_geometry`` and ``psf_background``: :func:`llsmflow.ingest.read_acquisition`)."""
    from llsmflow.ingest import read_acquisition

    return read_acquisition(
        config["raw_dir"] if raw_dir is None else raw_dir,
        config.get("metadata"),
        config["overrides"],
        check_files=check_files,
        psf_geometry=config["deconvolution"]["psf_geometry"],
        allow_missing_timepoints=config["ingest"]["allow_missing_timepoints"],
        rotate=config["deskew"]["rotate"],
        psf_background=config["deconvolution"]["psf_background"],
    )


def snakemake_base_command(workflow_root: Path, configfile: Path) -> list[str]:
    """``snakemake --snakefile WORKFLOW/Snakefile --configfile CONFIG``: the start of every Snakemake call."""
    return [
        *snakemake_program(),
        "--snakefile",
        str(workflow_root / "Snakefile"),
        "--configfile",
        str(configfile),
    ]


def snakemake_program() -> list[str]:
    """How to start Snakemake: through :mod:`llsmflow.run.snakemake_cli` with this Python when Snakemake is
    installed beside llsmflow (it skips the SLURM plugin's slow import-time probe), else the ``snakemake``
    command."""
    import importlib.util

    if importlib.util.find_spec("snakemake") is not None:
        return [sys.executable, "-m", "llsmflow.run.snakemake_cli"]
    return [snakemake_executable()]


def snakemake_executable() -> str:
    """The ``snakemake`` command of this environment (beside this Python first, then on PATH)."""
    snakemake = shutil.which(
        "snakemake", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    )
    if snakemake is None:
        raise LlsmflowError("the snakemake command was not found; expected `pip install llsmflow[workflow]`")
    return snakemake
