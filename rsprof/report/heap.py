"""The heap report behind `rsprof top heap`: live and allocated bytes per call site."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from rsprof.report.profile_summary import ProfileSummary, format_location, read_summary


@dataclass(frozen=True, slots=True)
class HeapRow:
    function: str
    module: str
    file: str | None
    line: int | None
    live_bytes: int
    peak_live_bytes: int
    alloc_bytes: int
    free_bytes: int
    allocs: int
    frees: int
    sites: int

    @property
    def location(self) -> str:
        return format_location(self.file, self.line)


@dataclass(slots=True)
class HeapReport:
    summary: ProfileSummary
    live_bytes: int = 0
    alloc_bytes: int = 0
    allocs: int = 0
    frees: int = 0
    rows: list[HeapRow] = field(default_factory=list)


def build_heap_report(conn: sqlite3.Connection, include_internal: bool = False) -> HeapReport:
    """Sites grouped by the frame they are charged to (function and file:line)."""
    summary = read_summary(conn)
    column = "leaf_frame_id" if include_internal else "user_frame_id"
    rows = conn.execute(
        f"SELECT f.function, m.path, f.file, f.line, SUM(h.live_bytes),"
        f" SUM(h.peak_live_bytes), SUM(h.alloc_bytes), SUM(h.free_bytes), SUM(h.allocs),"
        f" SUM(h.frees), COUNT(*)"
        f" FROM heap_sites h JOIN stacks s ON s.id = h.stack_id"
        f" JOIN frames f ON f.id = s.{column} JOIN modules m ON m.id = f.module_id"
        f" GROUP BY f.id ORDER BY 5 DESC, 7 DESC, 1"
    ).fetchall()
    report = HeapReport(summary=summary)
    for function, module, file, line, live, peak, ab, fb, a, f, n in rows:
        report.rows.append(HeapRow(function, module, file, line, live, peak, ab, fb, a, f, n))
        report.live_bytes += live
        report.alloc_bytes += ab
        report.allocs += a
        report.frees += f
    return report


def human_bytes(n: int) -> str:
    """1023 B, 1.5 KB, 12.0 MB, 3.2 GB (powers of 1024)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
