"""The one exception type users see: a one-line message that says what went wrong and what to do."""

from __future__ import annotations


class EnginesmithError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with code 2.

    Raise it for bad input (wrong path, truncated weights, empty calibration folder, unsupported
    input size, unavailable target) and for a stage whose verification failed. The message is a
    single line that names the offending thing and suggests the fix.
    """

    exit_code = 2


class AccuracyBudgetError(EnginesmithError):
    """The engine was built and measured, and its task metric dropped more than `--accuracy-budget` allows
    (a plain build, or a mixed-precision search that could not get back within it)."""
