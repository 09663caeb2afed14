"""Check that every TensorRT name on enginesmith's TensorRT path exists in the TensorRT 10.x and 11.x bindings.

The path is our backend (enginesmith/backends/tensorrt*.py) and the Polygraphy code it runs; which names it
uses, and which of them only behind a version guard, is read from the source by tensorrt_api_usage.py.

The bindings wheel (tensorrt-cu12-bindings, about 1.3 MB) cannot be imported without TensorRT's native
libraries, but its extension module carries every class, enum, method and attribute name of the API as a
string. This script downloads the wheels (`pip download --no-deps`), reads those names, and compares them
with the names the path uses (found with `ast`, so the list cannot go stale). A required name must exist in
every checked version; a version-guarded (optional) name in at least one, otherwise the guard is dead code:
a problem in our code, a note in Polygraphy's (its guards for TensorRT < 10). Usage:
    python scripts/tensorrt_api_names.py [--dest DIR] [--spec 'tensorrt-cu12-bindings==10.*' ...] [--source FILE ...]
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tensorrt_api_usage import (BACKEND_FILES, ROOT, Used, polygraphy_names,  # noqa: E402  (a sibling script)
                                used_names)

DEFAULT_SPECS = (
    "tensorrt-cu12-bindings==10.0.1",  # the oldest TensorRT 10 the backend supports
    "tensorrt-cu12-bindings==10.*",  # the newest 10.x
    "tensorrt-cu12-bindings==11.*",  # the newest 11.x
)
# The same wheel on every machine (whatever its Python or CPU): the names do not depend on the wheel's tags.
WHEEL_TAGS = ("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
              "--platform", "manylinux_2_17_x86_64")
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


# -- the check --------------------------------------------------------------------------------------------
def problems(used: Used, bindings: list[Bindings], dead_code: bool = True) -> list[str]:
    """What is missing: a required name absent from any version, an optional name absent from all (a guard that
    is dead code: reported with dead_code, as for our own code; see `dead_guards`)."""
    out: list[str] = []
    for name, where in sorted(used.required.items()):
        for part in name.split("."):
            missing = [b.version for b in bindings if part not in b.names]
            if missing:
                out.append(f"{where}: trt name {name!r} ({part}) is missing from TensorRT {', '.join(missing)}")
                break
    if dead_code:
        out += dead_guards(used, bindings)
    return sorted(set(out))


def dead_guards(used: Used, bindings: list[Bindings]) -> list[str]:
    """Version-guarded names that exist in none of the checked versions: the guard's other branch always runs."""
    return sorted(f"{where}: guarded trt name {name!r} exists in none of TensorRT {', '.join(b.version for b in bindings)}"
                  " (dead code)" for name, where in used.optional.items()
                  if not any(name.split(".")[-1] in b.names for b in bindings))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=Path(tempfile.gettempdir()) / "enginesmith-tensorrt-bindings",
                    help="where wheels are downloaded (reused)")
    ap.add_argument("--spec", action="append", help="pip requirement of a bindings wheel (repeatable)")
    ap.add_argument("--source", type=Path, action="append",
                    help="a Python file whose TensorRT names are checked instead of our backend's and Polygraphy's")
    args = ap.parse_args(argv)
    try:
        wheels = fetch_wheels(tuple(args.spec or DEFAULT_SPECS), args.dest)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"cannot fetch the TensorRT bindings wheels: {e}", file=sys.stderr)
        return 2
    bindings = [read_wheel(w) for w in wheels]
    versions = ", ".join(b.version for b in bindings)
    report = []
    for source in args.source or BACKEND_FILES:
        report.append((source.name, used_names(source.read_text(), _label(source)), ""))
    if not args.source:
        import polygraphy

        used, functions = polygraphy_names()
        report.append((f"Polygraphy {polygraphy.__version__}", used, f" in {len(functions)} functions on our path"))
    status = 0
    for what, used, detail in report:
        ours = not what.startswith("Polygraphy")  # Polygraphy's guards for TensorRT < 10 are its business
        found = problems(used, bindings, dead_code=ours)
        if found:
            status = 1
            print(f"{len(found)} TensorRT API problem(s) in {what}{detail} against TensorRT {versions}:")
            for p in found:
                print("  " + p)
        else:
            print(f"{what}: all {len(used.required)} TensorRT names used{detail} exist in TensorRT {versions}; "
                  f"{len(used.optional)} version-guarded name(s)")
        for p in [] if ours else dead_guards(used, bindings):
            print("  note: " + p)
    return status


def _label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
