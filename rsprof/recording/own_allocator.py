"""Did the heap shim see the program's allocations, or does it use an allocator of its own?

The shim records what reaches libc's malloc. A program with an allocator of its
own never gets there: a Rust #[global_allocator] such as jemalloc or mimalloc
(unless it delegates to `System`), or an executable that defines malloc and
free itself (jemalloc linked unprefixed, as rustc is: the executable comes
first in symbol lookup, before the LD_PRELOAD shim). Such a recording holds no
heap data, or only the few blocks libc allocates for itself, and must say so
rather than show an empty heap.

The rule, one for every display (docs/architecture.md, "A program with its
own allocator"): rsprof counts the allocations whose caller of malloc (the
innermost recorded frame) is in the executable's own code. If there is one,
the program's allocations reach malloc and nothing is said. If there is none:

1. the executable defines malloc/free itself: its heap was not seen (certain);
2. it is a Rust program whose allocator is not std's default (its symbol table
   names `__rust_alloc` but not `__rdl_alloc`): not seen (certain);
3. otherwise, when `rsprof run` recorded it from its start and it ran at least
   MIN_CPU_S of CPU with its own code on the stack: probably not seen, and the
   message says why rsprof cannot be sure (stripped symbols, not Rust).

A global allocator alone proves nothing (rsprof-trace's wrapper and counting
allocators over `System` do reach malloc, and their allocations come from the
executable's code); nor does a quiet program that has not allocated yet.
The finding is stored in the profile's meta as `heap_not_seen` (empty when
there is none) for `top heap`, `--json` and the TUI.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from rsprof.storage.writer import ProfileWriter, decompress_ids
from rsprof.symbols.elf import AllocatorSymbols, read_allocator_symbols

META_KEY = "heap_not_seen"
MIN_CPU_S = 0.25  # rule 3: this much CPU in the executable's code without one allocation
ADVICE = ("To record its heap, wrap its allocator with the rsprof-trace crate"
          " (Rust programs; see the README)")


@dataclass(frozen=True, slots=True)
class HeapEvidence:
    program: str
    allocs: int          # allocations the shim recorded
    own_allocs: int      # ... of them with malloc called from the executable's own code
    own_cpu_s: float     # CPU time sampled with the executable's code on the stack
    whole_run: bool      # `rsprof run`: the shim was there from the program's start
    symbols: AllocatorSymbols | None  # None: the executable could not be read


def verdict(ev: HeapEvidence) -> str:
    """The finding as one line of text, or "" when rsprof has no reason to doubt
    that the heap was seen."""
    if ev.own_allocs > 0:
        return ""
    s = ev.symbols
    seen = "0 allocations from its own code reached malloc"
    if ev.own_cpu_s > 0:
        seen += f" in {ev.own_cpu_s:.1f}s of CPU"
    if ev.allocs:
        seen += (f" (the {ev.allocs} recorded came from libraries it calls)" if ev.allocs > 1
                 else " (the one recorded came from a library it calls)")
    if s is not None and s.defines_malloc:
        d = s.defines_malloc
        names = ", ".join(d[:-1]) + " and " + d[-1] if len(d) > 1 else d[0]
        return (f"{ev.program} uses its own allocator: it defines {names} itself, in place "
                f"of libc's and rsprof's hooks, and {seen}. {ADVICE}.")
    if s is not None and s.rust_alloc_shim and not s.rust_default_alloc:
        return (f"{ev.program} uses its own allocator: its #[global_allocator] does not "
                f"call malloc, and {seen}. {ADVICE}.")
    if not ev.whole_run or ev.own_cpu_s < MIN_CPU_S or (s is not None and s.rust_default_alloc):
        return ""
    if s is None:
        why = "its executable could not be read"
    elif not s.has_symtab:
        why = "its symbols are stripped"
    else:
        why = "it is not a Rust program"
    return (f"{ev.program} probably uses its own allocator ({why}, so rsprof cannot tell "
            f"for sure): {seen}. {ADVICE}.")


def _samples_through(rows: list[tuple[bytes, int]], own: set[int]) -> int:
    """The samples of the stacks with one of the `own` addresses in them."""
    return sum(n for blob, n in rows if any(a in own for a in decompress_ids(blob)))


def gather(conn: sqlite3.Connection, recording_id: int, program: str) -> HeapEvidence | None:
    """The evidence for recording `recording_id`; None when it has no heap data to doubt
    (no shim) or some allocation came from the executable's own code."""
    row = conn.execute("SELECT executable, build_id, heap_source, cpu_freq FROM recordings"
                       " WHERE id = ?", (recording_id,)).fetchone()
    if row is None or not row[2]:
        return None
    executable, build_id, heap_source, cpu_freq = row
    path = os.path.realpath(executable) if executable else ""
    modules = [m for (m,) in conn.execute(
        "SELECT id FROM modules WHERE path = ? OR (build_id = ? AND ? != '')",
        (path, build_id or "", build_id or ""))]
    marks = ",".join("?" * len(modules))
    own = {a for (a,) in conn.execute(
        f"SELECT id FROM addresses WHERE recording_id = ? AND module_id IN ({marks})",
        (recording_id, *modules))} if modules else set()
    for (blob,) in conn.execute("SELECT s.address_ids FROM heap_sites h JOIN stacks s"
                                " ON s.id = h.stack_id WHERE h.recording_id = ?",
                                (recording_id,)):
        ids = decompress_ids(blob)
        if ids and ids[0] in own:
            return None  # the usual case, decided by the first site or so
    allocs = conn.execute("SELECT COALESCE(SUM(allocs), 0) FROM heap_sites"
                          " WHERE recording_id = ?", (recording_id,)).fetchone()[0]
    cpu = conn.execute("SELECT s.address_ids, SUM(c.samples) FROM cpu_counts c JOIN stacks s"
                       " ON s.id = c.stack_id WHERE c.recording_id = ? GROUP BY c.stack_id",
                       (recording_id,)).fetchall()
    try:
        symbols: AllocatorSymbols | None = read_allocator_symbols(path) if path else None
    except (OSError, ValueError):
        symbols = None
    return HeapEvidence(
        program=program, allocs=int(allocs), own_allocs=0,
        own_cpu_s=_samples_through(cpu, own) / (cpu_freq or 99),
        whole_run=heap_source == "preload", symbols=symbols)


def record_finding(writer: ProfileWriter, program: str) -> str:
    """Check the recording being written, store the finding in its meta (also when
    empty: an appended recording replaces an older one's) and return it."""
    try:
        ev = gather(writer.conn, writer.recording_id, program)
    except (sqlite3.Error, ValueError):
        ev = None  # never let the check cost the recording
    finding = verdict(ev) if ev is not None else ""
    writer.set_meta({META_KEY: finding})
    return finding
