"""What every committed benchmark records about where it ran: CPU (with the ISA flags that decide
INT8/BF16 kernels), cores, OS, date, git commit and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from enginesmith.cluster.devices import cpu_description
from enginesmith.pipeline.artifacts import tool_versions


def cpu_name() -> str:
    """Model name plus the ISA flags that decide INT8/BF16 kernels (VNNI, AMX, AVX512-FP16)."""
    return cpu_description()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run_header() -> dict[str, Any]:
    """date, machine, versions and commit, for a results file."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "versions": tool_versions(),
        "commit": git_commit(),
    }
