"""The house keeps its shape: imports point down the layers, no cycles, no module too large to read.

Read from the source with ``ast`` (every import statement, at module level or inside a function), so a
late import inside a function cannot hide an arrow that points up.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "llsmflow"

BOTTOM = {"errors", "io", "czi_io", "urls", "progress", "parallel", "_lazy", ""}
PROCESSING = {"ingest", "deskew", "geometry", "decon", "stitch", "track", "archive", "qc", "synth", "viewers"}
UPPER = {"run", "provenance", "hpc", "fair", "watch"}
CLI = {"cli"}
# former module paths kept for older workflow snapshots, docs and bench; they re-export from the new homes
SHIMS = {"container", "cluster", "crate", "report"}

LAYER_OF = {
    **{name: 0 for name in BOTTOM},
    **{name: 1 for name in PROCESSING},
    **{name: 2 for name in UPPER | SHIMS},
    **{name: 3 for name in CLI},
}
LAYER_NAMES = ("bottom (io, errors, …)", "processing", "run/provenance/hpc", "cli")

MAX_LINES = 600


def modules() -> dict[str, Path]:
    """Dotted name -> path of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """The llsmflow modules that ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            # `from llsmflow import decon` names a module too
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    known = modules()
    return {t for t in targets if t in known and t != name}


def top_package(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    assert {top_package(name) for name in modules()} <= set(LAYER_OF)


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_down(name):
    path = modules()[name]
    here = top_package(name)
    for target in imported(name, path):
        there = top_package(target)
        if there == here:
            continue
        assert there not in CLI, f"{name} imports {target}: only the CLI may import the CLI"
        assert LAYER_OF[there] <= LAYER_OF[here], (
            f"{name} ({LAYER_NAMES[LAYER_OF[here]]}) imports {target} ({LAYER_NAMES[LAYER_OF[there]]}): "
            "imports must point down the layers (docs/architecture.md)"
        )


def test_no_import_cycles_at_module_level():
    graph = {name: imported(name, path, top_level_only=True) for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_is_too_long_to_read():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them along a seam): {long}"


def test_processing_packages_do_not_import_snakemake():
    for name, path in modules().items():
        if top_package(name) in PROCESSING | BOTTOM:
            text = path.read_text(encoding="utf-8")
            assert "import snakemake" not in text and "from snakemake" not in text, name
