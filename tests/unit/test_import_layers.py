"""The package's imports point down through declared layers (DESIGN.md "Layout"), with no module-level cycle.

Every `enginesmith/**/*.py` is parsed with `ast` (nothing is imported): each enginesmith import, at module level
or inside a function, absolute or relative, is mapped to its layer by LAYERS below. A test fails, naming
file:line, for an import that points to a higher layer, for a module-level cycle between subpackages or
between modules, and for `torch`/`torchvision` imported at module level outside the places that build or
train networks (TORCH_AT_MODULE_LEVEL).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "enginesmith"

# Top (1) imports bottom (9), never the reverse; a package or module not listed here fails the test, so a
# new one has to be placed. Same layer: allowed, as long as no module-level cycle appears.
LAYERS: dict[str, int] = {
    "cli": 1,
    "benchmarks": 2,     # suites, bench harness, results tables, `enginesmith eval`
    "pipeline": 3,       # the build stages
    "training": 4,       # trainers (import data, models, evaluation; never calibration)
    "calibration": 4,    # calibration feeds and quantizers (import data, runtime; never training)
    "data": 5,           # datasets, offline builders
    "models": 6,         # the zoo, shared layers, memory estimates
    "evaluation": 6,     # metrics, the prediction loop, latency timing (use runtime only, not models/data)
    "runtime": 7,        # torch-free engine loading and pre/post-processing
    "backends": 8,
    "cluster": 8,        # executors: local child processes, Ray (jobs name their functions as strings)
    "errors": 9,
    "files": 9,
    "progress": 9,
    "__init__": 9,       # enginesmith/__init__.py: __version__
}

# Files that import torch (or torchvision) at module level although not under models/ or training/.
TORCH_AT_MODULE_LEVEL: dict[str, str] = {
    "pipeline/export.py": "exports a torch network to ONNX",
    "backends/torch.py": "the PyTorch eager backend",
    "backends/torch_compile.py": "the torch.compile backend",
}
TORCH_PACKAGES = ("models", "training")


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every import in `path`; `from a import b` yields a.b when
    a.b is a module of the package, else a. Imports under `if TYPE_CHECKING:` count as not at module level."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_top = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                child_top = False
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    found.append((child.lineno, sub if _exists(sub) else target, top))
            visit(child, child_top)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:]) if module.startswith("enginesmith.") else None
    return rel is not None and ((PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file())


def _unit(module: str) -> str:
    """The layer key of an enginesmith module: its subpackage, or the top-level module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _internal_imports():
    for path in _files():
        for line, target, top in _imports(path):
            if target == "enginesmith" or target.startswith("enginesmith."):
                yield path, line, target, top


def test_every_subpackage_and_top_level_module_has_a_layer():
    units = {_unit(_module_name(path)) for path in _files()}
    assert not units - LAYERS.keys(), f"place these in LAYERS: {sorted(units - LAYERS.keys())}"


def test_imports_point_down():
    upward = []
    for path, line, target, _ in _internal_imports():
        source, dest = _unit(_module_name(path)), _unit(target)
        if LAYERS.get(dest, 0) > 0 and LAYERS[dest] < LAYERS.get(source, 99):
            upward.append(f"enginesmith/{_rel(path)}:{line}: {source} (layer {LAYERS[source]}) imports {target} "
                          f"(layer {LAYERS[dest]})")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def _find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """A cycle in `graph` (node -> {neighbour: where}) by depth-first search, as the list of its nodes."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    return "\n".join(f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def _module_graph(key) -> dict[str, dict[str, str]]:
    graph: dict[str, dict[str, str]] = {}
    for path, line, target, top in _internal_imports():
        source = key(_module_name(path))
        dest = key(target)
        if top and source != dest:
            graph.setdefault(source, {}).setdefault(dest, f"enginesmith/{_rel(path)}:{line}")
    return graph


def test_no_module_level_cycle_between_subpackages():
    graph = _module_graph(_unit)
    cycle = _find_cycle(graph)
    assert cycle is None, "module-level import cycle between subpackages:\n" + _describe(cycle, graph)


def test_no_module_level_cycle_between_modules():
    graph = _module_graph(lambda module: module)
    cycle = _find_cycle(graph)
    assert cycle is None, "module-level import cycle between modules:\n" + _describe(cycle, graph)


def test_torch_at_module_level_only_where_networks_are_built():
    offenders = []
    for path in _files():
        rel = _rel(path)
        if rel.split("/")[0] in TORCH_PACKAGES or rel in TORCH_AT_MODULE_LEVEL:
            continue
        for line, target, top in _imports(path):
            if top and target.split(".")[0] in ("torch", "torchvision"):
                offenders.append(f"enginesmith/{rel}:{line}: imports {target} at module level")
    assert not offenders, "torch imported at module level outside models/, training/ and:\n" + "\n".join(offenders)


def test_the_checks_can_fail():
    """The cycle search finds a planted cycle, and the layer table ranks runtime below pipeline."""
    graph = {"a": {"b": "x:1"}, "b": {"c": "x:2"}, "c": {"a": "x:3"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b": "x:1"}, "b": {}}) is None
    assert LAYERS["runtime"] > LAYERS["pipeline"]
