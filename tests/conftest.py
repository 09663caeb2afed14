"""Shared fixtures: an isolated stage cache per test session, and the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def run_cli(tmp_path: Path, cache_dir: Path):
    """Run `python -m enginesmith.cli ARGS` (the real CLI) in tmp_path; return CompletedProcess."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ENGINESMITH_CACHE": str(cache_dir), "COLUMNS": "200"}
        return subprocess.run(
            [sys.executable, "-m", "enginesmith.cli", *args], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=timeout,
        )

    return run
