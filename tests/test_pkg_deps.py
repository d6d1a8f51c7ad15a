"""Every third-party package llsmflow imports is declared in pyproject.toml, and the conda env file pins the same.

The imports are read with :mod:`ast` from the library, the workflow scripts, the Snakefile and the rule files;
each top-level module is mapped to its distribution with :func:`importlib.metadata.packages_distributions`
(for the few optional GPU modules not installed here, with :data:`NOT_INSTALLED`). The declared requirements
are read from pyproject.toml (the installed metadata of an editable install may predate the checkout's
file); when the installed llsmflow was built from this checkout its ``importlib.metadata.requires`` must agree.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
#: Optional modules that cannot be installed on a machine without CUDA, and the distribution declaring them.
NOT_INSTALLED = {
    "cupy": "cupy-cuda12x",
    "cupyx": "cupy-cuda12x",  # shipped inside the cupy distribution
    "pycudadecon": "pycudadecon",
    "ezomero": "ezomero",
}
#: conda-forge names that differ from PyPI's.
CONDA_NAMES = {"matplotlib-base": "matplotlib"}


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for entries in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in entries]
    return {canonicalize_name(r.name): r for r in requirements}


def _imported_modules() -> dict[str, set[str]]:
    """``{top-level module: {files importing it}}`` for absolute imports outside the standard library."""
    found: dict[str, set[str]] = {}
    python_files = [*(REPO / "src" / "llsmflow").rglob("*.py"), *(REPO / "workflow" / "scripts").glob("*.py")]
    for path in python_files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    # Snakemake files are not Python: their import lines are
    for path in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        for match in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", path.read_text(encoding="utf-8"), re.M):
            found.setdefault(match.group(1), set()).add(str(path.relative_to(REPO)))
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m != "llsmflow"}


def test_every_imported_package_is_declared():
    declared = _declared()
    distributions = md.packages_distributions()
    undeclared = {}
    for module, files in sorted(_imported_modules().items()):
        names = distributions.get(module) or [NOT_INSTALLED.get(module, f"<no distribution for {module}>")]
        if not any(canonicalize_name(n) in declared for n in names):
            undeclared[module] = (names, sorted(files)[:3])
    assert undeclared == {}


def test_known_minimums():
    """Minimums the code needs: ome-zarr 0.18 for ``OMEZarrImage``, whose models come from ome-zarr-models
    >= 1.6, which needs zarr >= 3.1.1; Snakemake 9 (``min_version("9.0")`` in the Snakefile)."""
    declared = _declared()
    for name, minimum, below in (
        ("ome-zarr", "0.18.0", "0.17.1"),
        ("ome-zarr-models", "1.6", "1.5"),
        ("zarr", "3.1.1", "3.1.0"),
        ("snakemake", "9.0.0", "8.30"),
    ):
        spec = declared[name].specifier
        assert spec.contains(minimum) and not spec.contains(below), f"{name} {spec}: expected >= {minimum}"
    import ome_zarr

    assert hasattr(ome_zarr, "OMEZarrImage")


def test_installed_metadata_agrees_when_built_from_this_checkout():
    try:
        dist = md.distribution("llsmflow")
    except md.PackageNotFoundError:
        return
    direct = dist.read_text("direct_url.json")
    if not direct or Path(json.loads(direct).get("url", "").removeprefix("file://")) != REPO:
        return  # installed from another checkout or a wheel: nothing to compare
    installed = {canonicalize_name(Requirement(r).name): str(Requirement(r).specifier) for r in dist.requires or []}
    assert installed == {n: str(r.specifier) for n, r in _declared().items()}


def test_conda_env_pins_the_same_versions():
    env = yaml.safe_load((REPO / "envs" / "llsmflow.yaml").read_text(encoding="utf-8"))
    declared = _declared()
    mismatched, conda_names = {}, set()
    for entry in env["dependencies"]:
        if not isinstance(entry, str) or entry.startswith("python"):
            continue
        requirement = Requirement(entry.replace("=", "==", 1) if re.match(r"^[\w.-]+=[^=]", entry) else entry)
        name = canonicalize_name(CONDA_NAMES.get(requirement.name, requirement.name))
        conda_names.add(name)
        if name == "pip":
            continue
        assert name in declared, f"envs/llsmflow.yaml pins {entry}, which pyproject.toml does not declare"
        if str(requirement.specifier) != str(declared[name].specifier):
            mismatched[name] = (str(requirement.specifier), str(declared[name].specifier))
    assert mismatched == {}
    assert {"ome-zarr", "ome-zarr-models", "zarr"} <= conda_names
