"""Whole stacks with their values, read from a profile for the exporters.

Every exporter (folded, SVG flame graph, pprof, speedscope) starts from a
`StackSet`: the selected stacks with one value per value type, and the
sampled addresses they are made of, each with its chain of frames (inlined
functions first, the real function last). Unlike the reports, nothing is
charged or skipped here: stacks are complete, std and libc frames included.
Only rsprof's own code is shown as every view shows it (docs/attribution.md):
a sample of rsprof's own time ends in one `[rsprof]` frame under the
program's frames above rsprof's code, and rsprof's pass-through frames (the
shim's malloc hook over the real malloc, its thread trampoline) are left out.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field, replace

from rsprof.attribution import RSPROF_FUNCTION, is_rsprof_code
from rsprof.report.profile_summary import ProfileSummary, read_summary
from rsprof.report.selection import Selection, selected_cpu_counts, selected_heap_sites
from rsprof.storage.schema import has_table
from rsprof.storage.writer import decompress_ids

CPU, HEAP = "cpu", "heap"
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class FrameInfo:
    function: str
    file: str | None
    line: int | None
    module: str


@dataclass(frozen=True, slots=True)
class Mapping:
    """An executable mapping of a module, as /proc/PID/maps had it."""
    start: int            # unsigned
    end: int              # unsigned, exclusive
    file_offset: int      # of `start` in the file


@dataclass(frozen=True, slots=True)
class Location:
    """One sampled address (the IP, or a return address minus one)."""
    id: int
    address: int          # as stored (SQLite INTEGER; may be negative above 2^63)
    rel_address: int      # in the module's ELF address space (what addr2line takes)
    module: str
    build_id: str
    frames: tuple[FrameInfo, ...]  # innermost (most deeply inlined) first
    # The mapping that held it (None in a profile recorded before mappings were stored).
    mapping: Mapping | None = None


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
    # CPU: some nanoseconds are samples * 1e9 / Hz, not the samples' own periods (a
    # profile recorded before they were stored): an estimate, wrong wherever the rate
    # was not the one asked for.
    cpu_estimated: bool = False

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
    mappings = _mappings(conn)
    out: dict[int, Location] = {}
    for aid, rid, address, rel, module_id, module, build_id in conn.execute(
            "SELECT a.id, a.recording_id, a.address, a.rel_address, a.module_id, m.path,"
            " COALESCE(m.build_id, '') FROM addresses a JOIN modules m ON m.id = a.module_id"):
        if aid in ids:
            chain = tuple(frames.get(aid, ())) or (
                FrameInfo(f"{module.rsplit('/', 1)[-1]}+{rel:#x}", None, None, module),)
            out[aid] = Location(aid, address, rel, module, build_id, chain,
                                _mapping_of(mappings.get((rid, module_id), ()), address))
    return out


def _mappings(conn: sqlite3.Connection) -> dict[tuple[int, int], list[Mapping]]:
    """(recording id, module id) -> its stored mappings by start (none in older files)."""
    out: dict[tuple[int, int], list[Mapping]] = defaultdict(list)
    if not has_table(conn, "mappings"):
        return out
    for rid, mid, start, end, offset in conn.execute(
            "SELECT recording_id, module_id, start_address, end_address, file_offset"
            " FROM mappings ORDER BY recording_id, module_id, start_address"):
        out[(rid, mid)].append(Mapping(start & _U64, end & _U64, offset & _U64))
    return out


def _mapping_of(mappings: list[Mapping] | tuple[()], address: int) -> Mapping | None:
    address &= _U64
    for m in mappings:
        if m.start <= address < m.end:
            return m
    return None


def _stack_addresses(conn: sqlite3.Connection, stack_ids: set[int]) -> dict[int, tuple[int, ...]]:
    return {sid: tuple(decompress_ids(blob)) for sid, blob in conn.execute(
        "SELECT id, address_ids FROM stacks") if sid in stack_ids}


def _rsprof_as_one_frame(conn: sqlite3.Connection, sset: StackSet,
                         by_stack: dict[int, list[WeightedStack]]) -> None:
    """rsprof's own frames as the reports show them: stacks charged to [rsprof] lose
    what lies under rsprof's outermost code and end in one [rsprof] frame (a location
    of its own, id -(the real one's), at the address of rsprof's first frame); in every
    stack rsprof's frames are left out, and locations left without frames dropped."""
    own = {sid for (sid,) in conn.execute(
        "SELECT s.id FROM stacks s JOIN frames f ON f.id = s.user_frame_id"
        " WHERE f.function = ?", (RSPROF_FUNCTION,)) if sid in by_stack}
    touched: set[int] = set()
    for loc in list(sset.locations.values()):
        kept = tuple(f for f in loc.frames if not is_rsprof_code(f.function, f.file, f.module))
        if len(kept) != len(loc.frames):
            touched.add(loc.id)
            sset.locations[loc.id] = replace(loc, frames=kept)
    if not touched:
        return
    for sid, group in by_stack.items():
        for ws in group:
            locs = ws.locations
            first = next((i for i, a in enumerate(locs) if a in touched), -1) \
                if sid in own else -1
            if first >= 0:
                real = sset.locations[locs[first]]
                pseudo = replace(real, id=-real.id, frames=(
                    FrameInfo(RSPROF_FUNCTION, None, None, real.module),))
                sset.locations[pseudo.id] = pseudo
                locs = (pseudo.id, *locs[first + 1:])
            ws.locations = tuple(a for a in locs if sset.locations[a].frames)
    used = {a for ws in sset.stacks for a in ws.locations}
    for lid in [lid for lid in sset.locations if lid not in used]:
        del sset.locations[lid]


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
    _rsprof_as_one_frame(conn, sset, by_stack)
    sset.totals = [sum(ws.values[i] for ws in sset.stacks) for i in range(len(sset.value_types))]
    return sset


def load_cpu_stacks(conn: sqlite3.Connection, sel: Selection) -> StackSet:
    """CPU samples per (stack, thread): values (samples, nanoseconds of CPU).

    The nanoseconds are what the samples stand for, each its own period (a
    self-sampler signal at the kernel tick stands for several timer intervals);
    a profile recorded without periods falls back to samples * 1e9 / Hz and the
    StackSet says so (cpu_estimated)."""
    summary = read_summary(conn)
    names = {(rid, tid): name for rid, tid, name in conn.execute(
        "SELECT recording_id, tid, name FROM threads")}
    sql, params = selected_cpu_counts(conn, sel)
    grouped: dict[tuple[int, int, int], list[int]] = {}
    estimated = False
    for rid, _interval, tid, sid, samples, ns, est in conn.execute(sql, params):
        values = grouped.get((rid, tid, sid))
        if values is None:
            grouped[(rid, tid, sid)] = [samples, ns]
        else:
            values[0] += samples
            values[1] += ns
        estimated = estimated or bool(est)
    by_stack: dict[int, list[WeightedStack]] = defaultdict(list)
    for (rid, tid, sid), values in grouped.items():
        by_stack[sid].append(WeightedStack((), values, names.get((rid, tid)) or str(tid)))
    period = round(1e9 / (summary.cpu_freq or 99))
    sset = StackSet(CPU, CPU_VALUES, [], {}, summary, sel, period, cpu_estimated=estimated)
    return _finish(conn, sset, by_stack)


def load_heap_stacks(conn: sqlite3.Connection, sel: Selection) -> StackSet:
    """Heap sites: values (allocations, bytes allocated, live objects, live bytes)."""
    summary = read_summary(conn)
    by_stack: dict[int, list[WeightedStack]] = defaultdict(list)
    for (_rid, sid), t in selected_heap_sites(conn, sel).items():
        by_stack[sid].append(WeightedStack((), [t.allocs, t.alloc_bytes,
                                                max(0, t.live_objects), t.live_bytes]))
    return _finish(conn, StackSet(HEAP, HEAP_VALUES, [], {}, summary, sel), by_stack)
