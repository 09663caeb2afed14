"""Shared fixtures: an isolated stage cache per test session, the CLI as a subprocess, and disk cleanup of
module-scoped temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


SESSION_PREFIX = "session-"
# measured: 4.5 GiB (du -s: 4,729,144 KiB) under the pytest temp root for `-m "not slow and not gpu"` (2026-11-24)
SUITE_PEAK_DISK_GB = 5


def _temp_disk_line() -> str:
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    note = "" if free > 2 * SUITE_PEAK_DISK_GB else f"  WARNING: below twice the suite's ~{SUITE_PEAK_DISK_GB} GB peak"
    return f"temp disk: {free:.1f} GB free in {tempfile.gettempdir()}{note}"


def pytest_report_header(config: pytest.Config) -> str:
    """Say up front how much temp disk there is, so a run that dies of ENOSPC is diagnosed from its first lines."""
    return _temp_disk_line()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under -q the header is hidden: print the temp-disk line anyway when it carries a warning."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or session.config.get_verbosity() >= 0:
        return
    line = _temp_disk_line()
    if "WARNING" in line:
        reporter.write_line(line)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(f"{SESSION_PREFIX}cache")


@pytest.fixture(scope="module", autouse=True)
def _remove_module_temp_folders(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """After a module whose tests all passed, delete the temporary folders made during it (module-scoped
    fixtures' ONNX files and engines), so the suite's disk use peaks at one module, not the sum of all.
    Session fixtures' folders (named session-*) stay; a module with a failure keeps everything."""
    base = tmp_path_factory.getbasetemp()
    before = {p.name for p in base.iterdir()}
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed != failed_before:
        return
    for p in base.iterdir():
        if p.name not in before and not p.name.startswith(SESSION_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


@pytest.fixture()
def run_cli(tmp_path: Path, cache_dir: Path):
    """Run `python -m enginesmith.cli ARGS` (the real CLI) in tmp_path; return CompletedProcess."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        # XDG_CACHE_HOME: the user cache (`enginesmith models` rows, models/catalog_cache.py) is the session's too
        env = {**os.environ, "ENGINESMITH_CACHE": str(cache_dir), "XDG_CACHE_HOME": str(cache_dir / "user-cache"),
               "COLUMNS": "200"}
        return subprocess.run(
            [sys.executable, "-m", "enginesmith.cli", *args], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=timeout,
        )

    return run
