"""The header facts of a profile: who was recorded, when, and what was lost."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

COUNTER_KEYS = (
    "samples", "lost_records", "truncated_stacks", "unresolved_addresses",
    "malformed_records", "throttle_events", "other_process_samples", "broken_stacks",
    "scanned_stacks", "heap_allocs", "heap_frees", "heap_unknown_frees", "heap_dropped",
    "heap_malformed", "heap_unknown_stacks", "heap_replaced_live", "heap_raw_stacks",
    "heap_truncated_stacks", "heap_waits",
)


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    pid: int
    process_name: str
    cmdline: str
    start_time: float
    end_time: float | None
    duration_s: float
    cpu_freq: int
    cpu_source: str
    end_reason: str
    counters: dict[str, int]
    # Why the heap shim saw none of the program's allocations (its own allocator),
    # "" when rsprof has no such doubt: rsprof/recording/own_allocator.py.
    heap_not_seen: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid, "process": self.process_name, "cmdline": self.cmdline,
            "start_time": self.start_time, "end_time": self.end_time,
            "duration_s": round(self.duration_s, 3), "cpu_freq": self.cpu_freq,
            "cpu_source": self.cpu_source, "end_reason": self.end_reason,
            "heap_not_seen": self.heap_not_seen, **self.counters,
        }


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def read_summary(conn: sqlite3.Connection) -> ProfileSummary:
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    start = _float(meta.get("start_time")) or 0.0
    end = _float(meta.get("end_time"))
    if end is None:
        end = _float(meta.get("updated_time"))
    counters = {}
    for key in COUNTER_KEYS:
        try:
            counters[key] = int(meta.get(key) or 0)
        except ValueError:
            counters[key] = 0
    return ProfileSummary(
        pid=int(meta.get("pid") or 0),
        process_name=meta.get("process_name", "?"),
        cmdline=meta.get("cmdline", ""),
        start_time=start,
        end_time=_float(meta.get("end_time")),
        duration_s=max(0.0, (end or start) - start),
        cpu_freq=int(meta.get("cpu_freq") or 0),
        cpu_source=meta.get("cpu_source", ""),
        end_reason=meta.get("end_reason", ""),
        counters=counters,
        heap_not_seen=meta.get("heap_not_seen", ""),
    )


def format_location(file: str | None, line: int | None) -> str:
    """file:line as reports show it ("" without a file, the file alone without a line)."""
    if not file:
        return ""
    return f"{file}:{line}" if line else file
