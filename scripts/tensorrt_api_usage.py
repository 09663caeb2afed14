"""Which TensorRT names enginesmith's TensorRT path uses, read from the source with `ast` (for
tensorrt_api_names.py, which checks them against the TensorRT bindings wheels).

The path is our backend (enginesmith/backends/tensorrt*.py) and the Polygraphy code it runs: the loader and
runner methods the backend calls (POLYGRAPHY_ENTRIES) and every Polygraphy function those call in turn
(calls on `self`, `super()`, module functions, funcified loaders such as `create_network`, `trt_util.*`, and
methods only Polygraphy's classes define).

Names found:
- `trt.A.B.C` chains (classes, enums, enum values, module functions);
- attributes read, written or called on TensorRT objects: variables named in TRT_OBJECTS (`builder`,
  `self.context`, ...), what TensorRT calls return (`network.get_input(i).shape`) and attributes of those
  (`context.engine.get_tensor_dtype`); methods that a subclass of a TensorRT class defines and Polygraphy
  never calls itself (TensorRT's callbacks, e.g. IOutputAllocator.notify_shape);
- `getattr` / `hasattr` / `util.try_getattr` of a TensorRT module, class or object with a constant name, and
  a helper's `getattr(trt.BuilderFlag, flag)` called as `helper("FP16")`.

A name is optional (version-guarded) when it is used in the body or handlers of a `try` that catches
AttributeError, under `contextlib.suppress(AttributeError)`, in an `if` (or `elif`/`else`) whose test
compares `mod.version(trt.__version__)` or calls hasattr, or through getattr/hasattr/try_getattr. Branches
that depend on our options are listed in OPTION_BRANCHES: "version" (taken only on some TensorRT versions:
optional) or "never" (not read). Lambdas given to G_LOGGER (evaluated only at verbose log levels) are not
read. Every other name is required. Telling TensorRT objects by variable name is a heuristic: a TensorRT
call on a variable with another name is missed.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKEND_FILES = tuple(sorted((ROOT / "enginesmith" / "backends").glob("tensorrt*.py")))
# Variables (and self.<name> attributes) that hold TensorRT objects, in our backend and in Polygraphy's
# code on our path: attributes read on them are TensorRT API names.
# (Approximate by nature: `profile` is left out because CreateConfig names Polygraphy's Profile so.)
TRT_OBJECTS = frozenset({
    "builder", "network", "parser", "config", "trt_profile", "engine", "context", "runtime", "timing_cache",
    "prev_cache", "cache", "layer", "tensor", "inp",
})
# What backends/tensorrt.py runs of Polygraphy (paths inside the polygraphy package). A loader is constructed
# (__init__) and called (BaseLoader.__call__ -> call_impl); the runner's activate/get_input_metadata/infer/
# deactivate run the *_impl methods below. Everything these call is followed from here.
POLYGRAPHY_ENTRIES: dict[str, tuple[str, ...]] = {
    "backend/trt/loader.py": ("NetworkFromOnnxPath.__init__", "NetworkFromOnnxPath.call_impl",
                              "EngineBytesFromNetwork.__init__", "EngineBytesFromNetwork.call_impl",
                              "EngineFromBytes.__init__", "EngineFromBytes.call_impl"),
    "backend/trt/config.py": ("CreateConfig.__init__", "CreateConfig.call_impl"),
    "backend/trt/profile.py": ("Profile.add",),
    "backend/trt/runner.py": ("TrtRunner.__init__", "TrtRunner.activate_impl", "TrtRunner.get_input_metadata_impl",
                              "TrtRunner.infer_impl", "TrtRunner.deactivate_impl"),
    "backend/trt/util.py": ("get_metadata_from_engine",),  # Runner._load: the output names
    # DataType.from_dtype(x, "tensorrt") reaches it through a registry, from get_metadata_from_engine and the runner
    "datatype/tensorrt.py": ("from_tensorrt",),
}
# The Polygraphy modules whose functions calls are followed into (the TensorRT backend's and its data types').
POLYGRAPHY_MODULES = ("backend/trt/config.py", "backend/trt/loader.py", "backend/trt/profile.py", "backend/trt/runner.py",
                      "backend/trt/util.py", "datatype/tensorrt.py")
# `if` tests in Polygraphy's code on our path whose outcome our options decide (ast.unparse spelling) ->
# (rule, the loader, its option). "never": backends/tensorrt.py never passes the option, so the branch is not
# read; "version": it passes the option only for some TensorRT versions, so the branch's names are optional.
# tests/unit/test_tensorrt_api.py checks each test still occurs in Polygraphy and each "never" option is
# still not passed by our backend. Only branches that use a name some checked version lacks are listed.
OPTION_BRANCHES: dict[str, tuple[str, str, str]] = {
    "self.fp16": ("version", "CreateConfig", "fp16"),  # TensorRT 10's weakly typed fallback only (plan_typing)
    "self.precision_constraints == 'obey'": ("never", "CreateConfig", "precision_constraints"),
    "self.precision_constraints == 'prefer'": ("never", "CreateConfig", "precision_constraints"),
    "self.algorithm_selector is not None": ("never", "CreateConfig", "algorithm_selector"),
    "self.quantization_flags is not None": ("never", "CreateConfig", "quantization_flags"),
    "self.runtime_platform is not None": ("never", "CreateConfig", "runtime_platform"),
    "self.tiling_optimization_level is not None": ("never", "CreateConfig", "tiling_optimization_level"),
    "self.mark_unfused_tensors_as_debug_tensors": ("never", "NetworkFromOnnxPath", "mark_unfused_tensors_as_debug_tensors"),
}

# -- names used on the path ----------------------------------------------------------------------------
@dataclass
class Used:
    """TensorRT names used on the path: name -> where it is first used ("file:line")."""

    required: dict[str, str] = field(default_factory=dict)
    optional: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, where: str, optional: bool) -> None:
        (self.optional if optional else self.required).setdefault(name, where)


def _chain(node: ast.AST) -> list[str] | None:
    """`trt.A.B` -> ["A", "B"]; None for anything not rooted at the name `trt`."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt" and parts:
        return parts[::-1]
    return None


def _is_trt(node: ast.AST, shadowed: frozenset[str] = frozenset()) -> bool:
    """Whether an expression is `trt`, a `trt.X` chain, or holds a TensorRT object (see TRT_OBJECTS; a name in
    `shadowed` is a module, e.g. Polygraphy's `config`, where the function has no local of that name)."""
    if isinstance(node, ast.Name):
        return node.id == "trt" or (node.id in TRT_OBJECTS and node.id not in shadowed)
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr in TRT_OBJECTS
        return _is_trt(node.value, shadowed)  # an attribute of a TensorRT object (context.engine), or a trt chain
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _is_trt(node.func, shadowed)  # what TensorRT returns (network.get_input(i), trt.Builder(logger))
    return False


def _local_names(func: ast.AST) -> set[str]:
    """Parameters and assigned names anywhere inside a function (its nested functions and lambdas included)."""
    names = {a.arg for n in ast.walk(func) if isinstance(n, (ast.FunctionDef, ast.Lambda))
             for a in [*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs]}
    return names | {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _const_str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _catches_attribute_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(k is None or (isinstance(k, ast.Name) and k.id in ("AttributeError", "Exception")) for k in kinds)


def _calls_hasattr(test: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr" for n in ast.walk(test))


def _is_version_test(test: ast.AST) -> bool:
    """A test that reads TensorRT's version (mod.version(trt.__version__) ...) or asks hasattr."""
    return _calls_hasattr(test) or any(isinstance(n, ast.Attribute) and _chain(n) == ["__version__"] for n in ast.walk(test))


def _flag_helpers(func: ast.AST) -> dict[str, tuple[list[str], int]]:
    """Helpers defined inside `func` as `def h(p): ... getattr(trt.X, p)`: name -> (["X"], index of p)."""
    found = {}
    for node in ast.walk(func):
        if isinstance(node, ast.FunctionDef):
            params = [a.arg for a in node.args.args]
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "getattr"
                        and len(call.args) >= 2 and isinstance(call.args[1], ast.Name) and call.args[1].id in params
                        and _chain(call.args[0])):
                    found[node.name] = (_chain(call.args[0]), params.index(call.args[1].id))
    return found


class _Walker(ast.NodeVisitor):
    """Records the TensorRT names of one function (or module), required or optional by the guards around them,
    and the calls it makes (for Polygraphy: to be followed)."""

    def __init__(self, used: Used, label: str, optional: bool = False, resolve=None, own_methods=frozenset(),
                 shadowed=frozenset(), lazy=frozenset()) -> None:
        self.used, self.label, self.optional = used, label, optional
        self.resolve = resolve or (lambda call: [])  # Call node -> [(module, qualname)] in Polygraphy
        self.own_methods = own_methods  # method names Polygraphy calls itself (not TensorRT callbacks)
        self.shadowed = shadowed  # module-level names (Polygraphy's `config` module) that are not TensorRT objects
        self.lazy = lazy  # methods of Polygraphy's lazy `trt` module (trt.is_installed()): not TensorRT's
        self.calls: list[tuple[tuple[str, str], bool]] = []
        self.helpers: dict[str, tuple[list[str], int]] = {}
        self._parents: dict[int, ast.AST] = {}

    def run(self, node: ast.AST) -> "_Walker":
        self.helpers = _flag_helpers(node)
        for parent in ast.walk(node):
            for child in ast.iter_child_nodes(parent):
                self._parents[id(child)] = parent
        for child in (node.body if isinstance(node, (ast.FunctionDef, ast.Module)) else [node]):
            self.visit(child)
        return self

    @contextmanager
    def guard(self, on: bool) -> Iterator[None]:
        old, self.optional = self.optional, self.optional or on
        try:
            yield
        finally:
            self.optional = old

    def add(self, name: str, node: ast.AST, optional: bool = False) -> None:
        self.used.add(name, f"{self.label}:{node.lineno}", self.optional or optional)

    def visit_all(self, nodes: list[ast.AST]) -> None:
        for n in nodes:
            self.visit(n)

    # -- guards ----------------------------------------------------------------------------------------
    def visit_Try(self, node: ast.Try) -> None:
        with self.guard(any(_catches_attribute_error(h) for h in node.handlers)):
            self.visit_all(node.body)
            self.visit_all(node.handlers)
        self.visit_all(node.orelse)
        self.visit_all(node.finalbody)

    def visit_With(self, node: ast.With) -> None:
        suppress = any(isinstance(i.context_expr, ast.Call) and ast.unparse(i.context_expr.func).endswith("suppress")
                       and "AttributeError" in ast.unparse(i.context_expr) for i in node.items)
        self.visit_all([i.context_expr for i in node.items])
        with self.guard(suppress):
            self.visit_all(node.body)

    def visit_If(self, node: ast.If) -> None:
        rule = OPTION_BRANCHES.get(ast.unparse(node.test), ("",))[0]
        self.visit(node.test)  # the test itself always runs
        with self.guard(rule == "version" or _is_version_test(node.test)):
            if rule != "never":
                self.visit_all(node.body)
            self.visit_all(node.orelse)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        """`hasattr(x, "a") and x.a`: what follows a hasattr in an `and` runs only where the attribute exists."""
        guarded = False
        for value in node.values:
            with self.guard(guarded):
                self.visit(value)
            guarded = guarded or (isinstance(node.op, ast.And) and _calls_hasattr(value))

    # -- names -----------------------------------------------------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        parent = self._parents.get(id(node))
        if chain is not None and chain[0] in self.lazy:
            pass
        elif chain is not None:
            if not (isinstance(parent, ast.Attribute) and _chain(parent)):  # the outermost node of a chain
                for part in chain:
                    self.add(part, node)
                if len(chain) > 1:
                    self.add(".".join(chain), node)
        elif _is_trt(node.value, self.shadowed):
            called = isinstance(parent, ast.Call) and parent.func is node
            if not (called and self.resolve(parent)):  # profile.fill_defaults(...) is Polygraphy's
                self.add(node.attr, node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("getattr", "hasattr", "try_getattr") and len(node.args) >= 2 and _is_trt(node.args[0], self.shadowed):
            attr = _const_str(node.args[1])
            if attr is not None:
                self.add(attr, node, optional=True)
                prefix = _chain(node.args[0])
                if prefix:
                    self.add(".".join([*prefix, attr]), node, optional=True)
        if name in self.helpers and isinstance(func, ast.Name):
            chain, index = self.helpers[name]
            flag = _const_str(node.args[index]) if len(node.args) > index else None
            if flag is not None:
                self.add(flag, node)
                self.add(".".join([*chain, flag]), node)
        for target in self.resolve(node):
            self.calls.append((target, self.optional))
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "G_LOGGER":
            self.visit(func)  # a lambda given to the logger runs only at verbose levels: not read
            self.visit_all([a for a in node.args if not isinstance(a, ast.Lambda)])
            self.visit_all([k.value for k in node.keywords if not isinstance(k.value, ast.Lambda)])
            return
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if any(_chain(b) for b in node.bases):  # methods of a TensorRT subclass are TensorRT's callbacks
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_") \
                        and item.name not in self.own_methods:
                    self.add(item.name, item)
        self.generic_visit(node)


def used_names(source: str, label: str = "<source>") -> Used:
    """The TensorRT names a Python source (our backend) uses anywhere in it (see the module docstring)."""
    used = Used()
    _Walker(used, label).run(ast.parse(source))
    return used


# -- Polygraphy's code on the path ------------------------------------------------------------------------
def _snake(name: str) -> str:
    """Polygraphy's funcified loader name: CreateNetwork -> create_network."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class PolygraphyIndex:
    """Functions, classes and imports of Polygraphy's modules, for following calls."""

    root: Path
    trees: dict[str, ast.Module] = field(default_factory=dict)
    functions: dict[tuple[str, str], ast.FunctionDef] = field(default_factory=dict)  # (module, "Class.f" | "f")
    bases: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)  # class -> its base classes
    names: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # module -> {name: (module, symbol)}
    methods: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # method name -> where defined
    called: set[str] = field(default_factory=set)  # method names Polygraphy calls on objects (x.m(...))
    imported: dict[str, set[str]] = field(default_factory=dict)  # module -> names its imports bind
    lazy: set[str] = field(default_factory=set)  # methods of Polygraphy's LazyModule (what lazy_import_trt returns)

    @classmethod
    def load(cls, root: Path, modules: tuple[str, ...]) -> "PolygraphyIndex":
        index = cls(root)
        for module in modules:
            tree = ast.parse((root / module).read_text())
            index.trees[module] = tree
            local = index.names.setdefault(module, {})
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    index.functions[(module, node.name)] = node
                    local[node.name] = (module, node.name)
                elif isinstance(node, ast.ClassDef):
                    local[node.name] = (module, node.name)
                    if any("funcify=True" in ast.unparse(d) for d in node.decorator_list):
                        local[_snake(node.name)] = (module, node.name + "()")
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef):
                            index.functions[(module, f"{node.name}.{item.name}")] = item
                            index.methods.setdefault(item.name, []).append((module, node.name))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    index.called.add(node.func.attr)
            index.imported[module] = {(a.asname or a.name).split(".")[0] for n in tree.body
                                      if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        importer = root / "mod" / "importer.py"
        for node in ast.walk(ast.parse(importer.read_text()) if importer.is_file() else ast.Module([], [])):
            if isinstance(node, ast.ClassDef) and node.name == "LazyModule":
                index.lazy = {f.name for f in node.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")}
        for module, tree in index.trees.items():
            index._imports(module, tree)
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    index.bases[(module, node.name)] = [b for b in (index.lookup(module, ast.unparse(x)) for x in node.bases) if b]
        return index

    def _imports(self, module: str, tree: ast.Module) -> None:
        """`from polygraphy.backend.trt import util as trt_util` and `from polygraphy.x.y import Name`."""
        local = self.names[module]
        for node in tree.body:
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("polygraphy")):
                continue
            base = node.module.removeprefix("polygraphy").strip(".").replace(".", "/")
            for alias in node.names:
                as_module = f"{base}/{alias.name}.py"
                if as_module in self.trees:
                    local[alias.asname or alias.name] = (as_module, "")
                elif f"{base}.py" in self.trees and alias.name in self.names.get(f"{base}.py", {}):
                    local[alias.asname or alias.name] = self.names[f"{base}.py"][alias.name]

    def lookup(self, module: str, name: str) -> tuple[str, str] | None:
        """A class (or module alias) called `name` in `module`'s namespace."""
        found = self.names.get(module, {}).get(name)
        return found if found and not found[1].endswith("()") else None

    def method(self, cls: tuple[str, str], name: str) -> list[tuple[str, str]]:
        """`name` on class `cls` or, if it does not define it, the first base class that does."""
        if (cls[0], f"{cls[1]}.{name}") in self.functions:
            return [(cls[0], f"{cls[1]}.{name}")]
        for base in self.bases.get(cls, []):
            found = self.method(base, name)
            if found:
                return found
        return []

    def targets(self, module: str, symbol: tuple[str, str]) -> list[tuple[str, str]]:
        """What calling `symbol` runs: a function, a class's __init__, a funcified loader's __init__ + call_impl."""
        where, name = symbol
        if name.endswith("()"):
            cls = (where, name[:-2])
            return self.method(cls, "__init__") + self.method(cls, "call_impl")
        if (where, name) in self.functions:
            return [(where, name)]
        return self.method((where, name), "__init__") if (where, name) in self.bases else []

    def resolver(self, module: str, cls: str | None, shadowed: frozenset[str]):
        """A function Call node -> the Polygraphy functions it runs, seen from `module` (inside class `cls`)."""

        def resolve(call: ast.Call) -> list[tuple[str, str]]:
            func = call.func
            if isinstance(func, ast.Name):
                symbol = self.names.get(module, {}).get(func.id)
                return self.targets(module, symbol) if symbol else []
            if not isinstance(func, ast.Attribute):
                return []
            value = func.value
            if isinstance(value, ast.Name) and value.id == "self" and cls:
                return self.method((module, cls), func.attr)
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super" and cls:
                return [t for b in self.bases.get((module, cls), []) for t in self.method(b, func.attr)]
            if isinstance(value, ast.Name):
                alias = self.names.get(module, {}).get(value.id)
                if alias and alias[1] == "":  # trt_util.f(...)
                    symbol = self.names.get(alias[0], {}).get(func.attr)
                    return self.targets(alias[0], symbol) if symbol else []
            owners = self.methods.get(func.attr, [])  # profile.fill_defaults(...): a method only Polygraphy defines
            if len(owners) == 1 and not func.attr.startswith("__") and not _is_trt(value, shadowed):
                return self.method(owners[0], func.attr)
            return []

        return resolve


def polygraphy_root() -> Path:
    spec = importlib.util.find_spec("polygraphy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("polygraphy is not installed (pip install polygraphy, or enginesmith's build extra)")
    return Path(list(spec.submodule_search_locations)[0])


def polygraphy_names(root: Path | None = None, entries: dict[str, tuple[str, ...]] | None = None,
                     modules: tuple[str, ...] = POLYGRAPHY_MODULES) -> tuple[Used, list[str]]:
    """(TensorRT names used by the Polygraphy code on our path, the functions read: "module:qualname")."""
    root = root or polygraphy_root()
    entries = entries or POLYGRAPHY_ENTRIES
    index = PolygraphyIndex.load(root, tuple(sorted({*entries, *modules})))
    used = Used()
    queue = [((module, name), False) for module, names in entries.items() for name in names]
    seen: dict[tuple[str, str], bool] = {}  # function -> read as optional only
    while queue:
        target, optional = queue.pop(0)
        if target in seen and (seen[target] is False or optional):
            continue
        if target not in index.functions:
            raise KeyError(f"polygraphy/{target[0]} has no {target[1]}: update POLYGRAPHY_ENTRIES")
        seen[target] = optional
        module, qualname = target
        cls = qualname.split(".")[0] if "." in qualname else None
        node = index.functions[target]
        shadowed = frozenset(index.imported[module] - _local_names(node))
        walker = _Walker(used, f"polygraphy/{module}", optional, index.resolver(module, cls, shadowed),
                         frozenset(index.called), shadowed, frozenset(index.lazy)).run(node)
        queue += walker.calls
    return used, sorted(f"{m}:{q}" for m, q in seen)
