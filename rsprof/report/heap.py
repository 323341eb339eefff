"""The heap report behind `rsprof top heap`: live and allocated bytes per call site."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from rsprof.report.profile_summary import ProfileSummary, format_location, read_summary
from rsprof.report.selection import Selection, selected_heap_sites


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


def build_heap_report(conn: sqlite3.Connection, include_internal: bool = False,
                      selection: Selection | None = None) -> HeapReport:
    """Sites grouped by the frame they are charged to (function and file:line), over
    the whole recording or a time window (selection)."""
    summary = read_summary(conn)
    column = "leaf_frame_id" if include_internal else "user_frame_id"
    charged = dict(conn.execute(f"SELECT id, {column} FROM stacks").fetchall())
    frames = {fid: (function, module, file, line) for fid, function, module, file, line in
              conn.execute("SELECT f.id, f.function, m.path, f.file, f.line FROM frames f"
                           " JOIN modules m ON m.id = f.module_id")}
    grouped: dict[int, list[int]] = {}
    for (_rid, sid), t in selected_heap_sites(conn, selection or Selection()).items():
        fid = charged.get(sid)
        if fid is None:
            continue
        g = grouped.setdefault(fid, [0] * 7)
        for i, v in enumerate((t.live_bytes, t.peak_live_bytes, t.alloc_bytes, t.free_bytes,
                               t.allocs, t.frees, 1)):
            g[i] += v
    report = HeapReport(summary=summary)
    for fid, (live, peak, ab, fb, a, f, n) in grouped.items():
        function, module, file, line = frames[fid]
        report.rows.append(HeapRow(function, module, file, line, live, peak, ab, fb, a, f, n))
        report.live_bytes += live
        report.alloc_bytes += ab
        report.allocs += a
        report.frees += f
    report.rows.sort(key=lambda r: (-r.live_bytes, -r.alloc_bytes, r.function))
    return report


def human_bytes(n: int) -> str:
    """1023 B, 1.5 KB, 12.0 MB, 3.2 GB (powers of 1024)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
