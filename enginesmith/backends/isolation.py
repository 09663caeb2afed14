"""Run a native step that can crash (a segfault in a compiler) in a child process.

OpenVINO 2026.4 segfaulted compiling some Q/DQ graphs; in-process, that kills the whole build with no
message. In a child process the crash becomes an EnginesmithError that names the stage and the signal.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from enginesmith.errors import EnginesmithError

_DEFAULT_HINT = "try another precision or target, or report it with the model file"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return "no error output"
    line = lines[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def run_isolated(
    code: str,
    args: list[str],
    stage: str,
    what: str,
    timeout_s: float,
    *,
    tool: str = "child process",
    hint: str = _DEFAULT_HINT,
) -> str:
    """Run `python -c code *args` in a child process and return its stdout.

    `what` says what the child does ("compiling model.xml for CPU"), `tool` who does it ("OpenVINO").
    A crash (killed by a signal), a non-zero exit or a timeout raises an EnginesmithError such as
    "OpenVINO crashed (signal 11, SIGSEGV) compiling model.xml for CPU in stage engine; <hint>".
    """
    cmd = [sys.executable, "-c", code, *[str(a) for a in args]]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EnginesmithError(
            f"{tool} timed out after {timeout_s:g} s {what} in stage {stage}; "
            f"raise the timeout or {hint}"
        ) from None
    rc = proc.returncode
    if rc < 0:
        raise EnginesmithError(
            f"{tool} crashed (signal {-rc}, {_signal_name(-rc)}) {what} in stage {stage}; {hint}"
        )
    if rc != 0:
        raise EnginesmithError(
            f"{tool} failed (exit code {rc}) {what} in stage {stage}: {_last_line(proc.stderr)}; {hint}"
        )
    return proc.stdout
