"""Builds TUI snapshots from a profile file, incrementally.

The same code serves `rsprof view` (one load of a finished file) and the
live display (the recorder commits once per interval; the loader, on its own
thread, reads what was committed since its last look through a read-only
connection: SQLite's WAL lets it read while the recorder writes).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from rsprof.attribution import RSPROF_FUNCTION
from rsprof.report.detail_notes import detail_note_short
from rsprof.report.profile_summary import ProfileSummary, format_location, read_summary
from rsprof.storage.schema import has_column
from rsprof.tui.snapshot import ENDED, RECORDING, VIEW, CpuRow, MemRow, Snapshot


@dataclass(slots=True)
class _Recording:
    id: int
    offset: int          # interval index of its interval 0 in the profile's timeline
    cpu_done: int = -1   # last interval loaded
    heap_done: int = -1
    period_ns: int = 0   # 1e9 / cpu_freq: a sample's CPU time where none was stored


class ProfileLoader:
    """Reads a profile's CPU and heap data into snapshots; call `load()` again to
    add what was committed since (cheap when nothing changed)."""

    def __init__(self, conn: sqlite3.Connection, live: bool) -> None:
        self.conn = conn
        self.live = live
        self._version = 0
        self._recordings: dict[int, _Recording] = {}
        self._first_start: float | None = None
        self._interval_s = 1.0
        self._frames: dict[int, tuple[str, str, str, str]] = {}  # id -> keys and names
        self._frame_max = 0
        self._stack_frame: dict[int, int] = {}  # stack id -> user_frame_id
        self._stack_max = 0
        # CPU: per function key (samples; shares and times by the nanoseconds of CPU
        # the samples stand for, each its own period)
        self._cpu_ns: Counter[str] = Counter()
        self._contrib_ns: dict[tuple[int, int], Counter[str]] = {}
        self._cpu_estimated = False  # some ns are samples / frequency (an older profile)
        self._has_ns: bool | None = None  # cpu_counts.ns exists (not in older files)
        self._cpu_total: Counter[str] = Counter()
        self._cpu_lines: dict[str, Counter[str]] = defaultdict(Counter)
        self._cpu_series: dict[str, dict[int, int]] = defaultdict(dict)
        # what the newest intervals of each recording added, to replace on a re-read
        self._contrib: dict[tuple[int, int], Counter[tuple[str, str]]] = {}
        self._cpu_names: dict[str, str] = {}
        self._interval_samples: Counter[int] = Counter()  # ns of CPU per interval
        self._interval_keys: dict[int, set[str]] = defaultdict(set)  # keys with samples there
        self._last_interval = -1
        # The per-row series handed to snapshots. A snapshot shares them with the UI
        # thread, so one is never changed after it is handed out: a key whose values
        # changed gets a new dict (copied, then the changed intervals set), the others
        # are shared as they are. Rebuilding every series at every commit cost a long
        # live recording time in proportion to everything recorded so far.
        self._cpu_view: dict[str, dict[int, float]] = {}
        self._mem_view: dict[str, dict[int, float]] = {}
        self._cpu_dirty: set[int] = set()   # intervals whose shares changed since then
        self._mem_dirty: set[str] = set()   # keys whose live-bytes series changed
        # heap: per stack (latest running totals) and per charged frame
        self._site: dict[int, tuple[int, int, int]] = {}  # stack -> live, alloc bytes, allocs
        self._site_key: dict[int, str] = {}
        self._mem_live: Counter[str] = Counter()
        self._mem_alloc: Counter[str] = Counter()
        self._mem_allocs: Counter[str] = Counter()
        self._mem_series: dict[str, dict[int, float]] = defaultdict(dict)
        self._mem_names: dict[str, tuple[str, str]] = {}

    # -- reading --------------------------------------------------------------

    def _refresh_recordings(self) -> None:
        rows = self.conn.execute(
            "SELECT id, start_time, interval_s, cpu_freq FROM recordings ORDER BY id").fetchall()
        for rid, start, interval_s, cpu_freq in rows:
            if rid in self._recordings:
                continue
            if self._first_start is None:
                self._first_start = float(start or 0.0)
                self._interval_s = float(interval_s or 1.0) or 1.0
            offset = round((float(start or 0.0) - self._first_start) / self._interval_s)
            self._recordings[rid] = _Recording(rid, max(0, offset),
                                               period_ns=round(1e9 / max(int(cpu_freq or 0), 1)))

    def _refresh_symbols(self) -> None:
        for fid, function, file, line, module in self.conn.execute(
                "SELECT f.id, f.function, f.file, f.line, m.path FROM frames f"
                " JOIN modules m ON m.id = f.module_id WHERE f.id > ?", (self._frame_max,)):
            # [rsprof] (rsprof's own time) has no file: its location is its module.
            location = module if function == RSPROF_FUNCTION else format_location(file, line)
            self._frames[fid] = (f"{function}\0{module}", function, location,
                                 f"{function}\0{file}\0{line}\0{module}")
            self._frame_max = max(self._frame_max, fid)
        for sid, frame_id in self.conn.execute(
                "SELECT id, user_frame_id FROM stacks WHERE id > ?", (self._stack_max,)):
            self._stack_frame[sid] = frame_id
            self._stack_max = max(self._stack_max, sid)

    def _load_cpu(self, rec: _Recording) -> None:
        # The newest intervals may still grow (samples are counted by their time, and
        # a commit can land mid-interval): read them again and replace what they gave.
        lo = max(0, rec.cpu_done - 1)
        if self._has_ns is None:
            self._has_ns = has_column(self.conn, "cpu_counts", "ns")
        # The CPU time the samples stand for; rows without it (an older rsprof): the
        # recording's rate, an estimate (as rsprof.report.selection.cpu_ns_sql).
        ns_sql = (f"SUM(COALESCE(c.ns, c.samples * {int(rec.period_ns)})), MAX(c.ns IS NULL)"
                  if self._has_ns else f"SUM(c.samples) * {int(rec.period_ns)}, 1")
        rows = self.conn.execute(
            f"SELECT c.interval, s.user_frame_id, SUM(c.samples), {ns_sql} FROM cpu_counts c"
            " JOIN stacks s ON s.id = c.stack_id"
            " WHERE c.recording_id = ? AND c.interval >= ?"
            " GROUP BY c.interval, s.user_frame_id ORDER BY c.interval",
            (rec.id, lo)).fetchall()
        if not rows:
            return
        for k in [k for k in self._contrib if k[0] == rec.id and k[1] >= lo]:
            idx = rec.offset + k[1]
            for (key, location), n in self._contrib.pop(k).items():
                self._cpu_total[key] -= n
                self._cpu_lines[key][location] -= n
            for key, ns in self._contrib_ns.pop(k).items():
                self._cpu_ns[key] -= ns
                self._cpu_series[key][idx] -= ns
                self._interval_samples[idx] -= ns
        newest = rows[-1][0]
        keep_from = newest - 1 if self.live else newest + 1  # only a live file grows
        frames, offset = self._frames, rec.offset
        totals, lines, series_of = self._cpu_total, self._cpu_lines, self._cpu_series
        per_interval = self._interval_samples
        for interval, frame_id, samples, ns, estimated in rows:
            frame = frames.get(frame_id)
            if frame is None:
                continue
            key, function, location, _ = frame
            idx = offset + interval
            self._cpu_names[key] = function
            self._cpu_estimated = self._cpu_estimated or bool(estimated)
            totals[key] += samples
            self._cpu_ns[key] += ns
            lines[key][location] += samples
            series = series_of[key]
            series[idx] = series.get(idx, 0) + ns
            per_interval[idx] += ns
            self._interval_keys[idx].add(key)
            if interval >= keep_from:
                contrib = self._contrib.get((rec.id, interval))
                if contrib is None:
                    contrib = self._contrib[(rec.id, interval)] = Counter()
                    self._contrib_ns[(rec.id, interval)] = Counter()
                contrib[(key, location)] += samples
                self._contrib_ns[(rec.id, interval)][key] += ns
        self._cpu_dirty.update(range(offset + lo, offset + newest + 1))
        rec.cpu_done = max(rec.cpu_done, newest)
        self._last_interval = max(self._last_interval, offset + newest)
        for k in [k for k in self._contrib if k[0] == rec.id and k[1] < keep_from]:
            del self._contrib[k]
            del self._contrib_ns[k]

    def _load_heap(self, rec: _Recording) -> None:
        rows = self.conn.execute(
            "SELECT interval, stack_id, live_bytes, alloc_bytes, allocs FROM heap_counts"
            " WHERE recording_id = ? AND interval >= ? ORDER BY interval",
            (rec.id, rec.heap_done)).fetchall()
        touched: set[str] = set()  # keys changed in the interval being read
        idx = -1

        def close_interval() -> None:
            """The live bytes of the keys changed in interval idx, as they stand at its
            end (rows come in interval order)."""
            for key in touched:
                self._mem_series[key][idx] = float(self._mem_live[key])
            self._mem_dirty.update(touched)
            touched.clear()
            self._last_interval = max(self._last_interval, idx)

        for interval, stack_id, live, alloc_bytes, allocs in rows:
            site = stack_id  # stack ids are unique across recordings
            key = self._site_key.get(site)
            if key is None:
                frame = self._frames.get(self._stack_frame.get(stack_id, -1))
                if frame is None:
                    continue
                key = frame[3]
                self._site_key[site] = key
                self._mem_names[key] = (frame[1], frame[2])
            if rec.offset + interval != idx:
                if touched:
                    close_interval()
                idx = rec.offset + interval
            old_live, old_alloc, old_allocs = self._site.get(site, (0, 0, 0))
            self._site[site] = (live, alloc_bytes, allocs)
            self._mem_live[key] += live - old_live
            self._mem_alloc[key] += alloc_bytes - old_alloc
            self._mem_allocs[key] += allocs - old_allocs
            touched.add(key)
            rec.heap_done = max(rec.heap_done, interval)
        if touched:
            close_interval()

    def load(self) -> Snapshot:
        """Read what is new and return the next snapshot."""
        self.conn.execute("BEGIN")
        try:
            summary = read_summary(self.conn)
            self._refresh_recordings()
            self._refresh_symbols()
            for rec in self._recordings.values():
                self._load_cpu(rec)
                self._load_heap(rec)
            has_heap = self.conn.execute(
                "SELECT 1 FROM recordings WHERE COALESCE(heap_source, '') != '' LIMIT 1"
            ).fetchone() is not None
            detail_note = detail_note_short(self.conn)
        finally:
            self.conn.execute("COMMIT")
        return self._snapshot(summary, has_heap, detail_note)

    # -- building -------------------------------------------------------------

    def _publish_series(self) -> None:
        """New series dicts for the keys whose values changed since the last snapshot."""
        updates: dict[str, dict[int, float]] = defaultdict(dict)
        for idx in self._cpu_dirty:
            total = self._interval_samples.get(idx, 0)
            for key in self._interval_keys.get(idx, ()):
                raw = self._cpu_series[key].get(idx, 0)
                updates[key][idx] = 100.0 * raw / total if raw > 0 and total else 0.0
        for key, changed in updates.items():
            series = dict(self._cpu_view.get(key, ()))
            for idx, pct in changed.items():
                if pct:
                    series[idx] = pct
                else:
                    series.pop(idx, None)
            self._cpu_view[key] = series
        for key in self._mem_dirty:
            self._mem_view[key] = dict(self._mem_series[key])
        self._cpu_dirty.clear()
        self._mem_dirty.clear()

    def _snapshot(self, summary: ProfileSummary, has_heap: bool,
                  detail_note: str = "") -> Snapshot:
        total = sum(self._cpu_total.values())
        total_ns = sum(self._cpu_ns.values())
        last = self._last_interval
        recording = self.live and summary.end_reason in ("", "recording")
        # "Live": the newest complete interval (while recording, the newest one is
        # still filling).
        live_iv = last - 1 if recording and last > 0 else last
        live_total = self._interval_samples.get(live_iv, 0)
        self._publish_series()
        cpu_rows: list[CpuRow] = []
        for key, n in self._cpu_total.items():
            if n <= 0:
                continue
            raw = self._cpu_series[key]
            ns = self._cpu_ns[key]
            cpu_rows.append(CpuRow(
                key=key, function=self._cpu_names[key],
                location=self._cpu_lines[key].most_common(1)[0][0],
                samples=n, total_pct=100.0 * ns / total_ns if total_ns else 0.0,
                live_pct=100.0 * raw.get(live_iv, 0) / live_total if live_total else 0.0,
                series=self._cpu_view.get(key, {}), cpu_ns=ns))
        mem_rows = [
            MemRow(key=key, function=self._mem_names[key][0], location=self._mem_names[key][1],
                   live_bytes=self._mem_live[key], alloc_bytes=self._mem_alloc[key],
                   allocs=self._mem_allocs[key], series=self._mem_view.get(key, {}))
            for key in self._mem_names]
        cpu_rows.sort(key=lambda r: (-r.cpu_ns, -r.samples, r.function))
        own = sum(r.samples for r in cpu_rows if r.function == RSPROF_FUNCTION)
        mem_rows.sort(key=lambda r: (-r.live_bytes, -r.alloc_bytes, r.function))
        state = VIEW if not self.live else RECORDING if recording else ENDED
        if state == RECORDING:
            elapsed = max(0.0, time.time() - summary.start_time) if summary.start_time else 0.0
        else:
            elapsed = summary.duration_s
        counters = summary.counters
        self._version += 1
        return Snapshot(
            state=state, process_name=summary.process_name, pid=summary.pid,
            elapsed_s=elapsed, samples=counters.get("samples", 0) or total,
            interval_s=self._interval_s, intervals=last + 1,
            dropped=counters.get("heap_dropped", 0), lost=counters.get("lost_records", 0),
            cpu_rows=tuple(cpu_rows), mem_rows=tuple(mem_rows), has_heap=has_heap,
            message=summary.end_reason if state == ENDED else "",
            heap_partial=summary.heap_partial, heap_partial_from_s=summary.heap_partial_from_s,
            heap_not_seen=summary.heap_not_seen, cpu_ns=total_ns,
            cpu_estimated=self._cpu_estimated,
            rsprof_pct=100.0 * own / total if total else 0.0, version=self._version,
            detail_note=detail_note)
