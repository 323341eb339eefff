"""Heap stacks of code without frame pointers: the shim unwinds with the CFI table
the reader publishes (csrc/rsprof_shm.h "The unwind table", csrc/rsprof_shim.c).

The Rust test targets are built as a default `cargo build --release` would build
them (no frame pointers, line tables only: the `targets_nofp` fixture) and run with
librsprof_shim.so preloaded, into a region made by rsprof.recording.heap_region with
the program held at its start gate. While it waits, the test reads its mappings,
builds every module's rows (rsprof.recording.code_map's unwind sections and load
biases, _unwind.CfiTable), merges them into one table of runtime addresses, writes
it under /dev/shm and publishes it (ShmRing.publish_unwind); then it opens the gate.
A thread drains the region with rsprof.shm_reference while the program runs.

Without a table the same build's allocation stacks stop inside std (the frame-pointer
walk's first frame is std's allocation path): that is what the table is for, and
the tests below check both. A corrupt table is refused (the walk is then the
frame-pointer walk), and a C program with the shim linked in, built with ASan and
UBSan, unwinds through CFI and through a frame whose rbp is garbage.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rsprof import _ring, _unwind
from rsprof import shm_reference as ref
from rsprof.recording.code_map import CodeMap
from rsprof.recording.heap_region import SHM_DIR, Region, create_region
from rsprof.shim import shim_path
from rsprof.symbols.maps import Mapping, read_exec_mappings

elftools = pytest.importorskip("elftools.elf.elffile")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.uname().machine != "x86_64",
                                 reason="the shim unwinds with CFI on x86-64 only"),
              pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm")]

GCC = shutil.which("gcc")
CSRC = Path(__file__).resolve().parents[2] / "csrc"


# -- the table, as the reader builds it ---------------------------------------------------


def runtime_rows(pid: int) -> list[ref.UnwindRow]:
    """The CFI rows of every executable mapping of `pid`, runtime addresses, merged
    and sorted; NONE where no module has rules (the end of each mapping, gaps)."""
    maps = read_exec_mappings(pid)
    modules = sorted(CodeMap(pid).unwind_modules(maps), key=lambda m: m[0])
    tables: dict[int, list[tuple[int, str, int, int | None, int]]] = {}
    rows: list[ref.UnwindRow] = []
    for start, end, bias, sections in modules:
        if sections is None:
            continue
        key = id(sections)
        if key not in tables:
            tables[key] = _unwind.CfiTable(sections.eh_frame, sections.eh_frame_vaddr,
                                           sections.debug_frame).rows()
        mine: list[ref.UnwindRow] = []
        for vaddr, kind, cfa_off, bp_off, ra_off in tables[key]:
            at = vaddr + bias
            row = (at, ref.UNWIND_KINDS[kind], cfa_off,
                   _ring.UNWIND_BP_SAME if bp_off is None else bp_off, ra_off)
            if at <= start:
                mine = [(start, *row[1:])]  # the row that holds at the mapping's start
            elif at < end:
                mine.append(row)
        mine.append((end, _ring.UNWIND_NONE, 0, _ring.UNWIND_BP_SAME, 0))
        while rows and rows[-1][0] >= mine[0][0]:
            rows.pop()  # a NONE at the previous mapping's end, where this one starts
        rows += mine
    return rows


def table_name() -> str:
    """A fresh name under /dev/shm for a table of this process (run_target removes
    them: TABLE_PREFIX and this pid)."""
    return f"{TABLE_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


TABLE_PREFIX = "rsprof-unwind-test-"


def write_table(rows: list[ref.UnwindRow], data: bytes | None = None) -> str:
    """Write an unwind table file under /dev/shm; returns its name."""
    name = table_name()
    (SHM_DIR / name).write_bytes(ref.pack_unwind_file(rows) if data is None else data)
    return name


# -- symbols of the target ----------------------------------------------------------------


class Symbols:
    """Function symbols of one ELF file (pyelftools), by name substring."""

    def __init__(self, path: Path) -> None:
        from elftools.elf.elffile import ELFFile
        self.funcs: list[tuple[int, int, str]] = []
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            for sec in elf.iter_sections():
                if sec.header.sh_type not in ("SHT_SYMTAB", "SHT_DYNSYM"):
                    continue
                for sym in sec.iter_symbols():  # type: ignore[attr-defined]
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] > 0:
                        self.funcs.append((sym["st_value"], sym["st_size"], sym.name))

    def ranges(self, needle: str, bias: int, exact: bool = False) -> list[tuple[int, int]]:
        """Runtime [start, end) of the functions whose symbol contains `needle` (is
        `needle`, with exact)."""
        found = [(v + bias, v + s + bias) for v, s, name in self.funcs
                 if (name == needle if exact else needle in name)]
        assert found, f"no symbol {needle!r}"
        return found


def count_in(frames: Sequence[int], ranges: list[tuple[int, int]]) -> int:
    """Frames (return addresses: the call is the byte before) inside `ranges`."""
    return sum(1 for f in frames if any(lo <= f - 1 < hi for lo, hi in ranges))


def exe_bias(pid: int, binary: Path) -> int:
    """Load bias of `binary` in `pid` (its executable mapping)."""
    real = os.path.realpath(binary)
    for m in read_exec_mappings(pid):
        if os.path.realpath(m.path) == real:
            return CodeMap(pid).unwind_modules([m])[0][2]
    raise AssertionError(f"{binary} is not mapped in {pid}")


# -- running a target ---------------------------------------------------------------------


class Drainer:
    """Drains a region with rsprof.shm_reference in a thread while the target runs."""

    def __init__(self, name: str) -> None:
        self.reader = ref.ShmReader.open(name)
        self.records: list[ref.Record] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Drainer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.records += self.reader.drain()
            time.sleep(0.005)

    def stop(self) -> list[ref.Record]:
        """Stop the thread, then drain what is left."""
        self._stop.set()
        self._thread.join(timeout=30)
        while got := self.reader.drain():
            self.records += got
        return self.records


@dataclass
class Run:
    pid: int
    records: list[ref.Record]
    header: dict[str, int]
    bias: int  # of the target binary
    stdout: str
    returncode: int
    generation: int  # the region's unwind_generation at the end
    maps: list[Mapping]  # the target's executable mappings (at its start gate)
    allocs: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (size, frames)

    def module_ranges(self, needle: str) -> list[tuple[int, int]]:
        """[start, end) of the executable mappings whose path contains `needle`."""
        found = [(m.start, m.end) for m in self.maps if needle in os.path.basename(m.path)]
        assert found, f"{needle} is not mapped"
        return found

    def __post_init__(self) -> None:
        stacks: dict[int, tuple[int, ...]] = {0: ()}
        for r in self.records:
            if isinstance(r, ref.StackRecord):
                stacks[r.stack_id] = r.frames
            elif isinstance(r, ref.AllocRecord):
                self.allocs.append((r.size, stacks[r.stack_id]))
            elif isinstance(r, ref.AllocRawRecord):
                self.allocs.append((r.size, r.frames))


# What the test does while the target waits at its start gate (region, pid), and
# while it runs (after the gate opened).
Action = Callable[[Region, int], None]


def publish_real_table(region: Region, pid: int) -> None:
    name = write_table(runtime_rows(pid))
    region.ring.publish_unwind(name)


def env_for(region: Region, preload: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ref.ENV)}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    env[ref.ENV] = region.name
    return env


def run_target(argv: Sequence[str | Path], *, at_gate: Action | None = None,
               during: Action | None = None, preload: Path | None = None,
               extra_env: dict[str, str] | None = None, bias_of: Path | None = None) -> Run:
    """Run argv under the shim (preloaded, or linked in when preload is None and
    argv[0] links it), held at the start gate while `at_gate` runs."""
    region = create_region(ring_bytes=4 << 20, hold_at_start=True)
    drainer = Drainer(region.name)
    env = env_for(region, preload)
    env.update(extra_env or {})
    before = set(os.listdir(SHM_DIR))
    proc = subprocess.Popen([str(a) for a in argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while region.ring.pid != proc.pid:  # claimed: now it waits at the gate
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the target never claimed the region"
            time.sleep(0.001)
        held = time.monotonic()
        if at_gate is not None:
            at_gate(region, proc.pid)
        assert time.monotonic() - held < 1.5, "the start gate (2 s at most) would not hold"
        bias = exe_bias(proc.pid, bias_of or Path(argv[0]))
        maps = read_exec_mappings(proc.pid)
        drainer.start()
        region.ring.open_start_gate()
        if during is not None:
            during(region, proc.pid)
        out, err = proc.communicate(timeout=120)
        records = drainer.stop()
        return Run(proc.pid, records, drainer.reader.header(), bias, out + err,
                   proc.returncode, region.ring.unwind_generation, maps)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drainer.stop()
        region.ring.detach()
        region.ring.close()
        region.unlink()
        for name in set(os.listdir(SHM_DIR)) - before:
            path = SHM_DIR / name
            if name.startswith(f"{TABLE_PREFIX}{os.getpid()}-"):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)


# -- Rust targets without frame pointers --------------------------------------------------

LEAK_SIZE, LEAK_COUNT, PATHS = 1024, 500, 50  # tests/targets/src/bin/leak_paths.rs


@pytest.fixture(scope="module")
def leak_paths(targets_nofp: Path) -> tuple[Path, Symbols]:
    binary = targets_nofp / "leak_paths"
    return binary, Symbols(binary)


@pytest.fixture(scope="module")
def heap_exact(targets_nofp: Path) -> tuple[Path, Symbols]:
    binary = targets_nofp / "heap_exact"
    return binary, Symbols(binary)


def leak_stacks(run: Run, syms: Symbols) -> list[tuple[int, ...]]:
    """The stacks of leak_paths' LEAK_COUNT leaks, in allocation order: the blocks
    of LEAK_SIZE bytes allocated straight from `leak_here` (its Vec::with_capacity
    is inlined and malloc is reached by tail calls, so leak_here is the first frame
    with or without a table)."""
    here = syms.ranges("leak_here", run.bias)
    out = [f for size, f in run.allocs if size == LEAK_SIZE and count_in(f[:1], here)]
    assert len(out) == LEAK_COUNT, Counter(size for size, _ in run.allocs)
    return out


def path_frames(run: Run, syms: Symbols, frames: tuple[int, ...]) -> tuple[int, int, int]:
    """(frames in descend, in via_left, in via_right) of one stack."""
    return (count_in(frames, syms.ranges("descend", run.bias)),
            count_in(frames, syms.ranges("via_left", run.bias)),
            count_in(frames, syms.ranges("via_right", run.bias)))


def test_table_gives_every_leak_its_whole_path(leak_paths: tuple[Path, Symbols]) -> None:
    """Leak i goes through path i % 50: via_left (even) or via_right (odd), then
    descend, recursing path // 2 times before calling leak_here. With the table
    each stack has exactly those frames, and goes on through main to _start."""
    binary, syms = leak_paths
    run = run_target([binary, "--linger", "0"], at_gate=publish_real_table,
                     preload=shim_path())
    assert run.returncode == 0, run.stdout
    assert run.generation == 1 and run.header["unwind_generation"] == 1
    assert run.header["dropped"] == 0 and run.header["truncated"] == 0
    start = syms.ranges("_start", run.bias, exact=True)
    main = syms.ranges("leak_paths4main", run.bias)
    for i, frames in enumerate(leak_stacks(run, syms)):
        path = i % PATHS
        expected = (path // 2 + 1, 1 - path % 2, path % 2)
        assert path_frames(run, syms, frames) == expected, (i, [hex(f) for f in frames])
        assert count_in(frames, main) == 1, i
        assert count_in(frames[-1:], start) == 1, i  # _start: its return address is undefined


def test_without_a_table_the_same_build_stops_in_the_first_frames(
        leak_paths: tuple[Path, Symbols], heap_exact: tuple[Path, Symbols]) -> None:
    """The bug the table fixes: the frame-pointer walk of this build loses every
    caller (no descend, no via_*), and where std's out-of-line allocation path
    (aligned blocks: __rdl_alloc -> posix_memalign) is the first frame, the stack
    stops in std, without the worker thread's function that asked for the block."""
    binary, syms = leak_paths
    run = run_target([binary, "--linger", "0"], preload=shim_path())
    assert run.returncode == 0 and run.generation == 0
    for frames in leak_stacks(run, syms):
        assert path_frames(run, syms, frames) == (0, 0, 0), [hex(f) for f in frames]
        assert len(frames) <= 2
    binary, syms = heap_exact
    run = run_target([binary, "--linger", "0"], preload=shim_path())
    assert run.returncode == 0
    rdl = syms.ranges("__rdl_alloc", run.bias)
    worker = syms.ranges("heap_exact6worker", run.bias)
    aligned = [f for size, f in run.allocs if size == 256]
    assert len(aligned) == 8000
    for frames in aligned:
        assert count_in(frames[:1], rdl) == 1  # std's function is the first frame
        assert count_in(frames, worker) == 0 and len(frames) <= 2, [hex(f) for f in frames]


# The allocations of heap_exact's workers (8 threads x 1000 rounds), by size: the
# function that asks for them, and how many there are.
HEAP_EXACT_SITES = {**{100 + t: ("alloc_block", 1000) for t in range(8)},
                    16: ("alloc_block", 8000), 256: ("aligned_block", 8000),
                    48: ("zeroed_block", 8000), 4000: ("grow_block", 8000)}


def check_heap_exact(run: Run, syms: Symbols, complete: float = 1.0) -> None:
    """Every worker allocation has its function and `worker` in its stack, and the
    stack ends in libc (the thread's start: clone3's return address is undefined);
    `complete`: the share of stacks that must be whole (1.0: all)."""
    worker = syms.ranges("heap_exact6worker", run.bias)
    libc = run.module_ranges("libc.so")
    rdl = syms.ranges("__rdl_alloc", run.bias)
    whole = total = 0
    for size, (fn, count) in HEAP_EXACT_SITES.items():
        ranges = syms.ranges(f"heap_exact{len(fn)}{fn}", run.bias)
        stacks = [f for s, f in run.allocs if s == size and count_in(f, ranges)]
        assert len(stacks) == count, (size, fn, len(stacks))
        for frames in stacks:
            total += 1
            whole += count_in(frames, worker) == 1 and count_in(frames[-1:], libc) == 1
            if size == 256:  # std's aligned path: __rdl_alloc first, then aligned_block
                assert count_in(frames[:1], rdl) == 1
    assert whole >= complete * total, (whole, total)
    leaks = [f for s, f in run.allocs if s == 4096]
    assert len(leaks) == 100
    main = syms.ranges("heap_exact4main", run.bias)
    known = syms.ranges("leak_known", run.bias)
    assert all(count_in(f, known) == 1 and count_in(f, main) == 1 for f in leaks)


def test_table_unwinds_every_thread(heap_exact: tuple[Path, Symbols]) -> None:
    binary, syms = heap_exact
    run = run_target([binary, "--linger", "0"], at_gate=publish_real_table,
                     preload=shim_path())
    assert run.returncode == 0, run.stdout
    assert run.header["dropped"] == 0 and run.header["truncated"] == 0
    check_heap_exact(run, syms)


def shifted(rows: list[ref.UnwindRow]) -> list[ref.UnwindRow]:
    """The same rules with one more row in front: every row index moves by one, so an
    index cached from one table names the row before the right one in the other."""
    return [(4096, _ring.UNWIND_NONE, 0, _ring.UNWIND_BP_SAME, 0), *rows]


def publish_at(names: list[str], step: int) -> Action:
    """During the run: publish names[1:] when the ring has taken step, 2 * step, ...
    bytes of records (so every publish lands while the program allocates)."""
    def during(region: Region, pid: int) -> None:
        with ref.ShmReader.open(region.name) as watch:
            deadline = time.monotonic() + 60
            for k, name in enumerate(names[1:], 1):
                while watch.header()["reserve"] < step * k:
                    assert time.monotonic() < deadline, "the program stopped allocating"
                    time.sleep(0.0005)
                region.ring.publish_unwind(name)
    return during


def test_a_new_table_is_used_at_once_and_cached_rows_are_checked(targets_nofp: Path) -> None:
    """One thread (alloc_bench's worker; main only waits for it) allocates 300 000
    times from the same stack while tables are published, each with every row index
    moved by one from the last: the thread's own row hints and the shared cache hold
    indices into the previous table, and must be checked against the new one before
    use. The allocating thread maps each table itself (no other thread allocates),
    so every stack is whole."""
    binary = targets_nofp / "alloc_bench"
    syms = Symbols(binary)
    pairs = 300_000
    names: list[str] = []

    def at_gate(region: Region, pid: int) -> None:
        rows = runtime_rows(pid)
        names.extend(write_table(shifted(rows) if k % 2 else rows) for k in range(8))
        region.ring.publish_unwind(names[0])

    run = run_target([binary, "--pairs", str(pairs)], at_gate=at_gate,
                     during=publish_at(names, 700_000), preload=shim_path())
    assert run.returncode == 0, run.stdout
    assert run.generation == 8 and run.header["dropped"] == 0
    make = syms.ranges("alloc_bench4make", run.bias)
    churn = syms.ranges("alloc_bench5churn", run.bias)
    libc = run.module_ranges("libc.so")  # churn runs in a thread of its own
    stacks = [f for _size, f in run.allocs if count_in(f, make)]
    assert len(stacks) == pairs
    for frames in stacks:
        assert count_in(frames, churn) == 1 and count_in(frames[-1:], libc) == 1, \
            [hex(f) for f in frames]


def test_new_generations_while_threads_allocate(heap_exact: tuple[Path, Symbols]) -> None:
    """The reader publishes new tables while 8 threads allocate (row indices moving
    between tables, as above): one thread maps each, the others never wait (they walk
    with frame pointers meanwhile), old mappings stay valid; nothing is lost and
    every allocation still has its function."""
    binary, syms = heap_exact
    names: list[str] = []

    def at_gate(region: Region, pid: int) -> None:
        rows = runtime_rows(pid)
        names.extend(write_table(shifted(rows) if k % 2 else rows) for k in range(6))
        region.ring.publish_unwind(names[0])

    # heap_exact writes ~970 kB of records, nearly all of them from its workers.
    run = run_target([binary, "--linger", "0"], at_gate=at_gate,
                     during=publish_at(names, 150_000), preload=shim_path())
    assert run.returncode == 0, run.stdout
    assert run.generation == 6 and run.header["dropped"] == 0
    # How many stacks are whole depends on how long the mapping threads were
    # descheduled (a loaded machine: most of the run): some are.
    check_heap_exact(run, syms, complete=0.01)


# -- refused tables -------------------------------------------------------------------------


def corrupt(kind: str, rows: list[ref.UnwindRow]) -> bytes | None:
    """An unwind file the shim must refuse (None: publish a name that is no file)."""
    good = ref.pack_unwind_file(rows)
    head = ref.UNWIND_FILE_HEADER
    magic, version, row_bytes, n, reserved = head.unpack_from(good)
    if kind == "magic":
        return head.pack(magic ^ 1, version, row_bytes, n, reserved) + good[head.size:]
    if kind == "version":
        return head.pack(magic, version - 1, row_bytes, n, reserved) + good[head.size:]
    if kind == "row_bytes":
        return head.pack(magic, version, 24, n, reserved) + good[head.size:]
    if kind == "rows_past_end":
        # Half of one more row: its start (in the file, above every other) would pass
        # the order check, the rest of it is past the end of the file.
        return (head.pack(magic, version, row_bytes, n + 1, reserved) + good[head.size:]
                + (2**64 - 4096).to_bytes(8, "little"))
    if kind == "huge_n_rows":
        return head.pack(magic, version, row_bytes, 1 << 62, reserved) + good[head.size:]
    if kind == "no_rows":
        return head.pack(magic, version, row_bytes, 0, reserved) + good[head.size:]
    if kind == "short_header":
        return good[:head.size - 8]
    if kind == "empty":
        return b""
    if kind == "not_increasing":
        # One row twice: a table a binary search still reads right, so only the
        # check of the order tells it from a good one.
        at = head.size + 16 * (n // 2)
        return (head.pack(magic, version, row_bytes, n + 1, reserved) + good[head.size:at]
                + good[at:at + 16] + good[at:])
    return None


CORRUPTIONS = ["magic", "version", "row_bytes", "rows_past_end", "huge_n_rows", "no_rows",
               "short_header", "empty", "not_increasing", "missing", "fifo", "directory"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_bad_table_is_refused_and_the_walk_uses_frame_pointers(
        leak_paths: tuple[Path, Symbols], kind: str) -> None:
    binary, syms = leak_paths

    def at_gate(region: Region, pid: int) -> None:
        name = table_name()
        path = SHM_DIR / name
        if kind == "fifo":  # opening must not wait for a writer
            os.mkfifo(path, 0o600)
        elif kind == "directory":
            path.mkdir(0o700)
        elif kind != "missing":
            data = corrupt(kind, runtime_rows(pid))
            assert data is not None
            path.write_bytes(data)
        region.ring.publish_unwind(name)

    run = run_target([binary, "--linger", "0"], at_gate=at_gate, preload=shim_path())
    assert run.returncode == 0, run.stdout
    assert run.generation == 1 and run.header["dropped"] == 0
    for frames in leak_stacks(run, syms):  # exactly what the walk without a table gives
        assert path_frames(run, syms, frames) == (0, 0, 0), [hex(f) for f in frames]
        assert len(frames) <= 2


def test_a_newer_generation_replaces_a_refused_one(leak_paths: tuple[Path, Symbols]) -> None:
    """Generation 1 is refused (bad magic) at start-up; generation 2, published while
    the program spins, is mapped at the next allocation: every leak is whole."""
    binary, syms = leak_paths

    def at_gate(region: Region, pid: int) -> None:
        data = corrupt("magic", runtime_rows(pid))
        region.ring.publish_unwind(write_table([], data))

    def during(region: Region, pid: int) -> None:
        region.ring.publish_unwind(write_table(runtime_rows(pid)))

    run = run_target([binary, "--spin", "1.0", "--linger", "0"], at_gate=at_gate,
                     during=during, preload=shim_path())
    assert run.returncode == 0, run.stdout
    assert run.generation == 2
    start = syms.ranges("_start", run.bias, exact=True)
    stacks = leak_stacks(run, syms)
    for i, frames in enumerate(stacks):
        path = i % PATHS
        assert path_frames(run, syms, frames) == (path // 2 + 1, 1 - path % 2, path % 2), i
    # The allocations of start-up (before main) were walked with frame pointers:
    # generation 1 was refused, so none of them reaches _start.
    first_leak = next(k for k, (size, f) in enumerate(run.allocs) if f == stacks[0])
    early = [f for _size, f in run.allocs[:first_leak]]
    assert early and not any(count_in(f[-1:], start) for f in early)


# -- the shim linked in, under ASan and UBSan ----------------------------------------------

# The allocator entry points (the shim's convention: they call it directly and keep
# frame pointers, rsprof_shim.h), built with frame pointers.
ENTRY_C = r"""
#include <stdlib.h>
#include "rsprof_shim.h"

__attribute__((noinline)) void *my_alloc(size_t n)
{
    void *p = malloc(n);
    rsprof_shim_record_alloc(p, n);
    return p;
}

__attribute__((noinline)) void my_free(void *p)
{
    rsprof_shim_record_free(p);
    free(p);
}
"""

# The program's code, built WITHOUT frame pointers (but with CFI). Each worker
# allocates through nest() (recursing `depth` times: sizes 1000 + depth), through a
# frame without CFI but with a frame pointer (fp_only, size 77), and through
# garbage_rbp (a frame pointer and CFI: its CFA is rbp-based) and call_with_rbp,
# which enters my_alloc with rbp = 0xfffffffffffffff0 (size 99): the frame-pointer
# walk then meets a frame record near the top of the address space (it must not
# read there), and the CFI walk takes the real rbp back from call_with_rbp's rules
# (garbage_rbp's CFA needs it). Last, main allocates DEEP times 70 levels down
# (size 5000): more frames than a stack keeps.
USER_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include "rsprof_shim.h"

void *my_alloc(size_t n);
void my_free(void *p);
size_t fp_only(size_t n, void *(*fn)(size_t));
size_t garbage_rbp(size_t n);

#define NTHREADS 4
#define ROUNDS 2000
#define DEEP 3
volatile uintptr_t sink;

__attribute__((noinline)) size_t leaf_alloc(size_t n)
{
    char *p = my_alloc(n);
    p[0] = 1;
    sink += (uintptr_t)p;
    my_free(p);
    return n;
}

__attribute__((noinline)) size_t nest(int depth, size_t n)
{
    if (depth == 0)
        return leaf_alloc(n);
    return nest(depth - 1, n) + 1;
}

__attribute__((noinline)) size_t through_fp_only(size_t n)
{
    return fp_only(n, my_alloc) + 1;
}

__attribute__((noinline)) void *worker(void *arg)
{
    uintptr_t t = (uintptr_t)arg;
    for (int i = 0; i < ROUNDS; i++) {
        int depth = (int)((i + t) % 20);
        sink += nest(depth, 1000 + (size_t)depth);
        sink += garbage_rbp(99);
        sink += through_fp_only(77);
    }
    return NULL;
}

int main(void)
{
    if (!rsprof_shim_init()) {
        fprintf(stderr, "no region\n");
        return 2;
    }
    /* The first walk maps the table: here, before the threads race for it (the
     * losers would walk with frame pointers while the winner maps it). */
    my_free(my_alloc(1));
    pthread_t th[NTHREADS];
    for (uintptr_t t = 0; t < NTHREADS; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    for (int i = 0; i < DEEP; i++)
        sink += nest(70, 5000);
    printf("done %d\n", rsprof_shim_recording());
    return 0;
}
"""

# A frame with a frame pointer and no CFI at all (no .eh_frame, no .debug_frame: its
# rows are NONE): the CFI walk takes one frame-pointer step through it.
FP_ONLY_C = r"""
#include <stddef.h>
#include <stdint.h>
extern volatile uintptr_t sink;
void my_free(void *p);

__attribute__((noinline)) size_t fp_only(size_t n, void *(*fn)(size_t))
{
    void *p = fn(n);
    sink += (uintptr_t)p;
    my_free(p);
    return n;
}
"""

# Frame pointers and CFI: the rules of garbage_rbp say CFA = rbp + 16.
FP_CFI_C = r"""
#include <stddef.h>
#include <stdint.h>
extern volatile uintptr_t sink;
void *my_alloc(size_t n);
void my_free(void *p);
void *call_with_rbp(size_t n, uintptr_t rbp, void *(*fn)(size_t));

__attribute__((noinline)) size_t garbage_rbp(size_t n)
{
    void *p = call_with_rbp(n, (uintptr_t)0xfffffffffffffff0ull, my_alloc);
    sink += (uintptr_t)p;
    my_free(p);
    return n;
}
"""

RBP_S = r"""
    .text
    .globl call_with_rbp
    .type call_with_rbp, @function
call_with_rbp:                 /* (n, rbp, fn): fn(n) with rbp set to `rbp` */
    .cfi_startproc
    push %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
    mov %rsi, %rbp
    call *%rdx
    pop %rbp
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
    .size call_with_rbp, .-call_with_rbp
    .section .note.GNU-stack,"",@progbits
"""

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-g",
            "-pthread", "-Wall", "-Wextra", "-Werror", "-fno-optimize-sibling-calls"]


def gcc(*args: str | Path) -> None:
    assert GCC is not None
    result = subprocess.run([GCC, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0 and ("asan" in result.stderr or "ubsan" in result.stderr):
        pytest.skip(f"no sanitizer runtime: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Symbols]:
    """The program above with the shim (from csrc) linked in, ASan + UBSan."""
    if GCC is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("cfi_asan")
    for name, text in [("entry.c", ENTRY_C), ("user.c", USER_C), ("fp_only.c", FP_ONLY_C),
                       ("fp_cfi.c", FP_CFI_C), ("rbp.S", RBP_S)]:
        (d / name).write_text(text)
    objs = []
    for src, flags in [(CSRC / "rsprof_shim.c", ["-O1", "-fno-omit-frame-pointer"]),
                       (d / "entry.c", ["-O1", "-fno-omit-frame-pointer"]),
                       (d / "user.c", ["-O2", "-fomit-frame-pointer"]),
                       (d / "fp_only.c", ["-O1", "-fno-omit-frame-pointer", "-g0",
                                          "-fno-asynchronous-unwind-tables",
                                          "-fno-unwind-tables"]),
                       (d / "fp_cfi.c", ["-O1", "-fno-omit-frame-pointer"]),
                       (d / "rbp.S", [])]:
        obj = d / (src.stem + ".o")
        gcc(*SANITIZE, *flags, "-I", CSRC, "-c", "-o", obj, src)
        objs.append(obj)
    out = d / "cfi_asan"
    gcc(*SANITIZE, "-o", out, *objs)
    return out, Symbols(out)


def run_sanitized(binary: Path, at_gate: Action | None) -> Run:
    env = {"ASAN_OPTIONS": "abort_on_error=0:detect_leaks=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    run = run_target([binary], at_gate=at_gate, extra_env=env)
    assert "Sanitizer" not in run.stdout and "runtime error" not in run.stdout, \
        run.stdout[-4000:]
    assert run.returncode == 0 and run.stdout.startswith("done 1"), run.stdout[-4000:]
    assert run.header["dropped"] == 0
    return run


def by_size(run: Run, size: int) -> list[tuple[int, ...]]:
    out = [f for s, f in run.allocs if s == size]
    expected = 3 if size == 5000 else 4 * 2000 // (20 if size >= 1000 else 1)
    assert len(out) == expected, (size, len(out))
    return out


def test_sanitized_cfi_walk(sanitized: tuple[Path, Symbols]) -> None:
    binary, syms = sanitized
    run = run_sanitized(binary, publish_real_table)
    assert run.generation == 1
    assert run.header["truncated"] == 3  # the DEEP stacks, cut at MAX_FRAMES
    r = {name: syms.ranges(name, run.bias, exact=True)
         for name in ["leaf_alloc", "nest", "garbage_rbp", "call_with_rbp", "worker",
                      "fp_only", "through_fp_only"]}
    libc = run.module_ranges("libc.so")
    for depth in range(20):
        for frames in by_size(run, 1000 + depth):
            assert count_in(frames[:1], r["leaf_alloc"]) == 1
            assert count_in(frames, r["nest"]) == depth + 1, [hex(f) for f in frames]
            assert count_in(frames, r["worker"]) == 1
            assert count_in(frames[-1:], libc) == 1  # to the thread's start
    for frames in by_size(run, 99):  # the CFI of call_with_rbp restores the real rbp
        assert count_in(frames[:1], r["call_with_rbp"]) == 1
        assert count_in(frames, r["garbage_rbp"]) == 1 and count_in(frames, r["worker"]) == 1
        assert count_in(frames[-1:], libc) == 1
    for frames in by_size(run, 77):  # fp_only has no CFI: one frame-pointer step
        assert count_in(frames[:1], r["fp_only"]) == 1
        assert count_in(frames, r["through_fp_only"]) == 1
        assert count_in(frames, r["worker"]) == 1
    for frames in by_size(run, 5000):
        assert len(frames) == ref.MAX_FRAMES
        assert count_in(frames, r["nest"]) == ref.MAX_FRAMES - 1


def test_sanitized_frame_pointer_walk_never_reads_a_wrapped_frame(
        sanitized: tuple[Path, Symbols]) -> None:
    """No table: frame pointers only, and one frame record says rbp =
    0xfffffffffffffff0: its 16 bytes end past the top of the address space, which a
    bounds check written as `fp + 16 > hi` let through (a SIGSEGV)."""
    binary, syms = sanitized
    run = run_sanitized(binary, None)
    assert run.generation == 0 and run.header["truncated"] == 0
    call = syms.ranges("call_with_rbp", run.bias, exact=True)
    for frames in by_size(run, 99):
        assert frames and count_in(frames[:1], call) == 1
        assert len(frames) == 1  # the walk stops at the garbage frame record
