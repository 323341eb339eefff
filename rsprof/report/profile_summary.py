"""The header facts of a profile: who was recorded, when, and what was lost."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from rsprof.recording.process import identity_alive

COUNTER_KEYS = (
    "samples", "lost_records", "truncated_stacks", "unresolved_addresses",
    "malformed_records", "throttle_events", "other_process_samples", "broken_stacks",
    "scanned_stacks", "cfi_stacks", "heap_allocs", "heap_frees", "heap_unknown_frees",
    "heap_dropped", "heap_malformed", "heap_unknown_stacks", "heap_replaced_live",
    "heap_raw_stacks", "heap_truncated_stacks", "heap_waits",
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
    # Never silently partial: why the heap data is incomplete, "" when it is complete
    # (or still being recorded), and from when on, in seconds from the profile's start
    # (as `elapsed_s` and --since). See partial_text, cut_short_text.
    heap_partial: str = ""
    heap_partial_from_s: float | None = None
    unwind: str = ""  # "auto", "dwarf" or "fp"; "" in profiles from before --unwind (fp)
    stack_bytes: int = 0

    def unwind_text(self) -> str:
        """How CPU stacks were walked, as the summaries say it."""
        if self.unwind in ("auto", "dwarf"):
            how = ("CFI, frame pointers where a module has none" if self.unwind == "auto"
                   else "CFI only")
            return f"{self.unwind} unwinding ({how}; {self.stack_bytes:,} bytes of stack)"
        return "frame-pointer unwinding"

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid, "process": self.process_name, "cmdline": self.cmdline,
            "start_time": self.start_time, "end_time": self.end_time,
            "duration_s": round(self.duration_s, 3), "cpu_freq": self.cpu_freq,
            "cpu_source": self.cpu_source, "end_reason": self.end_reason,
            "heap_not_seen": self.heap_not_seen, "heap_partial": self.heap_partial,
            "heap_partial_from_s": self.heap_partial_from_s,
            "unwind": self.unwind or "fp", "stack_bytes": self.stack_bytes, **self.counters,
        }


def partial_text(from_s: float | None, after_records: int | None, dropped: int,
                 stopped: bool = False) -> str:
    """What every view says of a profile whose shim dropped records: how many (the shim's
    count), and when the first was: after `from_s` (the last moment rsprof found none)
    and `after_records` records decoded by then. `stopped`: the shim gave up recording
    (it took its reader for gone), so nothing after that was written or counted."""
    first = []
    if from_s is not None:
        first.append(f"{from_s:.1f}s")
    if after_records is not None:
        first.append(f"{after_records:,} complete records")
    moment = " and ".join(first)
    if stopped:
        return (f"partial heap profile: the shim stopped recording"
                f"{f' after {moment}' if moment else ''} ({dropped:,} records dropped before "
                "it stopped counting); nothing the program did from then on is in the profile")
    when = f", the first after {moment}" if moment else ""
    return (f"partial heap profile: {dropped:,} records the shim could not write were "
            f"dropped{when}; heap totals and live bytes from then on are incomplete")


def cut_short_text(at_s: float) -> str:
    """What every view says of a recording whose rsprof died before finishing it."""
    return (f"partial heap profile: rsprof stopped at {at_s:.1f}s without finishing the "
            "recording (killed or crashed); the program's allocations and frees after that "
            "are missing")


def _recorder_gone(meta: dict[str, str], now: float) -> bool:
    """A recording still marked in progress whose rsprof no longer runs."""
    if meta.get("end_reason", "") not in ("", "recording"):
        return False
    identity = meta.get("recorder_process", "")
    if identity:
        return not identity_alive(identity)
    # Written by an rsprof that did not record its identity: a commit is due every
    # interval, so one that has not come for a long while will not come.
    updated = _float(meta.get("updated_time")) or _float(meta.get("start_time")) or 0.0
    return now - updated > max(10.0, 5 * (_float(meta.get("interval_s")) or 1.0))


def _heap_partial(meta: dict[str, str], counters: dict[str, int],
                  start: float) -> tuple[str, float | None]:
    if not meta.get("heap_source"):
        return "", None
    texts: list[str] = []
    from_s: float | None = None
    dropped = counters.get("heap_dropped", 0)
    if dropped or meta.get("heap_shim_stopped") == "1":
        from_s = _float(meta.get("heap_partial_from_s"))
        after = meta.get("heap_partial_after_records", "")
        texts.append(partial_text(from_s, int(after) if after.isdigit() else None, dropped,
                                  meta.get("heap_shim_stopped") == "1"))
    if _recorder_gone(meta, time.time()):
        at = round(max(0.0, (_float(meta.get("updated_time")) or start) - start), 3)
        texts.append(cut_short_text(at))
        from_s = at if from_s is None else min(from_s, at)
    return "; ".join(texts), from_s


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
    heap_partial, heap_partial_from_s = _heap_partial(meta, counters, start)
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
        heap_partial=heap_partial,
        heap_partial_from_s=heap_partial_from_s,
        unwind=meta.get("unwind", ""),
        stack_bytes=int(meta.get("stack_bytes") or 0) if (meta.get("stack_bytes") or
                                                         "0").isdigit() else 0,
    )


def format_location(file: str | None, line: int | None) -> str:
    """file:line as reports show it ("" without a file, the file alone without a line)."""
    if not file:
        return ""
    return f"{file}:{line}" if line else file
