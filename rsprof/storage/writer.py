"""ProfileWriter: everything a recording writes into its SQLite file.

The file is in WAL mode while recording and committed once per interval, so
a killed rsprof loses at most the last interval. `finalize` switches it back
to a single-file journal so a finished profile is one file.
"""

from __future__ import annotations

import contextlib
import itertools
import posixpath
import sqlite3
import time
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import lz4.block

from rsprof import __version__
from rsprof._unwind import pack_u32
from rsprof.attribution import Attributor, is_internal
from rsprof.errors import ProfileError
from rsprof.storage.profile_file import check_is_sqlite, check_schema, create_private
from rsprof.storage.schema import (
    ADDED_COLUMNS,
    DROP_VIEWS,
    SCHEMA_VERSION,
    TABLES,
    VIEWS,
    has_column,
)
from rsprof.symbols.model import Frame, ResolvedAddress


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    pid: int
    process_name: str
    cmdline: str
    executable: str | None
    build_id: str | None
    cpu_source: str
    cpu_freq: int
    interval_s: float
    start_time: float
    heap_source: str | None = None
    unwind: str = "fp"  # how CPU stacks were walked: "auto", "dwarf" or "fp"
    stack_bytes: int = 0  # user stack copied per CPU sample for CFI unwinding (0: none)


@dataclass(slots=True)
class RecordingCounters:
    samples: int = 0
    lost_records: int = 0
    truncated_stacks: int = 0
    unresolved_addresses: int = 0
    malformed_records: int = 0
    throttle_events: int = 0
    other_process_samples: int = 0
    broken_stacks: int = 0
    scanned_stacks: int = 0
    cfi_stacks: int = 0
    heap_allocs: int = 0
    heap_frees: int = 0
    heap_unknown_frees: int = 0
    heap_dropped: int = 0
    heap_malformed: int = 0
    heap_unknown_stacks: int = 0
    heap_replaced_live: int = 0
    heap_raw_stacks: int = 0
    heap_truncated_stacks: int = 0
    heap_waits: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "samples": self.samples,
            "lost_records": self.lost_records,
            "truncated_stacks": self.truncated_stacks,
            "unresolved_addresses": self.unresolved_addresses,
            "malformed_records": self.malformed_records,
            "throttle_events": self.throttle_events,
            "other_process_samples": self.other_process_samples,
            "broken_stacks": self.broken_stacks,
            "scanned_stacks": self.scanned_stacks,
            "cfi_stacks": self.cfi_stacks,
            "heap_allocs": self.heap_allocs,
            "heap_frees": self.heap_frees,
            "heap_unknown_frees": self.heap_unknown_frees,
            "heap_dropped": self.heap_dropped,
            "heap_malformed": self.heap_malformed,
            "heap_unknown_stacks": self.heap_unknown_stacks,
            "heap_replaced_live": self.heap_replaced_live,
            "heap_raw_stacks": self.heap_raw_stacks,
            "heap_truncated_stacks": self.heap_truncated_stacks,
            "heap_waits": self.heap_waits,
        }


def sql_u64(value: int) -> int:
    """A 64-bit unsigned value as SQLite's signed INTEGER (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def compress_ids(ids: Iterable[int]) -> bytes:
    """Stored stack layout: lz4 block (with size header) of little-endian uint32 ids."""
    return bytes(lz4.block.compress(pack_u32(ids), store_size=True))


def decompress_ids(blob: bytes) -> list[int]:
    raw = lz4.block.decompress(blob)
    return list(memoryview(raw).cast("I"))


@overload
def canonical_path(path: str) -> str: ...
@overload
def canonical_path(path: str | None) -> str | None: ...
def canonical_path(path: str | None) -> str | None:
    """The one spelling of a module or source file path in a profile.

    Every path the writer stores goes through here, whichever reader produced it:
    the cold DWARF reader joins directory and file names as the line table has
    them (`./nptl/./nptl/pthread_create.c`, `library/std/src/../../backtrace/...`),
    SymCache cleans them (`nptl/nptl/pthread_create.c`, `library/backtrace/...`).
    Lexical only (no symlinks resolved): the files need not exist here, and the
    same path must give the same spelling on every machine and every run, so an
    `--append` of a warm run finds the frames of a cold one.
    """
    if not path or path.startswith("["):  # none, or [vdso], [unknown]
        return path
    return posixpath.normpath(path)


# Heap rows built and passed to SQLite at a time (9-tuples: ~160 bytes a row with its
# stored stack id, 2.6 MB for these; the time per row is the same from 4 k to 131 k).
# The recorder also takes changed sites from the decoder this many at a time.
HEAP_ROWS_CHUNK = 16384

# What a stack with no frames at all (the shim could not walk any) is charged to.
NO_STACK_FRAME = Frame("[no stack]", None, None, "[unknown]", False, False)


class ProfileWriter:
    """Writes one recording (or appends one more) into a profile file."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = path
        existed = path.exists()
        if existed and not append:
            create_private(path)  # raises the "already exists" usage error
        if existed:
            check_is_sqlite(path)
        else:
            create_private(path)
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            if existed:
                check_schema(self.conn, path)
        except sqlite3.DatabaseError as exc:
            raise ProfileError(f"{path} is corrupt or not a profile: {exc}") from None
        try:
            # Views are recreated: an appended older file gets this version's views.
            self.conn.executescript("BEGIN;" + TABLES + DROP_VIEWS + VIEWS + "COMMIT;")
            # And the columns added since it was written (NULL in its rows).
            for table, column, decl in ADDED_COLUMNS:
                if not has_column(self.conn, table, column):
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except sqlite3.DatabaseError as exc:
            raise ProfileError(f"{path} is corrupt or not a profile: {exc}") from None
        self.conn.execute("BEGIN")
        self._set_meta({"schema_version": SCHEMA_VERSION, "rsprof_version": __version__})
        self._modules: dict[tuple[str, str | None], int] = {}
        self._module_by_path: dict[str, int] = {}
        self._frames: dict[tuple[str, str | None, int | None, int], tuple[int, bool]] = {}
        self._frame_ids: dict[Frame, tuple[int, bool]] = {}
        self._addresses: dict[int, int] = {}  # absolute lookup address -> address id
        self._address_frames: dict[int, list[Frame]] = {}
        # Recorder stack id -> stored stack id (stacks.id). The recorder numbers its stacks
        # densely from 0 and hands them over in that order, so an array indexed by its id
        # does: 8 bytes a stack (binary-trees depth 18: 524 k stacks; a dict was 50 MB).
        self._stack_ids = array("q")
        self._threads: dict[int, str] = {}
        self._mappings: set[tuple[int, int]] = set()  # (module id, start) stored
        # The profiled executable's module paths (its path, and any module with its
        # build-id), which the attribution rule needs wherever it is installed.
        self._executable: set[str] = set()
        self._executable_build_id: str | None = None
        self._attribution = Attributor(self._executable)
        self.recording_id = 0
        self.profile_start_time = 0.0
        self.counters = RecordingCounters()

    # -- recording lifecycle -------------------------------------------------

    def begin_recording(self, info: RecordingInfo) -> int:
        cur = self.conn.execute(
            "INSERT INTO recordings (pid, process_name, cmdline, executable, build_id,"
            " cpu_source, cpu_freq, interval_s, start_time, heap_source, unwind, stack_bytes)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (info.pid, info.process_name, info.cmdline, info.executable, info.build_id,
             info.cpu_source, info.cpu_freq, info.interval_s, info.start_time,
             info.heap_source, info.unwind, info.stack_bytes),
        )
        self.recording_id = int(cur.lastrowid or 0)
        self._stack_ids = array("q")  # a new recording's recorder numbers from 0 again
        self._executable = set()
        if info.executable:
            self._executable.add(info.executable.removesuffix(" (deleted)"))
        self._executable_build_id = info.build_id or None
        self._attribution = Attributor(self._executable)
        first = self.conn.execute("SELECT min(start_time) FROM recordings").fetchone()[0]
        self.profile_start_time = float(first)  # `elapsed_s` 0: the first recording's start
        self._set_meta({
            "pid": info.pid, "process_name": info.process_name, "cmdline": info.cmdline,
            "executable": info.executable or "", "build_id": info.build_id or "",
            "cpu_source": info.cpu_source, "cpu_freq": info.cpu_freq,
            "interval_s": info.interval_s, "start_time": first,
            "recordings": self.recording_id, "end_time": "", "end_reason": "recording",
            "heap_source": info.heap_source or "", "exit_code": "",
            "unwind": info.unwind, "stack_bytes": info.stack_bytes,
        })
        self.commit()
        return self.recording_id

    def commit(self) -> None:
        self._write_counters()
        self.conn.execute("COMMIT")
        self.conn.execute("BEGIN")

    def set_exit_code(self, code: int) -> None:
        self.conn.execute("UPDATE recordings SET exit_code = ? WHERE id = ?",
                          (code, self.recording_id))
        self._set_meta({"exit_code": code})

    def finalize(self, end_time: float, end_reason: str) -> None:
        self.conn.execute(
            "UPDATE recordings SET end_time = ?, end_reason = ? WHERE id = ?",
            (end_time, end_reason, self.recording_id),
        )
        self._set_meta({"end_time": end_time, "end_reason": end_reason})
        self._write_counters()
        self.conn.execute("COMMIT")
        # If a reader holds the WAL open this fails; the file stays valid in WAL mode.
        with contextlib.suppress(sqlite3.OperationalError):
            self.conn.execute("PRAGMA journal_mode = DELETE")
        self.conn.close()

    def close_abruptly(self) -> None:
        """Close without finalizing (used when something failed mid-recording)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("COMMIT")
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    # -- symbols --------------------------------------------------------------

    def known_address(self, address: int) -> bool:
        return address in self._addresses

    def unknown_addresses(self, stacks: Iterable[tuple[int, list[int]]]) -> set[int]:
        """The addresses of `stacks` not added yet (set operations: no Python loop)."""
        every: set[int] = set(itertools.chain.from_iterable(f for _, f in stacks))
        every.difference_update(self._addresses.keys())
        return every

    def add_addresses(self, resolved: Mapping[int, ResolvedAddress]) -> None:
        for address, res in resolved.items():
            if address in self._addresses:
                continue
            if (res.build_id and res.build_id == self._executable_build_id
                    and res.module not in self._executable):
                self._executable.add(res.module)
                self._attribution = Attributor(self._executable)  # verdicts may change
            module_id = self._module_id(res.module, res.build_id)
            cur = self.conn.execute(
                "INSERT INTO addresses (recording_id, address, module_id, rel_address)"
                " VALUES (?,?,?,?)",
                (self.recording_id, sql_u64(address), module_id, sql_u64(res.rel_address)),
            )
            address_id = int(cur.lastrowid or 0)
            self._addresses[address] = address_id
            if res.mapping is not None and (module_id, res.mapping[0]) not in self._mappings:
                # The mapping it lies in, as /proc/PID/maps has it (for pprof's Mapping).
                self._mappings.add((module_id, res.mapping[0]))
                start, end, offset = res.mapping
                self.conn.execute(
                    "INSERT OR IGNORE INTO mappings (recording_id, module_id, start_address,"
                    " end_address, file_offset) VALUES (?,?,?,?,?)",
                    (self.recording_id, module_id, sql_u64(start), sql_u64(end),
                     sql_u64(offset)))
            frames = list(res.frames) or [
                Frame(f"{res.module}+0x{res.rel_address:x}", None, None, res.module, False, False)
            ]
            self._address_frames[address] = frames
            if not any(f.resolved for f in frames):
                self.counters.unresolved_addresses += 1
            self.conn.executemany(
                "INSERT INTO address_frames (address_id, depth, frame_id) VALUES (?,?,?)",
                [(address_id, depth, self._frame_id(f)[0]) for depth, f in enumerate(frames)],
            )

    def _module_id(self, path: str, build_id: str | None) -> int:
        path = canonical_path(path)
        key = (path, build_id)
        mid = self._modules.get(key)
        if mid is None:
            # Not INSERT OR IGNORE: UNIQUE treats NULL build-ids as all distinct.
            row = self.conn.execute(
                "SELECT id FROM modules WHERE path = ? AND build_id IS ?", key
            ).fetchone()
            if row is None:
                cur = self.conn.execute("INSERT INTO modules (path, build_id) VALUES (?,?)", key)
                row = (cur.lastrowid,)
            mid = int(row[0])
            self._modules[key] = mid
            if build_id is not None or path not in self._module_by_path:
                self._module_by_path[path] = mid
        return mid

    def set_module_detail(self, path: str, build_id: str | None, symbols: str,
                          functions: int, cfi: bool) -> None:
        """The detail the module's ELF file gives (docs/schema.md: modules.symbols,
        functions, cfi), on its row (made if there is none yet)."""
        self.conn.execute(
            "UPDATE modules SET symbols = ?, functions = ?, cfi = ? WHERE id = ?",
            (symbols, functions, int(cfi), self._module_id(path, build_id)))

    def _frame_id(self, frame: Frame) -> tuple[int, bool]:
        found = self._frame_ids.get(frame)  # the same Frame objects recur in many stacks
        if found is None:
            found = self._frame_ids[frame] = self._store_frame(frame)
        return found

    def _store_frame(self, frame: Frame) -> tuple[int, bool]:
        module = canonical_path(frame.module)
        module_id = self._module_by_path.get(module) or self._module_id(module, None)
        key = (frame.function, canonical_path(frame.file), frame.line, module_id)
        found = self._frames.get(key)
        if found is None:
            internal = is_internal(frame.function, key[1], frame.module, self._executable)
            self.conn.execute(
                "INSERT OR IGNORE INTO frames (function, file, line, module_id, internal,"
                " resolved) VALUES (?,?,?,?,?,?)",
                (*key, int(internal), int(frame.resolved)),
            )
            row = self.conn.execute(
                "SELECT id FROM frames WHERE function = ? AND IFNULL(file, '') = IFNULL(?, '')"
                " AND IFNULL(line, -1) = IFNULL(?, -1) AND module_id = ?",
                key,
            ).fetchone()
            found = (int(row[0]), internal)
            self._frames[key] = found
        return found

    # -- stacks and samples ---------------------------------------------------

    def add_stacks(self, new_stacks: Iterable[tuple[int, list[int]]]) -> None:
        """Store stacks interned by the recorder; every address must be added first.

        Recorder ids must continue the ones added before (0, 1, 2, ... over all calls
        of this recording): the recorder interns them densely and hands them over in
        order, and the stored id of each is looked up by its position."""
        stored = self._stack_ids
        first = len(stored)
        # This writer is the file's only writer while it records: the ids SQLite itself
        # would give (highest + 1, ...), numbered here so that one executemany stores
        # the lot. The highest is read per call (cheap: the primary key's last entry),
        # counting the stacks of the earlier recordings of an --append file.
        base = int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM stacks").fetchone()[0])
        offset = base + 1 - first  # stored id = recorder id + offset
        rid = self.recording_id
        address_id = self._addresses.__getitem__
        frames_of = self._address_frames
        stack_frames = self._attribution.stack_frames
        frame_id = self._frame_id
        no_stack = (NO_STACK_FRAME, NO_STACK_FRAME)
        rows: list[tuple[int, int, int, bytes, int, int]] = []
        append = rows.append
        # Consecutive stacks mostly share their charged frames (the same Frame objects):
        # an identity check spares hashing them.
        last_leaf: Frame | None = None
        last_user: Frame | None = None
        leaf_id = user_id = 0
        expected = first
        for recorder_id, addresses in new_stacks:
            if recorder_id != expected:  # a gap, a repeat: the map would misfile stacks
                raise RuntimeError(f"internal error: recorder stack {recorder_id} handed"
                                   f" over where stack {expected} was due")
            expected += 1
            leaf, user = stack_frames(addresses, frames_of) or no_stack
            if leaf is not last_leaf:
                last_leaf, leaf_id = leaf, frame_id(leaf)[0]
            if user is not last_user:
                last_user, user_id = user, frame_id(user)[0]
            append((recorder_id + offset, rid, len(addresses),
                    compress_ids(map(address_id, addresses)), leaf_id, user_id))
        if rows:
            self.conn.executemany(
                "INSERT INTO stacks (id, recording_id, depth, address_ids, leaf_frame_id,"
                " user_frame_id) VALUES (?,?,?,?,?,?)",
                rows,
            )
            stored.extend(range(base + 1, base + 1 + len(rows)))

    def add_cpu_counts(self, counts: Iterable[tuple[int, ...]]) -> None:
        """(interval, tid, recorder stack id, samples, ns) rows, merged with what is
        stored; ns (the nanoseconds of CPU the samples stand for) may be left out:
        NULL, unknown."""
        self.conn.executemany(
            "INSERT INTO cpu_counts (recording_id, interval, tid, stack_id, samples, ns)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT (recording_id, interval, tid, stack_id)"
            " DO UPDATE SET samples = samples + excluded.samples, ns = ns + excluded.ns",
            [(self.recording_id, row[0], row[1], self._stack_ids[row[2]], row[3],
              row[4] if len(row) > 4 else None) for row in counts],
        )

    def add_heap_sites(self, interval: int,
                       sites: Iterable[tuple[int, int, int, int, int, int, int]]) -> None:
        """Per-site totals (recorder stack id, allocs, alloc_bytes, frees, free_bytes,
        live_bytes, peak_live_bytes) of sites that changed; one time-series row each."""
        # One list of rows feeds both statements (numbered parameters: each takes what it
        # needs). sqlite3 wants as many values as the highest number a statement uses, so
        # both must use ?9: peak_live_bytes, which heap_counts does not store, is ?4, not
        # last. Built a slice at a time: an interval of binary-trees changes 131 k sites.
        sites = sites if isinstance(sites, list) else list(sites)
        rid, stored = self.recording_id, self._stack_ids
        for start in range(0, len(sites), HEAP_ROWS_CHUNK):
            rows = [(rid, interval, stored[sid], peak, a, ab, f, fb, live)
                    for sid, a, ab, f, fb, live, peak in sites[start:start + HEAP_ROWS_CHUNK]]
            self.conn.executemany(
                "INSERT INTO heap_sites (recording_id, stack_id, allocs, alloc_bytes, frees,"
                " free_bytes, live_bytes, peak_live_bytes) VALUES (?1,?3,?5,?6,?7,?8,?9,?4)"
                " ON CONFLICT (recording_id, stack_id) DO UPDATE SET"
                " allocs = excluded.allocs, alloc_bytes = excluded.alloc_bytes,"
                " frees = excluded.frees, free_bytes = excluded.free_bytes,"
                " live_bytes = excluded.live_bytes, peak_live_bytes = excluded.peak_live_bytes",
                rows,
            )
            self.conn.executemany(
                "INSERT INTO heap_counts (recording_id, interval, stack_id, allocs,"
                " alloc_bytes, frees, free_bytes, live_bytes) VALUES (?1,?2,?3,?5,?6,?7,?8,?9)"
                " ON CONFLICT (recording_id, interval, stack_id) DO UPDATE SET"
                " allocs = excluded.allocs, alloc_bytes = excluded.alloc_bytes,"
                " frees = excluded.frees, free_bytes = excluded.free_bytes,"
                " live_bytes = excluded.live_bytes",
                rows,
            )
            del rows  # before the next slice's are built

    def set_thread_name(self, tid: int, name: str) -> None:
        if self._threads.get(tid) == name:
            return
        self._threads[tid] = name
        self.conn.execute(
            "INSERT INTO threads (recording_id, tid, name) VALUES (?,?,?)"
            " ON CONFLICT (recording_id, tid) DO UPDATE SET name = excluded.name",
            (self.recording_id, tid, name),
        )

    def thread_names(self) -> Mapping[int, str]:
        """The names stored so far (a live read-only view, not a copy)."""
        return self._threads

    # -- meta -----------------------------------------------------------------

    def set_meta(self, values: Mapping[str, object]) -> None:
        """Extra facts about the recording (meta keys are documented in docs/schema.md)."""
        self._set_meta(values)

    def set_meta_once(self, values: Mapping[str, object]) -> None:
        """Set keys that are missing or empty; a value already there stays (the earliest
        moment a profile became partial, over --append)."""
        self.conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE meta.value = ''",
            [(k, str(v)) for k, v in values.items()],
        )

    def _set_meta(self, values: Mapping[str, object]) -> None:
        self.conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()],
        )

    def _write_counters(self) -> None:
        if not self.recording_id:
            return
        c = self.counters.as_dict()
        self.conn.execute(
            "UPDATE recordings SET " + ", ".join(f"{k} = ?" for k in c) + " WHERE id = ?",
            (*c.values(), self.recording_id),
        )
        totals = self.conn.execute(
            "SELECT " + ", ".join(f"SUM({k})" for k in c) + " FROM recordings"
        ).fetchone()
        self._set_meta({**dict(zip(c, totals, strict=True)), "updated_time": time.time()})
