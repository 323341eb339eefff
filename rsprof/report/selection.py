"""Which part of a profile a report or export covers: a time window and threads.

Times are seconds from the start of the profile's first recording (the
`elapsed_s` of the views); an interval belongs to the window when it starts
in [since, until). Threads are names (`comm`) or tids. Heap records carry no
thread, so a thread filter on heap data is a usage error.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from rsprof.duration import parse_duration
from rsprof.errors import UsageError
from rsprof.storage.schema import has_column


@dataclass(frozen=True, slots=True)
class Selection:
    since_s: float | None = None
    until_s: float | None = None
    threads: tuple[str, ...] = ()

    @property
    def windowed(self) -> bool:
        return self.since_s is not None or self.until_s is not None

    @property
    def everything(self) -> bool:
        return not self.windowed and not self.threads

    def describe(self) -> str:
        parts = []
        if self.windowed:
            lo = f"{self.since_s:g}s" if self.since_s is not None else "start"
            hi = f"{self.until_s:g}s" if self.until_s is not None else "end"
            parts.append(f"{lo}..{hi}")
        if self.threads:
            parts.append("threads " + ",".join(self.threads))
        return "; ".join(parts)


def parse_selection(since: str | None, until: str | None,
                    threads: tuple[str, ...] = ()) -> Selection:
    since_s = parse_duration(since, "--since", allow_zero=True) if since is not None else None
    until_s = parse_duration(until, "--until", allow_zero=True) if until is not None else None
    if since_s is not None and until_s is not None and until_s <= since_s:
        raise UsageError("--until must be later than --since")
    return Selection(since_s, until_s, tuple(threads))


# Seconds from the profile's first recording start to the start of interval c.interval
# of recording r (as in the views).
_ELAPSED = ("(r.start_time - (SELECT MIN(start_time) FROM recordings)"
            " + c.interval * r.interval_s)")


def _thread_filter(conn: sqlite3.Connection, sel: Selection) -> tuple[str, list[object]]:
    """SQL condition on c.recording_id/c.tid for the selected threads; checks they exist."""
    if not sel.threads:
        return "", []
    names: list[str] = []
    tids: list[int] = []
    known = conn.execute("SELECT tid, name FROM threads").fetchall()
    known_names = {name for _, name in known}
    known_tids = {tid for tid, _ in known} | {
        tid for (tid,) in conn.execute("SELECT DISTINCT tid FROM cpu_counts")}
    for t in sel.threads:
        if t.isdigit() and int(t) in known_tids:
            tids.append(int(t))
        elif t in known_names:
            names.append(t)
        else:
            raise UsageError(f"--thread {t}: no thread with that name or id in the profile "
                             "(see: rsprof query FILE \"SELECT * FROM threads\")")
    conds = []
    params: list[object] = []
    if names:
        conds.append("EXISTS (SELECT 1 FROM threads t WHERE t.recording_id = c.recording_id"
                     f" AND t.tid = c.tid AND t.name IN ({','.join('?' * len(names))}))")
        params += names
    if tids:
        conds.append(f"c.tid IN ({','.join('?' * len(tids))})")
        params += tids
    return "(" + " OR ".join(conds) + ")", params


def cpu_ns_sql(conn: sqlite3.Connection) -> tuple[str, str]:
    """SQL of the nanoseconds of CPU a cpu_counts row (c, of recording r) stands for,
    and of whether that is an estimate: rows recorded before rsprof stored each
    sample's period (cpu_counts.ns NULL, or no such column) count 1e9 / cpu_freq ns
    per sample, which is wrong wherever the sampling rate was not what was asked for
    (the self-sampler's CPU-time timers fire at most at the kernel tick)."""
    estimate = "c.samples * CAST(ROUND(1e9 / MAX(r.cpu_freq, 1)) AS INTEGER)"
    if not has_column(conn, "cpu_counts", "ns"):
        return estimate, "1"
    return f"COALESCE(c.ns, {estimate})", "c.ns IS NULL"


def selected_cpu_counts(conn: sqlite3.Connection, sel: Selection) -> tuple[str, list[object]]:
    """A query of the selected cpu_counts rows: (recording_id, interval, tid, stack_id,
    samples, ns, estimated): ns the nanoseconds of CPU they stand for, estimated 1
    when that was computed from the sampling frequency (see cpu_ns_sql)."""
    conds: list[str] = []
    params: list[object] = []
    if sel.since_s is not None:
        conds.append(f"{_ELAPSED} >= ?")
        params.append(sel.since_s)
    if sel.until_s is not None:
        conds.append(f"{_ELAPSED} < ?")
        params.append(sel.until_s)
    cond, tparams = _thread_filter(conn, sel)
    if cond:
        conds.append(cond)
        params += tparams
    where = (" WHERE " + " AND ".join(conds)) if conds else ""
    ns, estimated = cpu_ns_sql(conn)
    return ("SELECT c.recording_id, c.interval, c.tid, c.stack_id, c.samples,"
            f" {ns} AS ns, {estimated} AS estimated"
            " FROM cpu_counts c JOIN recordings r ON r.id = c.recording_id" + where), params


def _window_covers_all(conn: sqlite3.Connection, sel: Selection) -> bool:
    """No heap interval starts outside the window (then the exact totals apply)."""
    lo, hi = conn.execute(
        f"SELECT MIN({_ELAPSED}), MAX({_ELAPSED}) FROM heap_counts c"
        " JOIN recordings r ON r.id = c.recording_id").fetchone()
    if lo is None:
        return True
    return ((sel.since_s is None or lo >= sel.since_s)
            and (sel.until_s is None or hi < sel.until_s))


@dataclass(slots=True)
class SiteTotals:
    allocs: int = 0
    alloc_bytes: int = 0
    frees: int = 0
    free_bytes: int = 0
    live_bytes: int = 0
    peak_live_bytes: int = 0
    live_objects: int = 0  # allocations of the site not freed (at the window's end)


def selected_heap_sites(conn: sqlite3.Connection,
                        sel: Selection) -> dict[tuple[int, int], SiteTotals]:
    """(recording_id, stack_id) -> the site's totals within the selection.

    The whole profile: heap_sites as recorded. A window: the running totals at
    the end of the window minus those before it (live bytes: at the end of the
    window; peak: the highest live bytes seen at an interval's end within it)."""
    if sel.threads:
        raise UsageError("--thread: heap records carry no thread (allocation and free are "
                         "often on different threads); use it with CPU data")
    if not sel.windowed or _window_covers_all(conn, sel):
        return {(rid, sid): SiteTotals(a, ab, f, fb, live, peak, a - f)
                for rid, sid, a, ab, f, fb, live, peak in conn.execute(
                    "SELECT recording_id, stack_id, allocs, alloc_bytes, frees, free_bytes,"
                    " live_bytes, peak_live_bytes FROM heap_sites")}
    since = sel.since_s if sel.since_s is not None else float("-inf")
    until = sel.until_s if sel.until_s is not None else float("inf")
    before: dict[tuple[int, int], tuple[int, int, int, int, int]] = {}
    at_end: dict[tuple[int, int], tuple[int, int, int, int, int]] = {}
    peak: dict[tuple[int, int], int] = {}
    rows = conn.execute(
        f"SELECT c.recording_id, c.stack_id, {_ELAPSED}, c.allocs, c.alloc_bytes, c.frees,"
        " c.free_bytes, c.live_bytes FROM heap_counts c JOIN recordings r"
        " ON r.id = c.recording_id ORDER BY c.recording_id, c.interval")
    for rid, sid, start, a, ab, f, fb, live in rows:
        key = (rid, sid)
        if start < since:
            before[key] = (a, ab, f, fb, live)
        elif start < until:
            at_end[key] = (a, ab, f, fb, live)
            peak[key] = max(peak.get(key, 0), live)
    out: dict[tuple[int, int], SiteTotals] = {}
    for key, (a, ab, f, fb, live) in at_end.items():
        a0, ab0, f0, fb0, live0 = before.get(key, (0, 0, 0, 0, 0))
        out[key] = SiteTotals(a - a0, ab - ab0, f - f0, fb - fb0, live,
                              max(peak[key], live0), a - f)
    for key, (a0, _, f0, _, live0) in before.items():  # unchanged in the window: still held
        if key not in out and live0:
            out[key] = SiteTotals(live_bytes=live0, peak_live_bytes=live0,
                                  live_objects=a0 - f0)
    return out
