#!/usr/bin/env bash
# Create .venv beside this repo and install enginesmith with its CPU toolchain.
# torch/torchvision are pinned and installed first so nothing pulls a different build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 2> >(grep -v "is ignored" >&2)
.venv/bin/python -m pip install -q -e ".[cpu,dev]" 2> >(grep -v "is ignored" >&2)
echo "enginesmith installed in $(pwd)/.venv" >&2
