"""Every code block in README.md runs as written after the README's two commands (issue 17).

The conventions (tests/README.md, "README blocks"):
- every fence has a language: `bash` and `python` blocks are run, `text` blocks are synopses (not run);
- a block whose first line is `# needs: WHAT` needs what the README's commands cannot make (your data, a GPU):
  skipped, with WHAT as the reason;
- an HTML comment on the line before a fence marks it (unmarked blocks are fast and run in CI):
  `<!-- readme-test: slow -->` runs with `-m slow`; `<!-- readme-test: engine -->` uses the main build's engine
  (`build/yolov3/openvino-int8`): CI runs it on a small stand-in engine at that path, `-m slow` on the real one;
  `<!-- readme-test: long -->` takes hours (run with ENGINESMITH_README_LONG=1); `<!-- readme-test: skip: WHY -->`.

Blocks run in README order in one workspace, a copy of this checkout with its `.venv` linked in and the venv's
bin first on PATH (bash blocks through bash -e, python blocks through the venv's python), so a block may use
what an earlier one made. `bash scripts/setup.sh && ` at the start of a line is what made this test's own
environment: it is not rerun (it would reinstall the venv from the copy)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAIN_ENGINE = "build/yolov3/openvino-int8"
MARKS = ("slow", "engine", "long")
RUNNABLE = ("bash", "python")
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "mutants", "__pycache__", "*.egg-info",
                                     ".pytest_cache", "app-env")
SETUP = "bash scripts/setup.sh && "


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marks: tuple[str, ...]
    skip: str | None  # why it is not run ("needs: ..." or a skip marker's reason)
    heading: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}-{re.sub(r'[^a-z0-9]+', '-', self.heading.lower()).strip('-')[:40]}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a README, with the marker comment before each and the heading above it."""
    lines = text.splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.startswith("```"):
            start, lang = i, line[3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            code = "\n".join(lines[i + 1:end]) + "\n"
            marks: list[str] = []
            skip = None
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            found = re.fullmatch(r"<!-- readme-test: (.+?) -->", prev.strip())
            if found:
                value = found.group(1)
                if value.startswith("skip:"):
                    skip = value[len("skip:"):].strip()
                else:
                    marks = [m.strip() for m in value.split(",")]
            first = code.lstrip().splitlines()[0] if code.strip() else ""
            if first.startswith("# needs:"):
                skip = first
            blocks.append(Block(start + 1, lang, code, tuple(marks), skip, heading))
            i = end
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _workspace(root: Path) -> Path:
    """A copy of this checkout (no build outputs) with the venv linked in."""
    ws = root / "checkout"
    shutil.copytree(REPO, ws, ignore=COPY_IGNORE, symlinks=True)
    (ws / ".venv").symlink_to(Path(sys.prefix))
    return ws


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINESMITH_CACHE", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = sys.prefix
    return env


def run_block(block: Block, cwd: Path, timeout: float) -> float:
    """Run one block in cwd as the README gives it; its seconds. Fails with the block's output."""
    t0 = time.perf_counter()
    if block.lang == "python":
        cmd = [sys.executable, "-c", block.code]
    else:
        code = "\n".join(ln[len(SETUP):] if ln.startswith(SETUP) else ln for ln in block.code.splitlines())
        cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, (f"README.md line {block.line} ({block.lang}) exited {proc.returncode}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    print(f"README.md line {block.line} ({block.heading}): {seconds:.1f} s")
    return seconds


# ------------------------------------------------------------------------------------------- fast, in CI
def test_every_block_is_classified():
    """Every fence names its language; every marker is known; the blocks not run are few and say why."""
    assert len(BLOCKS) >= 10
    for b in BLOCKS:
        assert b.lang in (*RUNNABLE, "text"), f"README.md line {b.line}: fence language {b.lang!r}; use bash, python or text"
        assert set(b.marks) <= set(MARKS), f"README.md line {b.line}: unknown readme-test marker {b.marks}"
        if b.skip is not None:
            assert b.lang in RUNNABLE and len(b.skip) > len("# needs: ") and not b.marks, b
    not_run = [b for b in BLOCKS if b.skip is not None]
    print("\n".join(f"not run: README.md line {b.line}: {b.skip}" for b in not_run))
    assert len(not_run) <= 6, [b.skip for b in not_run]


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUNNABLE], ids=lambda b: b.id)
def test_block_syntax(block, tmp_path):
    """Each block parses as the language it claims (the fast guard for the ones only run by hand)."""
    if block.lang == "python":
        compile(block.code, f"README.md:{block.line}", "exec")
    else:
        script = tmp_path / "block.sh"
        script.write_text(block.code)
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"README.md line {block.line}: {proc.stderr}"


def test_blocks_use_the_engine_the_main_command_builds():
    """The engine paths in runnable blocks are ones the README's commands make."""
    built = {MAIN_ENGINE, "build/rcnn-vgg16-slim/openvino-int8", "build/fast-rcnn-vgg16-slim/openvino-int8"}
    for b in BLOCKS:
        if b.lang in RUNNABLE and b.skip is None:
            for path in re.findall(r"build/[\w.-]+/(?:openvino|onnxruntime|tensorrt)-\w+", b.code):
                assert path in built, f"README.md line {b.line} uses {path}, which no README command builds"
    engine_blocks = [b for b in BLOCKS if "engine" in b.marks]
    assert engine_blocks and all(MAIN_ENGINE in b.code for b in engine_blocks)
    assert any(MAIN_ENGINE.split("/")[1] in b.code and "build-engine yolov3" in b.code for b in BLOCKS
               if "slow" in b.marks)


@pytest.fixture(scope="module")
def fast_workspace(tmp_path_factory, cache_dir) -> Path:
    """A workspace with a small stand-in at the main engine's path: yolov3-tiny 64x64, OpenVINO FP32, seeded."""
    from enginesmith.pipeline.run import BuildConfig, build_engine

    ws = _workspace(tmp_path_factory.mktemp("readme-fast"))
    build_engine(BuildConfig(model="yolov3-tiny", target="openvino", precision="fp32", input_size=(64, 64),
                             cache_dir=cache_dir, out=ws / MAIN_ENGINE, latency_budget_s=0.2, calib_size=4))
    return ws


def test_fast_blocks_run_as_written(fast_workspace):
    """Unmarked blocks as written, then the engine-using ones on the stand-in engine, in README order."""
    ran = [b for b in BLOCKS if b.lang in RUNNABLE and b.skip is None and (not b.marks or b.marks == ("engine",))]
    assert any(b.lang == "python" for b in ran) and any(b.lang == "bash" for b in ran)
    for b in ran:
        run_block(b, fast_workspace, timeout=300)
    assert (fast_workspace / "annotated.mp4").stat().st_size > 0  # the edge app wrote its video


# ----------------------------------------------------------------------------------- by hand: -m slow
@pytest.fixture(scope="module")
def slow_workspace(tmp_path_factory) -> Path:
    return _workspace(tmp_path_factory.mktemp("readme-slow"))


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUNNABLE], ids=lambda b: b.id)
def test_readme_in_order(block, slow_workspace):
    """Every block in README order in one fresh workspace, the real main build included (~5 min cold on 2
    cores); `long` ones only with ENGINESMITH_README_LONG=1."""
    if block.skip is not None:
        pytest.skip(block.skip)
    if "long" in block.marks and os.environ.get("ENGINESMITH_README_LONG") != "1":
        pytest.skip("takes hours of CPU; set ENGINESMITH_README_LONG=1 to run it")
    run_block(block, slow_workspace, timeout=6 * 3600 if "long" in block.marks else 1800)
