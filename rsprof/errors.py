"""The one error hierarchy: every expected failure maps to one line and an exit code."""

from __future__ import annotations


class RsprofError(Exception):
    """An expected runtime failure: printed as one line, exit code 1."""

    exit_code = 1


class UsageError(RsprofError):
    """The command line was wrong: exit code 2."""

    exit_code = 2


class ProcessNotFound(RsprofError):
    """No process with that pid or name."""


class PermissionDenied(RsprofError):
    """The kernel or the filesystem refused (perf_event_paranoid, ptrace, file modes)."""


class ProfileError(RsprofError):
    """A file that is not a profile, is corrupt, or is too new for this rsprof."""


class QueryError(RsprofError):
    """SQL given to `rsprof query` failed."""
