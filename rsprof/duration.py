"""Parse human durations: 10s, 1.5m, 500ms, 2h, or a bare number of seconds."""

from __future__ import annotations

import re

from rsprof.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?\s*$")


def parse_duration(text: str, what: str = "duration", allow_zero: bool = False) -> float:
    """Seconds in `text`; raises UsageError for anything else or for a non-positive value
    (zero allowed with `allow_zero`: a point in time, not a length)."""
    match = _PATTERN.match(text)
    if not match:
        raise UsageError(f"bad {what} {text!r}: use e.g. 10s, 500ms, 2m, 1h")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise UsageError(f"bad {what} {text!r}: must be greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form: 950ms, 12.3s, 4m05s, 1h02m."""
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f}ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    seconds = round(seconds)
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
