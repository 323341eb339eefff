"""What the TUI shows: immutable snapshots of a profile, built off the UI thread.

A snapshot is never changed after it is built; the UI keeps a reference to
the one it renders, the loader builds the next one. Per-row series are
sparse (interval index -> value): most functions appear in a few intervals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RECORDING, ENDED, VIEW = "RECORDING", "ENDED", "VIEW"


@dataclass(frozen=True, slots=True)
class CpuRow:
    key: str                  # stable identity: function and module
    function: str
    location: str             # file:line of the function's most-sampled line
    samples: int              # over the whole profile
    total_pct: float          # share of all CPU time (what the samples stand for)
    live_pct: float           # share of the last complete interval's CPU time
    series: Mapping[int, float]  # interval -> percent of that interval's CPU time
    cpu_ns: int = 0           # the nanoseconds of CPU its samples stand for


@dataclass(frozen=True, slots=True)
class MemRow:
    key: str                  # stable identity: the charged frame
    function: str
    location: str
    live_bytes: int
    alloc_bytes: int
    allocs: int
    series: Mapping[int, float]  # interval -> live bytes at its end (held until changed)


@dataclass(frozen=True, slots=True)
class Snapshot:
    state: str                # RECORDING, ENDED or VIEW
    process_name: str
    pid: int
    elapsed_s: float
    samples: int
    interval_s: float
    intervals: int            # intervals with data so far (series indices < intervals)
    dropped: int              # heap records the shim could not write
    lost: int                 # perf records the kernel dropped
    # Rows in the default order: CPU by CPU time (then samples), memory by live then
    # allocated bytes
    # (then function); the UI sorts only for the other columns.
    cpu_rows: tuple[CpuRow, ...] = ()
    mem_rows: tuple[MemRow, ...] = ()
    has_heap: bool = False
    message: str = ""         # e.g. why recording ended
    heap_not_seen: str = ""   # the program's own allocator hid its heap (own_allocator.py)
    heap_partial: str = ""    # why the heap data is incomplete, "" when it is not
    heap_partial_from_s: float | None = None  # since when (seconds from the start)
    cpu_ns: int = 0           # the CPU time the samples stand for (their periods summed)
    cpu_estimated: bool = False  # some of cpu_ns is samples / frequency (an older profile)
    rsprof_pct: float = 0.0   # share of samples in rsprof's own code ([rsprof] row)
    version: int = 0          # bumped by the loader for every new snapshot
    # The detail the profile lacks, one short line ("rg: stripped, addresses only"),
    # "" at full detail (rsprof/report/detail_notes.py)
    detail_note: str = ""


EMPTY = Snapshot(state=RECORDING, process_name="", pid=0, elapsed_s=0.0, samples=0,
                 interval_s=1.0, intervals=0, dropped=0, lost=0)


def dense(series: Mapping[int, float], start: int, stop: int, hold: bool) -> list[float]:
    """Values of intervals start..stop-1; a missing interval is 0, or with `hold` the
    last value before it (live bytes stay what they were until they change)."""
    if stop <= start:
        return []
    out = [0.0] * (stop - start)
    if not hold:
        for i, v in series.items():
            if start <= i < stop:
                out[i - start] = v
        return out
    last = 0.0
    best = -1
    for i, v in series.items():  # the value held at `start`: the latest at or before it
        if best < i <= start:
            best, last = i, v
    for k in range(stop - start):
        v2 = series.get(start + k)
        if v2 is not None:
            last = v2
        out[k] = last
    return out
