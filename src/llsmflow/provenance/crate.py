"""Workflow Run RO-Crate (Provenance Run Crate profile 0.5) of one workflow run, written with ``rocrate``.

The crate is built from the run record (:func:`llsmflow.provenance.write_run_record`): one ``CreateAction`` per
step that ran, one ``ControlAction`` per step linking it to the workflow's ``HowToStep``, one ``OrganizeAction``
for Snakemake's orchestration, and one ``CreateAction`` for the whole run.

Where the crate lies
--------------------
The crate root is ``results/<dataset>/provenance/`` (``ro-crate-metadata.json`` beside ``run-record.json``).
Inside the crate (relative ``@id``): the run record, the sha256 manifest, the registered tile transforms, the
resolved configuration (``config.yaml``) and a snapshot of the workflow that ran (``workflow/Snakefile`` with
its rules, scripts and config schema; the Workflow RO-Crate profile requires the main workflow file inside the
crate, and ``llsmflow reproduce`` re-runs that snapshot), and a ``README.md``. Raw inputs, results and
intermediates lie outside the crate root, so they are data entities with local identifiers (``#raw/…`` relative
to ``raw_dir``, ``#results/…`` and ``#work/…`` relative to the run directory; never the machine's absolute
paths: :mod:`llsmflow.provenance.crate_meta`); each carries ``name`` (that relative path), ``contentSize`` and
``sha256``. Directories (the OME-Zarr archive) are ``Dataset``
entities; their files are listed with checksums in ``run-record.json`` and ``checksums.sha256``.

How run facts map onto the profile
----------------------------------
- parameters of a step → ``PropertyValue`` (``object`` of the step's ``CreateAction``), described by a
  ``FormalParameter`` (``input`` of the rule's ``SoftwareApplication``); config values of the run likewise on
  the ``ComputationalWorkflow``.
- wall time, peak memory, threads, the deconvolution backend that ran, the dask cluster, the chunk count, time
  spent in a part of the job (``seconds_…``) and the GPU (model, driver, CUDA) → ``resourceUsage``
  (``PropertyValue`` with ``propertyID`` and a QUDT ``unitCode``; a name such as the backend: ``UNITLESS``).
- every other value a job noted about its data (the shape it wrote, the method, the PSF geometry, the
  diffusion coefficient) → a ``result`` ``PropertyValue`` of the job, described by an output
  ``FormalParameter`` of the rule's tool (:func:`llsmflow.provenance.crate_steps.reported_values`).
- the dataset's REMBI (config key ``rembi``, when filled in and valid) → the study, biosamples, protocols and
  analysis as schema.org/Bioschemas entities, the root dataset ``about`` the study
  (:mod:`llsmflow.fair.rembi_crate`).
- allow-listed environment variables and the host name → ``environment`` (``PropertyValue``).
- container image and digest → ``containerImage`` (``ContainerImage``).
- Python and package versions → ``SoftwareApplication`` entities in ``softwareRequirements``.

The Workflow Run terms (``resourceUsage``, ``environment``, ``containerImage``, ``ContainerImage``) are declared
inline in the ``@context`` rather than by the remote ``https://w3id.org/ro/terms/workflow-run`` context, so
that only the RO-Crate context itself must be resolvable when the crate is validated offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from llsmflow.errors import LlsmflowError
from llsmflow.provenance import crate_meta
from llsmflow.provenance.crate_steps import (
    ACTION_COMPLETED,
    JOB_ACTIONS_MAX,
    add_step_actions,
    container,
    environment,
)
from llsmflow.provenance.crate_steps import additional_type as _additional_type
from llsmflow.provenance.crate_steps import literal as _value
from llsmflow.provenance.crate_steps import slug as _slug

if TYPE_CHECKING:
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
WFRUN_TERMS = {
    name: WFRUN + name
    for name in ("resourceUsage", "environment", "containerImage", "ContainerImage", "ParameterConnection")
}
# The Workflow Run Crate profiles 0.5 build on RO-Crate 1.1 (bioschemas terms as in its context).
RO_CRATE_VERSION = "1.1"
LICENSE = "https://spdx.org/licenses/BSD-3-Clause"
# Files of the workflow copied into the crate (relative to the checkout): all that Snakemake reads.
WORKFLOW_FILES = (
    "Snakefile",
    "workflow/rules/*.smk",
    "workflow/scripts/*.py",
    "config/schema.yaml",
    "workflow/report/*.rst",  # captions the Snakefile's report: line and report() outputs name
    "envs/*",
    "envs/apptainer/*.def",
)
CRATE_FILES = (
    "run-record.json", "checksums.sha256", "transforms.json", "config.yaml", "fftw-wisdom", crate_meta.README
)
METADATA = "ro-crate-metadata.json"


def flatten_config(config: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for every leaf of a nested configuration (lists are leaves)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def copy_workflow(workflow_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy the files Snakemake reads (Snakefile, rules, scripts, schema, envs) under ``dest``; return them."""
    workflow_dir, dest = Path(workflow_dir).resolve(), Path(dest)
    if not (workflow_dir / "Snakefile").is_file():
        raise LlsmflowError(
            "no Snakefile to copy into the crate; expected the llsmflow checkout", workflow_dir
        )
    copied = []
    for pattern in WORKFLOW_FILES:
        for source in sorted(workflow_dir.glob(pattern)):
            if source.is_file():
                target = dest / source.relative_to(workflow_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                copied.append(target)
    return copied


class _CrateBuilder:
    """Accumulates entities; one instance per crate."""

    def __init__(self, crate_dir: Path, record: dict, run_dir: Path):
        # rocrate takes a while to import: only when a crate is built (reproducing reads crates as JSON)
        from rocrate.rocrate import ROCrate

        self.crate = ROCrate(version=RO_CRATE_VERSION)
        self.crate.metadata.extra_terms.update(WFRUN_TERMS)
        self.crate_dir = crate_dir
        self.record = record
        self.run_dir = run_dir
        self.files: dict[str, ContextEntity] = {}
        # every entity made here, by @id: rocrate's crate.get() scans every entity on a miss (quadratic)
        self.index: dict[str, ContextEntity] = {}
        self._tool_inputs: dict[str, set[str]] = {}
        self._uris: dict[str, tuple[str, dict]] | None = None
        self._uri_cache: dict[str, str] = {}
        self._dir_cache: dict[Path, Path] = {}
        raw = (record.get("config") or {}).get("raw_dir")
        self.raw_dir = None if not raw else self.resolved(raw)
        self.run_dir_resolved = run_dir.resolve()

    def add(self, entity_id: str, types, **properties):
        existing = self.index.get(entity_id)
        if existing is not None:
            return existing
        from rocrate.model.contextentity import ContextEntity

        entity = ContextEntity(self.crate, entity_id, properties={"@type": types, **properties})
        self.index[entity_id] = entity
        return self.crate.add(entity)

    def tool_input(self, tool, parameter, key: str = "input") -> None:
        """``parameter`` (a FormalParameter) among the ``input`` (or ``key``) of ``tool``, once."""
        seen = self._tool_inputs.setdefault(tool.id, set())
        if parameter.id not in seen:
            seen.add(parameter.id)
            tool.append_to(key, parameter)

    def recorded_by_uri(self, path: str, inputs: dict, outputs: dict):
        """``(recorded path, entry)`` of the input or output that is the same file as ``path``, or None."""
        if self._uris is None:
            self._uris = {self.path_uri(p): (p, e) for p, e in {**inputs, **outputs}.items()}
        return self._uris.get(self.path_uri(path))

    def path_uri(self, path: str) -> str:
        """The resolved absolute path (text) of a recorded path: only to tell whether two paths are one file."""
        return str(self.resolved(path))

    def resolved(self, path: str) -> Path:
        """Absolute path of a path recorded relative to the run directory (symbolic links resolved).

        A directory is resolved once for all its files (``Path.resolve`` costs an ``lstat`` per path component:
        most of the crate's build time at 20,000 volumes); a file that is itself a link is resolved whole."""
        key = str(path)
        uri = self._uri_cache.get(key)
        if uri is None:
            p = Path(path)
            p = p if p.is_absolute() else self.run_dir / p
            if p.name in ("", ".", "..") or p.is_symlink():
                resolved = p.resolve()
            else:
                parent = self._dir_cache.get(p.parent)
                if parent is None:
                    parent = self._dir_cache[p.parent] = p.parent.resolve()
                resolved = parent / p.name
            uri = self._uri_cache[key] = resolved
        return uri

    def data_entity(self, path: str, entry: dict | None = None, is_dir: bool | None = None):
        """File or Dataset entity for a path outside the crate (a local ``#…`` identifier), created once."""
        key = str(path)
        if key in self.files:
            return self.files[key]
        absolute = Path(path) if Path(path).is_absolute() else self.run_dir / path
        is_dir = absolute.is_dir() if is_dir is None else is_dir
        uri = crate_meta.local_id(self.resolved(path), self.raw_dir, self.run_dir_resolved, is_dir)
        props = {"name": uri[1:].rstrip("/")}
        if entry:
            props.update(contentSize=str(entry["bytes"]), sha256=entry["sha256"])
        entity = self.add(uri, "Dataset" if is_dir else "File", **props)
        self.files[key] = entity
        return entity

    def property_value(self, entity_id: str, name: str, value, **extra):
        return self.add(entity_id, "PropertyValue", name=name, value=_value(value), **extra)

    def parameter(self, parameter_id: str, value_id: str, name: str, value):
        """A FormalParameter (``parameter_id``, shared by every run of its tool) and the PropertyValue
        (``value_id``) this run gave it, linked both ways (workExample / exampleOfWork); returns both."""
        pv = self.property_value(value_id, name, crate_meta.portable(value, self.raw_dir, self.run_dir_resolved))
        fp = self.add(parameter_id, "FormalParameter", name=name, additionalType=_additional_type(value))
        fp.append_to("workExample", pv, compact=True)
        pv["exampleOfWork"] = fp
        return fp, pv

    def software(self) -> list:
        sw = self.record["software"]
        entities = [
            self.add(
                f"https://www.python.org/downloads/release/python-{sw['python'].replace('.', '')}/",
                "SoftwareApplication",
                name="Python",
                version=sw["python"],
                url={"@id": "https://www.python.org"},
            )
        ]
        for name, version in sorted(sw["packages"].items()):
            entities.append(
                self.add(
                    # PyPI's page of the release (llsmflow itself is not on PyPI: a local id)
                    f"#software-{_slug(name)}-{_slug(version)}"
                    if name == "llsmflow"
                    else f"https://pypi.org/project/{name}/{version}/",
                    "SoftwareApplication",
                    name=name,
                    version=version,
                    **(
                        _llsmflow_reference(self.record)
                        if name == "llsmflow"
                        else {"url": {"@id": f"https://pypi.org/project/{name}/"}}
                    ),
                )
            )
        return entities


def build_crate(
    crate_dir, record: dict, workflow_dir, run_dir, record_outputs=None, job_actions_max: int = JOB_ACTIONS_MAX
) -> ROCrate:
    """Build the Provenance Run Crate of a run from its run record.

    Parameters
    ----------
    crate_dir : path
        Crate root (``results/<dataset>/provenance``); must already hold the files of :data:`CRATE_FILES`
        that exist for this run. The workflow snapshot is copied to ``crate_dir/workflow``.
    record : dict
        The run record (as written to ``run-record.json``), secrets already scrubbed.
    workflow_dir : path
        The llsmflow checkout whose ``Snakefile`` ran.
    run_dir : path
        The directory the workflow ran in (recorded paths are relative to it).
    record_outputs : list of str, optional
        Top-level result paths (files or directories, relative to ``run_dir``) to describe as the run's
        outputs; default: every file of ``record["outputs"]``.
    job_actions_max : int
        Up to this many step records, one ``CreateAction`` per job; beyond, one per rule
        (:mod:`llsmflow.provenance.crate_steps`).
    """
    crate_dir, run_dir = Path(crate_dir), Path(run_dir)
    b = _CrateBuilder(crate_dir, record, run_dir)
    crate = b.crate
    wf_meta = record["workflow"]
    config = record["config"]

    # --- the crate itself
    crate.name = f"llsmflow run of dataset {config.get('dataset')}"
    crate.description = (
        "Provenance of one llsmflow workflow run (deskew, deconvolution, stitching, tracking, OME-Zarr archive): "
        "configuration, inputs and outputs with sha256, every step with its parameters, resources and software."
    )
    crate.datePublished = record["created"]
    crate.license = b.add(LICENSE, "CreativeWork", name="BSD 3-Clause License", identifier="BSD-3-Clause")
    crate.root_dataset["keywords"] = crate_meta.KEYWORDS
    crate.root_dataset["conformsTo"] = [
        b.add(uri, "CreativeWork", name=name, version=uri.rsplit("/", 1)[-1])
        for uri, name in PROFILES.items()
    ]

    # --- files inside the crate
    authors = crate_meta.rembi_authors(config, run_dir)
    (crate_dir / crate_meta.README).write_text(crate_meta.readme(record, authors), encoding="utf-8")
    for name in CRATE_FILES:
        if (crate_dir / name).is_file():
            # the run record holds every job's record: its sha256 here (the per-rule actions point to it)
            extra = _checksum(crate_dir / name) if name == "run-record.json" else {}
            if name == crate_meta.README:  # Workflow RO-Crate: the README is about the crate, in Markdown
                extra = {"about": crate.root_dataset, "encodingFormat": "text/markdown"}
            b.index[name] = crate.add_file(
                crate_dir / name, name, properties={"name": name, **_file_description(name), **extra}
            )
    copy_workflow(workflow_dir, crate_dir / "workflow")
    snapshot = sorted(p for p in (crate_dir / "workflow").rglob("*") if p.is_file())
    for path in snapshot:
        relative = path.relative_to(crate_dir).as_posix()
        if relative != "workflow/Snakefile":
            crate.add_file(path, relative, properties={"name": relative, **_checksum(path)})

    # --- software, engine, language
    software = b.software()
    snakemake_version = record["software"]["packages"].get("snakemake", "unknown")
    language = b.add(
        crate_meta.SNAKEMAKE_LANGUAGE,
        "ComputerLanguage",
        name="Snakemake",
        identifier={"@id": "https://snakemake.readthedocs.io"},
        url={"@id": "https://snakemake.github.io"},
        version=snakemake_version,
    )
    engine = b.add(
        f"https://pypi.org/project/snakemake/{snakemake_version}/",
        "SoftwareApplication",
        name="Snakemake",
        version=snakemake_version,
        url={"@id": "https://snakemake.github.io"},
    )

    # --- workflow, its config parameters
    git = {k: wf_meta[k] for k in ("commit", "dirty") if k in wf_meta}
    git_props = [
        b.property_value(f"#workflow-git-{k}", f"git_{k}", v, propertyID=f"git_{k}") for k, v in git.items()
    ]
    workflow = crate.add_file(
        crate_dir / "workflow" / "Snakefile",
        "workflow/Snakefile",
        properties={
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": wf_meta.get("name", "llsmflow"),
            "version": wf_meta.get("version"),
            "programmingLanguage": language,
            # its source: a declared homepage of llsmflow, else the file itself in the crate
            "url": {"@id": crate_meta.project_url() or "workflow/Snakefile"},
            "conformsTo": {"@id": crate_meta.COMPUTATIONAL_WORKFLOW_PROFILE},
            "softwareRequirements": software,
            "additionalProperty": git_props,
            **_checksum(crate_dir / "workflow" / "Snakefile"),
            "description": "llsmflow Snakemake workflow"
            + (f" at git commit {git['commit']}" if git.get("commit") else "")
            + (" with uncommitted changes (dirty tree)" if git.get("dirty") else ""),
        },
    )
    crate.mainEntity = workflow

    config_values, wf_inputs = [], []
    for key, value in flatten_config(config).items():
        fp, pv = b.parameter(f"#workflow-param-{_slug(key)}", f"#run-config-{_slug(key)}", key, value)
        config_values.append(pv)
        wf_inputs.append(fp)

    inputs_entries = {e["path"]: e for e in record["inputs"]}
    output_entries = {e["path"]: e for e in record["outputs"]}
    raw_entities = [b.data_entity(p, e) for p, e in inputs_entries.items()]
    raw_param = b.add(
        "#workflow-param-raw-files",
        "FormalParameter",
        name="raw files",
        additionalType="File",
        description="raw stacks, PSFs and the acquisition metadata file, read from raw_dir",
        workExample=raw_entities,
    )
    for entity in raw_entities:
        entity["exampleOfWork"] = raw_param
    wf_inputs.append(raw_param)

    outputs = _output_entities(b, record_outputs, output_entries)
    wf_outputs = []
    for path, entity in outputs.items():
        is_dir = "Dataset" in entity.type if isinstance(entity.type, list) else entity.type == "Dataset"
        fp = b.add(
            f"#workflow-output-{_slug(path)}",
            "FormalParameter",
            name=path,
            additionalType="Dataset" if is_dir else "File",
            workExample=entity,
        )
        entity["exampleOfWork"] = fp
        wf_outputs.append(fp)
    workflow["input"] = wf_inputs
    workflow["output"] = wf_outputs

    # --- steps: tools, HowToSteps, executions
    steps = sorted(record["steps"], key=lambda s: (s.get("start") or "", s["step"]))
    rules = sorted({s["step"] for s in steps}, key=lambda r: [s["step"] for s in steps].index(r))
    tools, howtos = {}, {}
    sources = crate_meta.rule_sources(crate_dir, "workflow")
    for position, rule in enumerate(rules):
        source = sources.get(rule)
        tools[rule] = b.add(
            f"#tool-{_slug(rule)}",
            "SoftwareApplication",
            name=f"rule {rule}",
            description=f"Snakemake rule {rule} ({source or 'workflow/rules/*.smk'}) calling the llsmflow library",
            version=wf_meta.get("version"),
            softwareRequirements=software,
            **({"url": {"@id": source}} if source else {}),
        )
        howtos[rule] = b.add(
            f"#step-{_slug(rule)}", "HowToStep", name=rule, position=str(position), workExample=tools[rule]
        )
    workflow["hasPart"] = list(tools.values())
    workflow["step"] = list(howtos.values())

    control_actions = add_step_actions(
        b,
        steps,
        tools,
        howtos,
        lambda path: _step_file(b, path, inputs_entries, output_entries),
        run_record=b.index.get("run-record.json"),
        job_actions_max=job_actions_max,
    )

    starts = [s["start"] for s in steps if s.get("start")]
    ends = [s["end"] for s in steps if s.get("end")]
    run_action = b.add(
        "#run",
        "CreateAction",
        name=f"llsmflow run of dataset {config.get('dataset')}",
        description="the whole workflow run: raw files and configuration in, results out",
        instrument=workflow,
        object=raw_entities + config_values,
        result=list(outputs.values()),
        startTime=min(starts) if starts else record["created"],
        endTime=max(ends + [record["created"]]),
        actionStatus=ACTION_COMPLETED,
        environment=environment(
            b, "#run", {"environment": record.get("environment"), "host": record.get("host")}
        ),
    )
    if record.get("container"):
        run_action["containerImage"] = container(b, record["container"])
    b.add(
        "#organize",
        "OrganizeAction",
        name="Snakemake orchestration of the llsmflow run",
        instrument=engine,
        object=control_actions,
        result=run_action,
        startTime=run_action["startTime"],
        endTime=run_action["endTime"],
    )
    # every action is mentioned by the root (Process Run Crate); one per rule in a large run
    crate.root_dataset["mentions"] = [run_action] + [
        e for e in b.index.values() if e.type == "CreateAction" and e is not run_action
    ]
    # RO-Crate 1.1: every data entity, in the crate or not, is reachable from the root through hasPart
    for entity in b.files.values():
        crate.root_dataset.append_to("hasPart", entity)
    return crate


def _llsmflow_reference(record: dict) -> dict:
    """``url`` and ``description`` of llsmflow itself (not on PyPI): its declared homepage (the distribution's
    ``Project-URL``), else the part of its source that ran, the workflow snapshot in the crate."""
    commit = (record.get("workflow") or {}).get("commit")
    return {
        "url": {"@id": crate_meta.project_url() or "workflow/"},
        "description": "llsmflow: the library the workflow's scripts call; its workflow (Snakefile, rules, scripts) "
        "as it ran is in workflow/" + (f"; git commit {commit}" if commit else ""),
    }


def _checksum(path: Path) -> dict:
    """``sha256`` and ``contentSize`` of a file of the crate (the workflow snapshot: ``llsmflow reproduce``
    verifies every snapshot file against them before it runs anything)."""
    from llsmflow.io import sha256_file

    return {"sha256": sha256_file(path), "contentSize": str(path.stat().st_size)}


def _file_description(name: str) -> dict:
    descriptions = {
        "run-record.json": "run record: config, versions, step records, sha256 of every input and output file",
        "checksums.sha256": "sha256sum manifest of every result file and raw input",
        "transforms.json": "registered tile positions (µm)",
        "config.yaml": "the resolved workflow configuration of this run",
        "fftw-wisdom": (
            "FFTW wisdom: the FFT plans the run's deconvolution jobs used (pyFFTW's three-part export, NUL "
            "separated); llsmflow reproduce starts from them, so that on the same kind of CPU the re-run's FFTs "
            "are computed the same way"
        ),
    }
    return {"description": descriptions[name]} if name in descriptions else {}


def _output_entities(b: _CrateBuilder, record_outputs, output_entries: dict) -> dict:
    """``{path: entity}`` for the run's top-level outputs; a directory's size is the sum of its files."""
    if record_outputs is None:
        return {p: b.data_entity(p, e, is_dir=False) for p, e in output_entries.items()}
    entities = {}
    for path in record_outputs:
        path = str(path)
        if path in output_entries:
            entities[path] = b.data_entity(path, output_entries[path], is_dir=False)
            continue
        members = [e for p, e in output_entries.items() if p.startswith(path.rstrip("/") + "/")]
        entity = b.data_entity(path, None, is_dir=True)
        entity["contentSize"] = str(sum(e["bytes"] for e in members))
        entity["description"] = (
            f"{len(members)} files; their sha256 are in run-record.json and checksums.sha256"
        )
        entities[path] = entity
    return entities


def _step_file(b: _CrateBuilder, path: str, inputs: dict, outputs: dict):
    """Entity for a file a step read or wrote: a raw input, a result, or an intermediate under work/."""
    entry = inputs.get(path) or outputs.get(path)
    if entry is None:
        # results recorded relative to the run dir may be given absolute by the step, and vice versa
        same = b.recorded_by_uri(path, inputs, outputs)
        if same is not None:
            return b.data_entity(same[0], same[1], is_dir=False)
    absolute = Path(path) if Path(path).is_absolute() else b.run_dir / path
    is_dir = absolute.is_dir() or path.endswith((".zarr", ".zarr/"))
    return b.data_entity(path, entry, is_dir=is_dir)


def write_crate(
    crate_dir,
    record: dict,
    workflow_dir,
    run_dir,
    record_outputs=None,
    manifest_root=None,
    job_actions_max: int = JOB_ACTIONS_MAX,
) -> Path:
    """Build the crate (see :func:`build_crate`) and write ``ro-crate-metadata.json`` in ``crate_dir``.

    When ``crate_dir`` holds the run's ``checksums.sha256`` (written before the crate, over ``manifest_root``:
    by default the crate's parent, ``results/<dataset>``), the workflow snapshot's files are added to it, so
    that the manifest, like the crate's metadata, records the sha256 of every file of the snapshot.
    """
    from llsmflow.archive.manifest import add_to_manifest
    from llsmflow.io import atomic_output

    crate_dir = Path(crate_dir)
    crate = build_crate(crate_dir, record, workflow_dir, run_dir, record_outputs, job_actions_max)
    manifest = crate_dir / "checksums.sha256"
    if manifest.is_file():
        snapshot = sorted(p for p in (crate_dir / "workflow").rglob("*") if p.is_file())
        add_to_manifest(manifest, Path(manifest_root) if manifest_root else crate_dir.parent, snapshot)
    metadata = crate_meta.finish(crate.metadata.generate())
    authors = crate_meta.rembi_authors(record["config"], Path(run_dir))
    crate_meta.set_authors(metadata, authors)
    rembi = crate_meta.rembi_metadata(record["config"], Path(run_dir))
    if rembi is not None:  # the study, biosamples, protocols and analysis, linked from the root's `about`
        from llsmflow.fair.rembi_crate import add_rembi

        people = [e["@id"] for e in crate_meta.person_entities(authors)[0] if e["@type"] == "Person"]
        metadata = crate_meta.finish(add_rembi(metadata, rembi, people, record.get("acquisition")))
    out = crate_dir / METADATA
    with atomic_output(out) as tmp:
        # indented for reading while small; compact (and written by json's C encoder) for a large run
        indent = 2 if len(record["steps"]) <= job_actions_max else None
        Path(tmp).write_text(json.dumps(metadata, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
