"""The unwind table the shim walks heap stacks with: _unwind.Unwinder.runtime_rows()
(every module's CFI rows at runtime addresses, merged into one table) and
rsprof/recording/heap_unwind.py (the file under /dev/shm, published to a region),
and the removal of tables an rsprof that died left behind.

Real objects (libc, a Rust target) are checked row by row against their own
CfiTable.rows() and a plain-Python merge, and by lookups at every row edge;
hand-built sections against exact rows."""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import random
import re
import sqlite3
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from rsprof import _ring, _unwind, shm_reference
from rsprof.recording import heap_region, heap_unwind
from rsprof.recording.heap_region import SHM_DIR, Region, create_region, remove_stale_regions
from rsprof.recording.heap_unwind import FILE_HEADER, UnwindTableFile, write_table
from rsprof.recording.unwind_info import UnwindSections
from tests.unit.test_cfi import (
    LIBC,
    RSP,
    EhFrame,
    _cpu_split,
    _sections,
    adv,
    def_cfa,
    def_cfa_offset,
    undefined,
)

ROW = struct.Struct("<QihbB")  # struct rsprof_cfi_row: start, cfa_off, bp_off, ra_off, kind
KINDS = {"none": 0, "sp": 1, "bp": 2, "plt11": 3, "plt10": 4, "outermost": 5,
         "unsupported": 6}
SAME = -32768  # RSPROF_CFI_SAME: bp_off of a frame that leaves rbp alone
NONE_RULE = (0, SAME, 0, 0)  # (cfa_off, bp_off, ra_off, kind) of a NONE row
PAGE = 4096

Rule = tuple[int, int, int, int]
Module = tuple[int, int, int, UnwindSections | None]


def _rows(data: bytes) -> list[tuple[int, Rule]]:
    assert len(data) % ROW.size == 0
    return [(start, (cfa, bp, ra, kind)) for start, cfa, bp, ra, kind in ROW.iter_unpack(data)]


def _object_rows(src: UnwindSections) -> list[tuple[int, Rule]]:
    table = _unwind.CfiTable(src.eh_frame, src.eh_frame_vaddr, src.debug_frame)
    return [(start, (cfa, SAME if bp is None else bp, ra, KINDS[kind]))
            for start, kind, cfa, bp, ra in table.rows()]


def _expected(modules: list[Module]) -> list[tuple[int, Rule]]:
    """runtime_rows() as its docstring says, in plain Python."""
    mods = sorted(modules, key=lambda m: (m[0], m[1]))
    out: list[tuple[int, Rule]] = []

    def emit(start: int, rule: Rule) -> None:
        if out and out[-1][0] >= start:
            out.pop()
        if out and out[-1][1] == rule:
            return
        out.append((start, rule))

    for i, (start, end, bias, src) in enumerate(mods):
        if i + 1 < len(mods):
            end = min(end, mods[i + 1][0])
        if end <= start:
            continue
        rows = _object_rows(src) if src is not None else []
        before = [r for r in rows if r[0] <= start - bias]
        emit(start, before[-1][1] if before else NONE_RULE)
        for obj_start, rule in rows:
            if start - bias < obj_start < end - bias:
                emit(obj_start + bias, rule)
        emit(end, NONE_RULE)
    return out


def _lookup(rows: list[tuple[int, Rule]], addr: int) -> Rule:
    i = bisect.bisect_right(rows, addr, key=lambda r: r[0])
    return rows[i - 1][1] if i else NONE_RULE


def _exec_range(path: str | Path) -> tuple[int, int]:
    """Object vaddrs of the executable PT_LOAD, widened to pages (as it is mapped)."""
    with open(path, "rb") as fh:
        segs = [s for s in ELFFile(fh).iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1]
    assert len(segs) == 1
    lo = segs[0]["p_vaddr"] & ~(PAGE - 1)
    hi = (segs[0]["p_vaddr"] + segs[0]["p_memsz"] + PAGE - 1) & ~(PAGE - 1)
    return lo, hi


def _runtime(modules: list[Module]) -> list[tuple[int, Rule]]:
    u = _unwind.Unwinder()
    u.set_modules(modules)
    return _rows(u.runtime_rows())


LIBC_BIAS = 0x7F3A_1230_0000
RUST_BIAS = 0x5555_5555_4000


@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    """libc and a Rust program laid out as a process maps them, and a module without
    CFI (the vdso)."""
    rust = _cpu_split()
    libc_src, rust_src = _sections(LIBC), _sections(rust)
    (llo, lhi), (rlo, rhi) = _exec_range(LIBC), _exec_range(rust)
    vdso = LIBC_BIAS + lhi  # right after libc's code
    modules: list[Module] = [
        (LIBC_BIAS + llo, LIBC_BIAS + lhi, LIBC_BIAS, libc_src),
        (RUST_BIAS + rlo, RUST_BIAS + rhi, RUST_BIAS, rust_src),
        (vdso, vdso + 2 * PAGE, 0, None),
    ]
    return {"modules": modules, "libc": libc_src, "rust": rust_src, "vdso": vdso}


def test_real_objects_rows_are_their_own_shifted_by_the_bias(real: dict[str, Any]) -> None:
    modules: list[Module] = real["modules"]
    rows = _runtime(modules)
    starts = [r[0] for r in rows]
    assert starts == sorted(set(starts))  # strictly increasing
    assert all(a[1] != b[1] for a, b in itertools.pairwise(rows))  # merged
    assert rows == _expected(modules)
    runtime = dict(rows)
    for start, end, bias, src in modules:
        if src is None:
            continue
        own = _object_rows(src)
        inside = [(s, rule) for s, rule in own if start - bias < s < end - bias]
        assert len(inside) > 1000
        for s, rule in inside:  # every row of the object, at its runtime address
            assert runtime.get(s + bias) == rule, hex(s)
        # The rule that covers the module's first address starts there (unless the
        # row before, the gap, has it already: NONE below the first FDE).
        covering = [rule for s, rule in own if s <= start - bias]
        first = covering[-1] if covering else NONE_RULE
        assert runtime.get(start, first) == first and _lookup(rows, start) == first
        assert start in runtime or _lookup(rows, start - 1) == first
        # NONE from the end on (the gap, or the vdso), unless the last row was NONE.
        assert runtime.get(end, NONE_RULE) == NONE_RULE == _lookup(rows, end)
        # Nothing else: the rows inside the module are exactly its own.
        assert len([s for s in starts if start <= s < end]) == len(inside) + (start in runtime)
    # The vdso, without rules: NONE from its start (libc's end) on, to the end.
    assert rows[-1][1] == NONE_RULE and rows[-1][0] <= real["vdso"]
    assert rows[0][0] == modules[1][0]  # the lowest module first


def test_real_objects_lookups_match_each_object_at_every_edge(real: dict[str, Any]) -> None:
    modules: list[Module] = real["modules"]
    rows = _runtime(modules)
    rnd = random.Random(7)
    checked = 0
    for start, end, bias, src in modules:
        if src is None:
            probes = [start, start + 1, end - 1, end]
            assert all(_lookup(rows, a) == NONE_RULE for a in probes)
            continue
        own = _object_rows(src)
        probes = [start - 1, start, end - 1, end]
        for s, _rule in own:
            probes += [s + bias - 1, s + bias, s + bias + 1]
        probes += [rnd.randrange(start, end) for _ in range(2000)]
        for a in probes:
            want = _lookup(own, a - bias) if start <= a < end else NONE_RULE
            assert _lookup(rows, a) == want, hex(a)
            checked += 1
    assert checked > 10000


def test_modules_cut_inside_the_rows_are_clipped(real: dict[str, Any]) -> None:
    src: UnwindSections = real["libc"]
    own = _object_rows(src)
    bias = 0x10000
    i = next(k for k in range(100, len(own)) if own[k + 1][0] - own[k][0] > 4
             and own[k][1] != NONE_RULE)
    j = next(k for k in range(5000, len(own)) if own[k][1] != NONE_RULE
             and own[k - 1][1] != NONE_RULE)
    # Starts 3 bytes into row i, ends 1 byte before row j: both cut.
    lo, hi = own[i][0] + 3 + bias, own[j][0] - 1 + bias
    rows = _runtime([(lo, hi, bias, src)])
    assert rows[0] == (lo, own[i][1])
    assert rows[-1] == (hi, NONE_RULE)  # not row j's rules
    assert rows[1:-1] == [(s + bias, rule) for s, rule in own[i + 1:j]]
    # A module that starts exactly on a row: no extra row before it.
    lo = own[i][0] + bias
    rows = _runtime([(lo, hi, bias, src)])
    assert rows[0] == (lo, own[i][1]) and rows[1][0] == own[i + 1][0] + bias


def _synthetic() -> tuple[UnwindSections, UnwindSections]:
    a = EhFrame(0x800)
    c = a.cie()
    a.fde(c, 0x100, 0x20, adv(1) + def_cfa_offset(16))
    a.fde(c, 0x120, 0x10, adv(2) + def_cfa_offset(16))  # ends with the rules of the next
    b = EhFrame(0x800)
    c = b.cie()
    b.fde(c, 0x40, 0x10, def_cfa_offset(16) + adv(4) + def_cfa(RSP, 8))
    b.fde(c, 0x80, 0x10, undefined(16))
    return UnwindSections(a.bytes(), a.vaddr, None), UnwindSections(b.bytes(), b.vaddr, None)


SP8, SP16 = (8, SAME, -8, 1), (16, SAME, -8, 1)
OUTERMOST = (0, SAME, 0, 5)


def test_hand_built_modules_give_exact_rows() -> None:
    a, b = _synthetic()
    assert _object_rows(a) == [(0x100, SP8), (0x101, SP16), (0x120, SP8), (0x122, SP16),
                               (0x130, NONE_RULE)]
    assert _object_rows(b) == [(0x40, SP16), (0x44, SP8), (0x50, NONE_RULE),
                               (0x80, OUTERMOST), (0x90, NONE_RULE)]
    # a (runtime = vaddr + 0x10000) up to 0x10130, where b (vaddr + 0x100F0) starts with
    # its row 0x40: a's last rules, so not repeated (a's own 0x130 NONE is past its end).
    modules: list[Module] = [(0x10130, 0x10200, 0x100F0, b), (0x10000, 0x10130, 0x10000, a)]
    assert _runtime(modules) == [
        (0x10000, NONE_RULE),  # a's first address is below its first FDE
        (0x10100, SP8), (0x10101, SP16), (0x10120, SP8), (0x10122, SP16),
        (0x10134, SP8), (0x10140, NONE_RULE), (0x10170, OUTERMOST),
        (0x10180, NONE_RULE),  # up to b's end and beyond
    ]
    assert _runtime(modules) == _expected(modules)


def test_modules_without_rules_are_none_rows() -> None:
    a, _b = _synthetic()
    empty = UnwindSections(b"", 0, None)
    assert _runtime([(0x5000, 0x6000, 0, None)]) == [(0x5000, NONE_RULE)]
    assert _runtime([(0x5000, 0x6000, 0x5000, empty)]) == [(0x5000, NONE_RULE)]
    # Below a module with rules, and right after one whose rules reach its end.
    modules: list[Module] = [(0xF000, 0x10000, 0, None), (0x10000, 0x10125, 0x10000, a),
                             (0x10125, 0x10200, 0x10125, empty)]
    assert _runtime(modules) == [
        (0xF000, NONE_RULE), (0x10100, SP8), (0x10101, SP16), (0x10120, SP8),
        (0x10122, SP16), (0x10125, NONE_RULE)]
    assert _runtime(modules) == _expected(modules)


def test_neighbours_gaps_and_overlaps() -> None:
    a, b = _synthetic()
    # b's rules reach its end: a NONE row at the end, or the next module's rules there.
    alone = _runtime([(0x10040, 0x10045, 0x10000, b)])
    assert alone == [(0x10040, SP16), (0x10044, SP8), (0x10045, NONE_RULE)]
    touching = _runtime([(0x10040, 0x10045, 0x10000, b), (0x10045, 0x10050, 0x10045, None)])
    assert touching == alone
    gap = _runtime([(0x10040, 0x10045, 0x10000, b), (0x20000, 0x20200, 0x1FF00, a)])
    assert gap == [*alone, (0x20000, SP8), (0x20001, SP16), (0x20020, SP8), (0x20022, SP16),
                   (0x20030, NONE_RULE)]
    # Overlapping modules: the one with the greater start owns the overlap (as the
    # CPU unwinder decides), the other ends where it starts.
    over: list[Module] = [(0x10000, 0x10200, 0x10000, b), (0x10042, 0x10300, 0x10000, a)]
    assert _runtime(over) == [
        (0x10000, NONE_RULE), (0x10040, SP16),  # b, up to where a starts
        (0x10042, NONE_RULE), (0x10100, SP8), (0x10101, SP16), (0x10120, SP8),
        (0x10122, SP16), (0x10130, NONE_RULE)]
    assert _runtime(over) == _expected(over)
    u = _unwinder(over)
    assert u.unwind_py(_unwind.UNWIND_DWARF, 0x10044, 0x1000, 0, b"")[1] == "no_rule"
    assert _runtime([]) == []
    assert _runtime([(0x5000, 0x5000, 0, b), (0x6000, 0x5000, 0, a)]) == []  # empty ranges


def test_every_table_is_built_at_once() -> None:
    a, b = _synthetic()
    u = _unwind.Unwinder()
    u.set_modules([(0x10000, 0x11000, 0x10000, a), (0x20000, 0x21000, 0x20000, b),
                   (0x30000, 0x31000, 0x30000, a)])
    assert u.tables_built == 0
    first = u.runtime_rows()
    assert u.tables_built == 2  # one per source object, not lazily
    assert u.runtime_rows() == first and u.tables_built == 2
    assert _unwind.CFI_ROW_BYTES == ROW.size == 16


# ---- the file under /dev/shm ---------------------------------------------------------------

def _region_unwind(region: Region) -> tuple[int, str]:
    """(unwind_generation, unwind_name) of the region's header, as the shim reads them
    (rsprof/shm_reference.py maps the region file on its own)."""
    ref = shm_reference.ShmReader.open(region.name)
    try:
        gen = ref.header()["unwind_generation"]
        assert gen == region.ring.unwind_generation
        return gen, ref.unwind_name
    finally:
        ref.close()


@pytest.fixture
def region() -> Any:
    r = create_region(ring_bytes=1 << 16)
    try:
        yield r
    finally:
        r.ring.close()
        r.unlink()


def _unwinder(modules: list[Module]) -> _unwind.Unwinder:
    u = _unwind.Unwinder()
    u.set_modules(modules)
    return u


def _read_table(name: str) -> tuple[tuple[int, ...], bytes, os.stat_result]:
    path = SHM_DIR / name
    data = path.read_bytes()
    return FILE_HEADER.unpack_from(data), data[FILE_HEADER.size:], path.stat()


def test_table_file_holds_the_header_and_rows_and_is_published(
        region: Region, real: dict[str, Any]) -> None:
    warnings: list[str] = []
    table = UnwindTableFile(region, warnings.append)
    u = _unwinder(real["modules"])
    assert table.method == "fp" and table.generation == 0
    try:
        assert table.refresh(u)
        assert table.method == "cfi" and not warnings
        [name] = table.names
        assert re.fullmatch(rf"rsprof-unwind-{os.getpid()}-[0-9a-f]{{16}}", name), name
        assert len(name) < 64
        header, body, st = _read_table(name)
        rows = u.runtime_rows()
        assert header == (_ring.UNWIND_MAGIC, _ring.SHM_VERSION, 16, len(rows) // 16, 0)
        assert body == rows and st.st_size == 32 + len(rows)
        # What the shim accepts (rsprof_shm.h's rules, in the pure-Python reader).
        accepted = shm_reference.unpack_unwind_file((SHM_DIR / name).read_bytes())
        assert [(r[0], (r[2], r[3], r[4], r[1])) for r in accepted] == _rows(rows)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        assert table.rows == len(rows) // 16 > 30000
        assert _region_unwind(region) == (table.generation, name)
        assert table.generation == 1
        assert not table.refresh(u)  # the same modules: nothing new
        assert table.names == [name] and _region_unwind(region) == (1, name)
    finally:
        table.close()


def test_a_refresh_writes_a_new_file_and_close_unlinks_them(
        region: Region, real: dict[str, Any]) -> None:
    table = UnwindTableFile(region)
    libc, rust, _vdso = real["modules"]
    u = _unwinder([libc])
    assert table.refresh(u)
    first = table.names[-1]
    first_bytes = (SHM_DIR / first).read_bytes()
    names = [first]
    # Modules mapped since, or unmapped: a new file each time, the old one untouched.
    for gen, modules in [(2, [libc, rust]), (3, [rust])]:
        u.set_modules(modules)
        assert table.refresh(u)
        assert _region_unwind(region) == (gen, table.names[-1])
        assert table.generation == gen and table.names[-1] not in names
        names.append(table.names[-1])
        assert _read_table(names[-1])[1] == u.runtime_rows()
        assert table.names == names[-2:]  # the published file and the one before it
        if gen == 2:
            assert (SHM_DIR / first).read_bytes() == first_bytes  # never written again
    assert not (SHM_DIR / first).exists()  # older ones are unlinked
    assert not table.refresh(u) and table.generation == 3
    table.close()
    assert table.names == []
    assert not [n for n in names if (SHM_DIR / n).exists()]
    assert table.method == "cfi"  # what the shim has mapped stays valid


def test_failures_are_a_warning_and_frame_pointers(
        region: Region, real: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    u = _unwinder(real["modules"])
    warnings: list[str] = []
    table = UnwindTableFile(region, warnings.append, directory=tmp_path / "missing")
    assert not table.refresh(u)  # ENOENT
    assert table.method == "fp" and table.generation == 0 and table.names == []
    assert len(warnings) == 1 and "heap stacks walk frame pointers" in warnings[0]
    assert "No such file or directory" in warnings[0]

    def no_fd(*args: Any, **kw: Any) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    table = UnwindTableFile(region, warnings.append, directory=tmp_path)
    with monkeypatch.context() as m:
        m.setattr(os, "open", no_fd)
        assert not table.refresh(u)
    assert "Too many open files" in warnings[-1] and table.method == "fp"
    with monkeypatch.context() as m:
        m.setattr(os, "posix_fallocate", no_space)
        assert not table.refresh(u)
    assert "No space left on device" in warnings[-1] and list(tmp_path.iterdir()) == []
    assert table.refresh(u) and table.method == "cfi"  # works again
    with monkeypatch.context() as m:  # a failed refresh keeps the published table
        m.setattr(os, "posix_fallocate", no_space)
        u.set_modules(real["modules"][:1])
        assert not table.refresh(u)
    assert "newly mapped code walk frame pointers" in warnings[-1]
    assert table.method == "cfi" and len(table.names) == 1
    assert table.failures == 3 and len(warnings) == 4
    table.close()
    assert list(tmp_path.iterdir()) == []
    # Rows the shim would refuse are never written.
    with pytest.raises(ValueError):
        write_table(b"", tmp_path)
    with pytest.raises(ValueError):
        write_table(b"x" * 17, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stale_tables_of_dead_readers_are_removed() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [heap_unwind.unwind_file_name(dead.pid), heap_unwind.unwind_file_name(live.pid),
                 heap_unwind.unwind_file_name()]
        for name in names:
            (SHM_DIR / name).write_bytes(b"\0" * 48)
        remove_stale_regions()
        exists = [(SHM_DIR / n).exists() for n in names]
        assert exists == [False, True, True]
    finally:
        live.kill()
        live.wait()
        for name in names:
            (SHM_DIR / name).unlink(missing_ok=True)
    assert heap_region.PREFIX == "rsprof-"


@pytest.mark.integration
@pytest.mark.parametrize("unwind", ["auto", "fp"])
def test_rsprof_run_maps_the_table_before_the_program_starts(
        run_rsprof: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path,
        unwind: str) -> None:
    """The program waits at the start gate until the table is published: its main()
    already finds the file mapped. With --unwind fp there is none."""
    db = tmp_path / "maps.db"
    result = run_rsprof("run", "--unwind", unwind, "-o", str(db), "--", "/bin/cat",
                        "/proc/self/maps", check=True)
    mapped = [line.split()[-1] for line in result.stdout.splitlines()
              if line.split()[-1].startswith(f"/dev/shm/{heap_unwind.UNWIND_PREFIX}")]
    with sqlite3.connect(db) as conn:
        (method,) = conn.execute("SELECT value FROM meta WHERE key = 'heap_unwind'").fetchone()
    if unwind == "fp":
        assert mapped == [] and method == "fp"
        return
    assert method == "cfi" and len(mapped) == 1, result.stdout
    assert re.fullmatch(r"/dev/shm/rsprof-unwind-\d+-[0-9a-f]{16}", mapped[0])
    assert not Path(mapped[0]).exists()  # unlinked when the recording ended
    assert "unwind table" not in result.stderr
