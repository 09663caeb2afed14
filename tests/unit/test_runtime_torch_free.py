"""Importing the runtime (and every module it pulls in: enginesmith/__init__, errors, backends/*) never
imports torch: checked in a child process where an import hook makes `import torch` fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCK_TORCH = (
    "import sys\n"
    "class NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
    "            raise ImportError('torch is blocked in this test: ' + name)\n"
    "sys.meta_path.insert(0, NoTorch())\n"
)


def run_without_torch(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_the_hook_really_blocks_torch():
    out = run_without_torch("import torch\n")
    assert out.returncode != 0 and "torch is blocked" in out.stderr


def test_runtime_and_what_it_imports_never_import_torch():
    out = run_without_torch(
        "import enginesmith, enginesmith.errors, enginesmith.runtime\n"
        "from enginesmith.runtime import load, Detector, Classifier, Segmenter, DetectorConfig\n"
        "import enginesmith.runtime.engine, enginesmith.runtime.images, enginesmith.runtime.manifest\n"
        "import enginesmith.runtime.nms, enginesmith.runtime.preprocess, enginesmith.runtime.draw\n"
        "import enginesmith.runtime.files, enginesmith.runtime.openvino_async, enginesmith.runtime.detect_cli\n"
        "import enginesmith.backends, enginesmith.backends.base, enginesmith.backends.isolation\n"
        "import enginesmith.backends.onnxruntime, enginesmith.backends.openvino, enginesmith.backends.tensorrt\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'onnx', 'onnxsim', 'nncf')\n"
        "               or m.startswith(('enginesmith.models', 'enginesmith.pipeline', 'enginesmith.training')))\n"
        "print('HEAVY', heavy)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


def test_importing_the_runtime_package_is_cheap():
    """`import enginesmith.runtime` alone (as models/ does for preprocess) loads no backend and no engine code."""
    out = run_without_torch(
        "import enginesmith.runtime.preprocess\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith(('enginesmith.runtime.engine', "
        "'enginesmith.backends', 'openvino', 'onnxruntime'))))\n"
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout
