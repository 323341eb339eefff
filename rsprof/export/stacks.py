"""Whole stacks with their values, read from a profile for the exporters.

Every exporter (folded, SVG flame graph, pprof, speedscope) starts from a
`StackSet`: the selected stacks with one value per value type, and the
sampled addresses they are made of, each with its chain of frames (inlined
functions first, the real function last). Unlike the reports, nothing is
charged or skipped here: stacks are complete, std and libc frames included.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from rsprof.report.profile_summary import ProfileSummary, read_summary
from rsprof.report.selection import Selection, selected_cpu_counts, selected_heap_sites
from rsprof.storage.writer import decompress_ids

CPU, HEAP = "cpu", "heap"


@dataclass(frozen=True, slots=True)
class FrameInfo:
    function: str
    file: str | None
    line: int | None
    module: str


@dataclass(frozen=True, slots=True)
class Location:
    """One sampled address (the IP, or a return address minus one)."""
    id: int
    address: int          # as stored (SQLite INTEGER; may be negative above 2^63)
    rel_address: int      # in the module's ELF address space (what addr2line takes)
    module: str
    build_id: str
    frames: tuple[FrameInfo, ...]  # innermost (most deeply inlined) first


@dataclass(slots=True)
class WeightedStack:
    locations: tuple[int, ...]  # Location ids, leaf first (as recorded)
    values: list[int]           # one per StackSet.value_types
    thread: str = ""            # CPU: the thread's name (tid when unnamed); heap: ""


@dataclass(slots=True)
class StackSet:
    kind: str                                  # CPU or HEAP
    value_types: tuple[tuple[str, str], ...]   # (type, unit), pprof style
    stacks: list[WeightedStack]
    locations: dict[int, Location]
    summary: ProfileSummary
    selection: Selection
    period_ns: int = 0                         # CPU: nanoseconds per sample (1e9 / Hz)
    totals: list[int] = field(default_factory=list)

    def value_index(self, name: str) -> int:
        for i, (t, _) in enumerate(self.value_types):
            if t == name:
                return i
        raise KeyError(name)

    def frames_root_first(self, stack: WeightedStack) -> list[FrameInfo]:
        """The stack as logical frames, outermost first (inlined frames expanded)."""
        out: list[FrameInfo] = []
        for loc_id in reversed(stack.locations):
            out.extend(reversed(self.locations[loc_id].frames))
        return out


CPU_VALUES = (("samples", "count"), ("cpu", "nanoseconds"))
HEAP_VALUES = (("alloc_objects", "count"), ("alloc_space", "bytes"),
               ("inuse_objects", "count"), ("inuse_space", "bytes"))


def _locations(conn: sqlite3.Connection, ids: set[int]) -> dict[int, Location]:
    frames: dict[int, list[FrameInfo]] = defaultdict(list)
    for address_id, function, file, line, module in conn.execute(
            "SELECT af.address_id, f.function, f.file, f.line, m.path FROM address_frames af"
            " JOIN frames f ON f.id = af.frame_id JOIN modules m ON m.id = f.module_id"
            " ORDER BY af.address_id, af.depth"):
        if address_id in ids:
            frames[address_id].append(FrameInfo(function, file, line, module))
    out: dict[int, Location] = {}
    for aid, address, rel, module, build_id in conn.execute(
            "SELECT a.id, a.address, a.rel_address, m.path, COALESCE(m.build_id, '')"
            " FROM addresses a JOIN modules m ON m.id = a.module_id"):
        if aid in ids:
            chain = tuple(frames.get(aid, ())) or (
                FrameInfo(f"{module.rsplit('/', 1)[-1]}+{rel:#x}", None, None, module),)
            out[aid] = Location(aid, address, rel, module, build_id, chain)
    return out


def _stack_addresses(conn: sqlite3.Connection, stack_ids: set[int]) -> dict[int, tuple[int, ...]]:
    return {sid: tuple(decompress_ids(blob)) for sid, blob in conn.execute(
        "SELECT id, address_ids FROM stacks") if sid in stack_ids}


def _finish(conn: sqlite3.Connection, sset: StackSet,
            by_stack: dict[int, list[WeightedStack]]) -> StackSet:
    addresses = _stack_addresses(conn, set(by_stack))
    used: set[int] = set()
    for sid, group in by_stack.items():
        locs = addresses.get(sid, ())
        used.update(locs)
        for ws in group:
            ws.locations = locs
            sset.stacks.append(ws)
    sset.locations = _locations(conn, used)
    # A stack whose addresses were never symbolized still counts: charged to "[no stack]".
    for ws in sset.stacks:
        ws.locations = tuple(a for a in ws.locations if a in sset.locations)
    sset.totals = [sum(ws.values[i] for ws in sset.stacks) for i in range(len(sset.value_types))]
    return sset


def load_cpu_stacks(conn: sqlite3.Connection, sel: Selection) -> StackSet:
    """CPU samples per (stack, thread): values (samples, nanoseconds of CPU)."""
    summary = read_summary(conn)
    freq = {rid: hz for rid, hz in conn.execute("SELECT id, cpu_freq FROM recordings")}
    names = {(rid, tid): name for rid, tid, name in conn.execute(
        "SELECT recording_id, tid, name FROM threads")}
    sql, params = selected_cpu_counts(conn, sel)
    grouped: dict[tuple[int, int, int], int] = defaultdict(int)
    for rid, _interval, tid, sid, samples in conn.execute(sql, params):
        grouped[(rid, tid, sid)] += samples
    by_stack: dict[int, list[WeightedStack]] = defaultdict(list)
    for (rid, tid, sid), n in grouped.items():
        hz = freq.get(rid) or summary.cpu_freq or 99
        by_stack[sid].append(WeightedStack((), [n, n * round(1e9 / hz)],
                                           names.get((rid, tid)) or str(tid)))
    period = round(1e9 / (summary.cpu_freq or 99))
    return _finish(conn, StackSet(CPU, CPU_VALUES, [], {}, summary, sel, period), by_stack)


def load_heap_stacks(conn: sqlite3.Connection, sel: Selection) -> StackSet:
    """Heap sites: values (allocations, bytes allocated, live objects, live bytes)."""
    summary = read_summary(conn)
    by_stack: dict[int, list[WeightedStack]] = defaultdict(list)
    for (_rid, sid), t in selected_heap_sites(conn, sel).items():
        by_stack[sid].append(WeightedStack((), [t.allocs, t.alloc_bytes,
                                                max(0, t.live_objects), t.live_bytes]))
    return _finish(conn, StackSet(HEAP, HEAP_VALUES, [], {}, summary, sel), by_stack)
