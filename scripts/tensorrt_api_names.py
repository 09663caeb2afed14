"""Check that every TensorRT name enginesmith's backend uses exists in the TensorRT 10.x and 11.x bindings.

The bindings wheel (tensorrt-cu12-bindings, about 1.3 MB) cannot be imported without TensorRT's native
libraries, but its extension module carries every class, enum, method and attribute name of the API as a
string. This script downloads the wheels (`pip download --no-deps`), reads those names, and compares them
with the names the backend's source uses, found with `ast` (so the list cannot go stale):

- `trt.A.B.C` chains (classes, enums, enum values, module functions);
- attributes read or called on the backend's TensorRT objects (variables named in TRT_OBJECTS, e.g.
  `builder.create_network`, `self._context.execute_async_v3`);
- `getattr(trt.X, "Y")` / `hasattr(trt.X, "Y")`: version-guarded ("optional") names, which must exist in
  at least one checked version (otherwise the guard is dead code).

Every other name must exist in every checked version. Usage:
    python scripts/tensorrt_api_names.py [--dest DIR] [--spec 'tensorrt-cu12-bindings==10.*' ...]
Exit status 1 lists what is missing where; 2 means the wheels could not be fetched.

How names are read: the linker merges a string into the tail of a longer one ("INT8" is stored as the
end of "UINT8", "Builder" as the end of "IBuilder"), so a name counts as present when it is a whole
identifier string or the tail of one. Names are checked one component at a time (`BuilderFlag` and
`FP16`), not as pairs: a name that moved from one class to another with the same spelling is not caught.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "enginesmith" / "backends" / "tensorrt.py"
DEFAULT_SPECS = (
    "tensorrt-cu12-bindings==10.0.1",  # the oldest TensorRT 10 the backend supports
    "tensorrt-cu12-bindings==10.*",  # the newest 10.x
    "tensorrt-cu12-bindings==11.*",  # the newest 11.x
)
# The same wheel on every machine (whatever its Python or CPU): the names do not depend on the wheel's tags.
WHEEL_TAGS = ("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
              "--platform", "manylinux_2_17_x86_64")
# Variables (and self.<name> attributes) that hold TensorRT objects in the backend: attributes read on
# them are TensorRT API names. Keep in step with enginesmith/backends/tensorrt.py.
TRT_OBJECTS = frozenset({
    "builder", "network", "parser", "config", "profile", "engine", "context", "creator", "plugin", "layer",
    "shuffle", "concat", "flat", "tensor", "timing_cache", "detections", "num", "_engine", "_context",
    "_runtime",
})
_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_STRING = re.compile(rb"[\x20-\x7e]{2,}")


# -- names in a bindings wheel ----------------------------------------------------------------------------
def names_in_extension(data: bytes) -> set[str]:
    """Identifier names stored as strings in a compiled extension: whole identifier strings and their tails."""
    names: set[str] = set()
    for chunk in data.split(b"\0"):
        for m in _STRING.finditer(chunk):
            s = m.group(0)
            if _IDENT.fullmatch(s) and m.end() == len(chunk):  # a whole identifier string up to its NUL
                text = s.decode()
                names.update(text[i:] for i in range(len(text)) if not text[i].isdigit())
    return names


def names_in_python(source: str) -> set[str]:
    """Names a wheel's Python files define (functions, classes, assignments, e.g. nptype, __version__)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    out.add(t.id)
                elif isinstance(t, ast.Attribute):
                    out.add(t.attr)
    return out


@dataclass
class Bindings:
    """The names of one bindings wheel."""

    wheel: str
    version: str
    names: set[str]


def read_wheel(path: Path) -> Bindings:
    """Names from a tensorrt*-bindings wheel: its extension module(s) plus its top-level Python."""
    names: set[str] = set()
    version = "?"
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            n = info.filename
            if n.endswith(".so") or n.endswith(".pyd"):
                names |= names_in_extension(z.read(info))
            elif n.endswith("__init__.py") and n.count("/") == 1:
                text = z.read(info).decode(errors="replace")
                names |= names_in_python(text)
                m = re.search(r'__version__\s*=\s*"([^"]+)"', text)
                version = m.group(1) if m else version
    if not names:
        raise ValueError(f"{path.name} holds no extension module; is it a TensorRT bindings wheel?")
    return Bindings(path.name, version, names)


def fetch_wheels(specs: tuple[str, ...], dest: Path, python: str = sys.executable) -> list[Path]:
    """`pip download --no-deps` each requirement into dest (reused when already there); one wheel per spec."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    for spec in specs:
        before = set(dest.glob("*.whl"))
        r = subprocess.run([python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_TAGS,
                            "-d", str(dest), spec],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"pip download {spec} failed: {tail[0]}")
        m = re.search(r"(?:Saved|File was already downloaded)\s+(\S+\.whl)", r.stdout)
        new = sorted(set(dest.glob("*.whl")) - before)
        if m:
            wheels.append(Path(m.group(1)))
        elif new:
            wheels.append(new[0])
        else:
            raise RuntimeError(f"pip download {spec} reported no wheel")
    return wheels


# -- names the backend uses -------------------------------------------------------------------------------
@dataclass
class Used:
    """TensorRT names used by a source file: name -> first line it appears on."""

    required: dict[str, int] = field(default_factory=dict)
    optional: dict[str, int] = field(default_factory=dict)

    def add(self, which: dict[str, int], name: str, line: int) -> None:
        which.setdefault(name, line)


def _chain(node: ast.AST) -> list[str] | None:
    """`trt.A.B` -> ["A", "B"]; None for anything not rooted at the name `trt`."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt" and parts:
        return parts[::-1]
    return None


def _object_name(node: ast.AST) -> str | None:
    """`builder` or `self._engine` -> the name, when it is one of TRT_OBJECTS."""
    if isinstance(node, ast.Name) and node.id in TRT_OBJECTS:
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
            and node.attr in TRT_OBJECTS:
        return node.attr
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):  # network.get_input(i).shape
        if _chain(node.func) is not None:  # trt.get_plugin_registry().get_creator
            return node.func.attr
        return _object_name(node.func.value)
    return None


def used_names(source: str) -> Used:
    """The TensorRT names `source` uses (see the module docstring for what counts)."""
    used = Used()
    tree = ast.parse(source)
    guarded: set[int] = set()  # ids of trt.X nodes inside getattr/hasattr(trt.X, "Y")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            chain = _chain(node.args[0])
            if chain is not None:
                for part in chain:
                    used.add(used.required, part, node.lineno)
                used.add(used.optional, f"{'.'.join(chain)}.{node.args[1].value}", node.lineno)
                guarded.add(id(node.args[0]))
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        parent = parents.get(id(node))
        if isinstance(parent, ast.Attribute):
            continue  # only the outermost node of a chain
        chain = _chain(node)
        if chain is not None:
            for part in chain:
                used.add(used.required, part, node.lineno)
            if len(chain) > 1:
                used.add(used.required, ".".join(chain), node.lineno)
            continue
        obj = _object_name(node.value)
        if obj is not None:
            used.add(used.required, node.attr, node.lineno)
    # base classes subclassed from trt (class X(trt.IOutputAllocator)) are chains too, handled above;
    # methods a subclass overrides are TensorRT callbacks: their names must exist as well
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_chain(b) for b in node.bases):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                    used.add(used.required, item.name, item.lineno)
    return used


# -- the check --------------------------------------------------------------------------------------------
def problems(used: Used, bindings: list[Bindings]) -> list[str]:
    """What is missing: a required name absent from any version, an optional name absent from all."""
    out: list[str] = []
    for name, line in sorted(used.required.items()):
        for part in name.split("."):
            missing = [b.version for b in bindings if part not in b.names]
            if missing:
                out.append(f"line {line}: trt name {name!r} ({part}) is missing from TensorRT {', '.join(missing)}")
                break
    for name, line in sorted(used.optional.items()):
        last = name.split(".")[-1]
        if not any(last in b.names for b in bindings):
            out.append(f"line {line}: guarded trt name {name!r} exists in none of TensorRT "
                       f"{', '.join(b.version for b in bindings)} (dead code)")
    return sorted(set(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=Path(tempfile.gettempdir()) / "enginesmith-tensorrt-bindings",
                    help="where wheels are downloaded (reused)")
    ap.add_argument("--spec", action="append", help="pip requirement of a bindings wheel (repeatable)")
    ap.add_argument("--source", type=Path, default=BACKEND, help="the Python file whose TensorRT names are checked")
    args = ap.parse_args(argv)
    try:
        wheels = fetch_wheels(tuple(args.spec or DEFAULT_SPECS), args.dest)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"cannot fetch the TensorRT bindings wheels: {e}", file=sys.stderr)
        return 2
    bindings = [read_wheel(w) for w in wheels]
    used = used_names(args.source.read_text())
    found = problems(used, bindings)
    versions = ", ".join(b.version for b in bindings)
    if found:
        print(f"{len(found)} TensorRT API problem(s) in {args.source} against TensorRT {versions}:")
        for p in found:
            print("  " + p)
        return 1
    print(f"all {len(used.required)} TensorRT names used by {args.source.name} exist in TensorRT {versions}; "
          f"{len(used.optional)} version-guarded name(s) exist in at least one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
