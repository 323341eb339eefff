"""The DWARF CFI unwinder: csrc/rsprof_cfi.c (rule tables), _unwind.CfiTable and
_unwind.Unwinder, and rsprof/recording/unwind_info.py (finding the sections).

Real objects are checked against pyelftools' decoded CFI; hand-built sections
against exact rows; a stack laid out by hand through three modules against
exact frames and stop reasons; random and mutated sections must never crash
or hang; and a real program built without frame pointers is unwound from a
copy of its own stack."""

from __future__ import annotations

import bisect
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from elftools.dwarf.callframe import FDE, RegisterRule
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from rsprof import _unwind
from rsprof.recording.unwind_info import UnwindSections, read_unwind_sections
from rsprof.shim import shim_path

ROOT = Path(__file__).resolve().parent.parent.parent
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
CPU_SPLIT = ROOT / "tests" / "targets" / "target" / "release" / "cpu_split"

RSP, RBP, RBX, RA = 7, 6, 3, 16
PLT11 = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])
PLT10 = PLT11[:6] + b"\x3a" + PLT11[7:]


# ---- encoding helpers --------------------------------------------------------------------

def uleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def sleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        done = (v == 0 and not b & 0x40) or (v == -1 and b & 0x40)
        out.append(b | (0 if done else 0x80))
        if done:
            return bytes(out)


def adv(n: int) -> bytes:
    if n < 0x40:
        return bytes([0x40 | n])
    if n < 0x100:
        return b"\x02" + bytes([n])
    if n < 0x10000:
        return b"\x03" + struct.pack("<H", n)
    return b"\x04" + struct.pack("<I", n)


def def_cfa(reg: int, off: int) -> bytes:
    return b"\x0c" + uleb(reg) + uleb(off)


def def_cfa_offset(off: int) -> bytes:
    return b"\x0e" + uleb(off)


def def_cfa_register(reg: int) -> bytes:
    return b"\x0d" + uleb(reg)


def def_cfa_expr(expr: bytes) -> bytes:
    return b"\x0f" + uleb(len(expr)) + expr


def offset(reg: int, factored: int) -> bytes:  # saved at CFA + factored * data_align
    return bytes([0x80 | reg]) + uleb(factored)


def restore(reg: int) -> bytes:
    return bytes([0xC0 | reg])


def undefined(reg: int) -> bytes:
    return b"\x07" + uleb(reg)


REMEMBER, RESTORE_STATE, NOP = b"\x0a", b"\x0b", b"\x00"
CIE_X86 = def_cfa(RSP, 8) + offset(RA, 1)  # what every x86-64 CIE starts with


class EhFrame:
    """A hand-built .eh_frame loaded at vaddr: FDE addresses pcrel|sdata4."""

    def __init__(self, vaddr: int = 0x8000) -> None:
        self.vaddr = vaddr
        self.buf = bytearray()

    def _entry(self, body: bytes, dwarf64: bool = False) -> int:
        off = len(self.buf)
        if dwarf64:
            self.buf += b"\xff\xff\xff\xff" + struct.pack("<Q", len(body)) + body
        else:
            self.buf += struct.pack("<I", len(body)) + body
        return off

    def cie(self, insns: bytes = CIE_X86, aug: bytes = b"zR", aug_data: bytes = b"\x1b",
            version: int = 1, code_align: int = 1, data_align: int = -8, ra: int = RA,
            dwarf64: bool = False) -> int:
        body = b"\0\0\0\0" + bytes([version]) + aug + b"\0"
        if aug == b"eh":
            body += b"\0" * 8  # old GCC: the eh_ptr
        body += uleb(code_align) + sleb(data_align) + (bytes([ra]) if version == 1 else uleb(ra))
        if aug.startswith(b"z"):
            body += uleb(len(aug_data)) + aug_data
        return self._entry(body + insns, dwarf64)

    def fde(self, cie: int, start: int, size: int, insns: bytes = b"", aug_data: bytes = b"",
            dwarf64: bool = False, absolute: bool = False, z: bool = True,
            where: bytes | None = None) -> int:
        """absolute: 8-byte addresses (the CIE says absptr/udata8), else pcrel sdata4,
        or `where` as given; z: the CIE's augmentation starts with "z" (FDEs carry
        augmentation data)."""
        off = len(self.buf)
        id_pos = off + (12 if dwarf64 else 4)
        field = id_pos + 4
        if where is None and absolute:
            where = struct.pack("<QQ", start, size)
        elif where is None:
            where = struct.pack("<iI", start - (self.vaddr + field), size)
        body = (struct.pack("<I", id_pos - cie) + where
                + (uleb(len(aug_data)) + aug_data if z else b"") + insns)
        return self._entry(body, dwarf64)

    def bytes(self) -> bytes:
        return bytes(self.buf) + b"\0\0\0\0"


class DebugFrame:
    """A hand-built .debug_frame: CIE pointers are section offsets, addresses absolute."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def cie(self, insns: bytes = CIE_X86, version: int = 1, dwarf64: bool = False) -> int:
        off = len(self.buf)
        cie_id = b"\xff" * (8 if dwarf64 else 4)
        body = cie_id + bytes([version]) + b"\0"
        if version == 4:
            body += b"\x08\x00"  # address_size, segment_size
        body += uleb(1) + sleb(-8) + (bytes([RA]) if version == 1 else uleb(RA)) + insns
        self._entry(body, dwarf64)
        return off

    def fde(self, cie: int, start: int, size: int, insns: bytes = b"",
            dwarf64: bool = False) -> None:
        ptr = struct.pack("<Q", cie) if dwarf64 else struct.pack("<I", cie)
        self._entry(ptr + struct.pack("<QQ", start, size) + insns, dwarf64)

    def _entry(self, body: bytes, dwarf64: bool) -> None:
        if dwarf64:
            self.buf += b"\xff\xff\xff\xff" + struct.pack("<Q", len(body)) + body
        else:
            self.buf += struct.pack("<I", len(body)) + body

    def bytes(self) -> bytes:
        return bytes(self.buf)


# ---- pyelftools as the reference ---------------------------------------------------------

@dataclass
class RefFde:
    start: int
    end: int
    prio: int
    lines: list[dict[Any, Any]] | None  # None: pyelftools cannot decode it
    ra_reg: int


def _ref_fdes(path: str | Path, eh: bool = True, debug: bool = True) -> list[RefFde]:
    out: list[RefFde] = []
    with open(path, "rb") as fh:
        dwarf = ELFFile(fh).get_dwarf_info()
        sources = []
        if eh and dwarf.has_EH_CFI():
            sources.append(dwarf.EH_CFI_entries())
        if debug and dwarf.has_CFI():
            sources.append(dwarf.CFI_entries())
        for entries in sources:
            for entry in entries:
                if not isinstance(entry, FDE):
                    continue
                start = entry["initial_location"]
                lines: list[dict[Any, Any]] | None
                try:
                    # pyelftools scales def_cfa_sf by the code alignment: not a reference
                    if any(i.opcode == 0x12 for i in entry.instructions):
                        raise ValueError
                    lines = entry.get_decoded().table
                except Exception:
                    lines = None
                assert entry.cie is not None
                out.append(RefFde(start, start + entry["address_range"], len(out), lines,
                                  entry.cie["return_address_register"]))
    return out


def _expected(line: dict[Any, Any], ra_reg: int) -> tuple[Any, ...]:
    ra = line.get(ra_reg)
    if ra is not None and ra.type == RegisterRule.UNDEFINED:
        return ("outermost",)
    cfa = line["cfa"]
    kind, cfa_off = None, 0
    if cfa.expr is not None:
        if bytes(cfa.expr) in (PLT11, PLT10):
            kind, cfa_off = "plt", 8
    elif cfa.reg in (RSP, RBP) and -(1 << 31) <= cfa.offset < 1 << 31:
        kind, cfa_off = ("sp" if cfa.reg == RSP else "bp"), cfa.offset
    if ra is None or ra.type != RegisterRule.OFFSET or not -128 <= ra.arg <= 127:
        kind = None
    bp = line.get(RBP)
    bp_off = None
    if bp is not None and bp.type == RegisterRule.OFFSET and -32767 <= bp.arg <= 32767:
        bp_off = bp.arg
    elif bp is not None and bp.type not in (RegisterRule.SAME_VALUE, RegisterRule.UNDEFINED):
        kind = None
    if kind is None or ra is None:
        return ("unsupported",)
    return (kind, cfa_off, bp_off, ra.arg)


def _owner(fdes: list[RefFde], starts: list[int], max_end: list[int], addr: int
           ) -> RefFde | None:
    """The FDE that owns addr: of those covering it, the first in section order."""
    i = bisect.bisect_right(starts, addr) - 1
    best = None
    while i >= 0 and max_end[i] > addr:
        f = fdes[i]
        if f.start <= addr < f.end and (best is None or f.prio < best.prio):
            best = f
        i -= 1
    return best


def _check_against_reference(table: _unwind.CfiTable, ref: list[RefFde]) -> int:
    """Every line of every FDE (first, middle and last address) and the address after
    every FDE; returns the number of addresses checked."""
    fdes = sorted((f for f in ref if f.end > f.start), key=lambda f: (f.start, f.prio))
    assert fdes
    starts = [f.start for f in fdes]
    max_end, m = [], 0
    for f in fdes:
        m = max(m, f.end)
        max_end.append(m)
    checked = 0

    def check(addr: int) -> None:
        nonlocal checked
        owner = _owner(fdes, starts, max_end, addr)
        got = table.lookup(addr)
        if owner is None:
            assert got is None, hex(addr)
        elif owner.lines is not None:
            line = None
            for candidate in owner.lines:  # the last line starting at or below addr
                if candidate["pc"] <= addr:
                    line = candidate
            assert line is not None, hex(addr)
            want = _expected(line, owner.ra_reg)
            assert got is not None, hex(addr)
            assert got[: len(want)] == want, (hex(addr), got, want, line)
        else:
            return
        checked += 1

    for f in fdes:
        if f.lines is None:
            continue
        pcs = sorted({ln["pc"] for ln in f.lines if f.start <= ln["pc"] < f.end} | {f.start})
        for lo, hi in zip(pcs, [*pcs[1:], f.end], strict=True):
            for addr in {lo, (lo + hi) // 2, hi - 1}:
                check(addr)
        check(f.end)
    check(fdes[0].start - 1)
    return checked


def _sections(path: str | Path) -> UnwindSections:
    with open(path, "rb") as fh:
        found = read_unwind_sections(fh.read())
    assert found is not None
    return found


def _table(path: str | Path) -> _unwind.CfiTable:
    s = _sections(path)
    return _unwind.CfiTable(s.eh_frame, s.eh_frame_vaddr, s.debug_frame)


def _cpu_split() -> Path:
    if not CPU_SPLIT.is_file():
        if shutil.which("cargo") is None:
            pytest.skip("cargo is not installed and cpu_split is not built")
        subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"],
                       cwd=ROOT / "tests" / "targets", check=True)
    return CPU_SPLIT


def _real_objects() -> list[Path]:
    return [Path(LIBC), shim_path(), _cpu_split()]


def _gcc(tmp: Path, name: str, source: str, *flags: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = tmp / f"{name}.c"
    src.write_text(textwrap.dedent(source))
    out = tmp / name
    subprocess.run(["gcc", *flags, str(src), "-o", str(out)], check=True)
    return out


# ---- real objects against pyelftools ------------------------------------------------------

@pytest.mark.parametrize("which", ["libc", "shim", "cpu_split"])
def test_rows_of_real_objects_match_pyelftools(which: str) -> None:
    path = dict(zip(["libc", "shim", "cpu_split"], _real_objects(), strict=True))[which]
    table = _table(path)
    ref = _ref_fdes(path)
    assert table.fde_count == len(ref)
    assert table.bad_entries == 0
    checked = _check_against_reference(table, ref)
    assert checked > 3 * len(ref) // 2
    decoded = sum(f.lines is not None for f in ref)
    assert decoded >= len(ref) - 5  # pyelftools refuses a few (e.g. DW_CFA_GNU_args_size)
    kinds = {row[1] for row in table.rows()}
    assert {"sp", "none"} <= kinds
    if which == "shim":  # linked by binutils ld with a lazy .plt: the PLT expression
        assert "plt11" in kinds
    if which == "libc":  # _start/clone end the stack with an undefined return address
        assert "outermost" in kinds


def test_debug_frame_alone_and_with_eh_frame_match_pyelftools(tmp_path: Path) -> None:
    source = """
        #include <string.h>
        __attribute__((noipa)) int leaf(int x) { char b[64]; memset(b, x, 64); return b[x & 63]; }
        __attribute__((noipa)) int mid(int x) { return leaf(x) * 3 + leaf(x + 1); }
        int main(int argc, char **argv) { (void)argv; return mid(argc); }
    """
    flags = ("-g", "-O2", "-fno-asynchronous-unwind-tables", "-fno-omit-frame-pointer")
    lib = _gcc(tmp_path, "lib.so", source, *flags, "-shared", "-nostdlib", "-fPIC")
    found = _sections(lib)
    assert found.debug_frame is not None and len(found.debug_frame) > 0
    table = _unwind.CfiTable(found.eh_frame, found.eh_frame_vaddr, found.debug_frame)
    ref = _ref_fdes(lib)
    assert ref and table.fde_count == len(ref)
    assert _check_against_reference(table, ref) > len(ref)
    assert "bp" in {row[1] for row in table.rows()}  # -fno-omit-frame-pointer: CFA = rbp + 16
    # Without .eh_frame at all: the same rows.
    assert _unwind.CfiTable(None, 0, found.debug_frame).rows() == table.rows()

    # An executable: .eh_frame from the C runtime's objects, .debug_frame for ours.
    exe = _gcc(tmp_path, "exe", source, *flags)
    both = _sections(exe)
    assert len(both.eh_frame) > 0 and both.debug_frame is not None
    table = _unwind.CfiTable(both.eh_frame, both.eh_frame_vaddr, both.debug_frame)
    ref = _ref_fdes(exe)
    assert table.fde_count == len(ref)
    assert _check_against_reference(table, ref) > len(ref)
    eh_only = _unwind.CfiTable(both.eh_frame, both.eh_frame_vaddr, None)
    assert eh_only.fde_count == len(_ref_fdes(exe, debug=False)) < table.fde_count


# ---- read_unwind_sections ------------------------------------------------------------------

def _section_facts(path: str | Path) -> dict[str, tuple[int, int]]:
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        return {s.name: (s["sh_addr"], s["sh_size"]) for s in elf.iter_sections()
                if s.name in (".eh_frame", ".debug_frame") and s["sh_type"] != "SHT_NOBITS"}


def test_sections_match_pyelftools_and_are_views(tmp_path: Path) -> None:
    lib = _gcc(tmp_path, "d.so", "int f(int x) { return x + 1; }\n", "-g", "-O2",
               "-fno-asynchronous-unwind-tables", "-shared", "-nostdlib", "-fPIC")
    for path in [*_real_objects(), lib]:
        data = path.read_bytes()
        found = read_unwind_sections(memoryview(data))
        facts = _section_facts(path)
        assert found is not None
        eh = facts.get(".eh_frame")
        assert (found.eh_frame_vaddr, len(found.eh_frame)) == (eh if eh and eh[1] else (0, 0))
        debug = facts.get(".debug_frame")
        assert (len(found.debug_frame) if found.debug_frame is not None else None) == (
            debug[1] if debug else None)
        assert isinstance(found.eh_frame, memoryview)
        assert found.eh_frame.obj is data  # a view of the input, not a copy
    assert _section_facts(lib)[".debug_frame"][1] > 0


def _without_section_headers(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[0x28:0x30] = b"\0" * 8  # e_shoff
    raw[0x3C:0x40] = b"\0" * 4  # e_shnum, e_shstrndx
    return bytes(raw)


def test_eh_frame_is_found_through_pt_gnu_eh_frame_without_section_headers() -> None:
    for path in _real_objects():
        data = path.read_bytes()
        with_headers = read_unwind_sections(data)
        stripped = read_unwind_sections(_without_section_headers(data))
        assert with_headers is not None and stripped is not None
        assert stripped.eh_frame_vaddr == with_headers.eh_frame_vaddr
        assert len(stripped.eh_frame) >= len(with_headers.eh_frame)
        assert bytes(stripped.eh_frame[: len(with_headers.eh_frame)]) == bytes(
            with_headers.eh_frame)
        # The zero terminator ends the section: the same table either way.
        full = _unwind.CfiTable(with_headers.eh_frame, with_headers.eh_frame_vaddr)
        found = _unwind.CfiTable(stripped.eh_frame, stripped.eh_frame_vaddr)
        assert found.rows() == full.rows() and found.fde_count == full.fde_count


def test_unreadable_files_give_none() -> None:
    good = Path(LIBC).read_bytes()
    assert read_unwind_sections(b"") is None
    assert read_unwind_sections(b"\x7fELF") is None
    assert read_unwind_sections(b"not an elf file" * 100) is None
    big_endian = bytearray(good[:4096])
    big_endian[5] = 2
    assert read_unwind_sections(bytes(big_endian)) is None
    elf32 = bytearray(good[:4096])
    elf32[4] = 1
    assert read_unwind_sections(bytes(elf32)) is None
    # Truncations and corrupted headers: None or sections, never an exception.
    rng = random.Random(3)
    for cut in [64, 100, 1000, 5000, len(good) // 2]:
        read_unwind_sections(good[:cut])
    for _ in range(300):
        raw = bytearray(good[:65536])
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(0x40) if rng.random() < 0.5 else rng.randrange(len(raw))
            raw[pos] = rng.randrange(256)
        read_unwind_sections(bytes(raw))
    # No section headers and no PT_GNU_EH_FRAME: nothing to find.
    stripped = bytearray(_without_section_headers(good))
    struct.pack_into("<H", stripped, 0x38, 0)  # e_phnum
    assert read_unwind_sections(bytes(stripped)) is None


# ---- hand-built sections: exact rows --------------------------------------------------------

def _synthetic_eh() -> EhFrame:
    eh = EhFrame(0x8000)
    c = eh.cie()
    # Listed first though it sits highest: FDEs need not be sorted. The .plt: PLT0
    # pushes twice, then every 16-byte entry follows the binutils expression.
    eh.fde(c, 0x2000, 0x40, def_cfa_offset(16) + adv(6) + def_cfa_offset(24) + adv(10)
           + def_cfa_expr(PLT11))
    # push rbp; mov rbp, rsp; ... an epilogue in the middle under remember/restore_state.
    eh.fde(c, 0x1000, 0x40, adv(1) + def_cfa_offset(16) + offset(RBP, 2) + adv(3)
           + def_cfa_register(RBP) + adv(0x2C) + REMEMBER + def_cfa(RSP, 8) + restore(RBP)
           + adv(1) + RESTORE_STATE + NOP + NOP)
    # Adjacent, without frame pointer: push rbx (not tracked); sub rsp, 32.
    eh.fde(c, 0x1040, 0x20, adv(1) + def_cfa_offset(16) + offset(RBX, 2) + adv(4)
           + def_cfa_offset(48))
    # Overlaps the two above: only its part past 0x1060 counts, in the state it has there.
    eh.fde(c, 0x1050, 0x20, def_cfa_offset(32) + adv(0x18) + def_cfa_offset(40))
    # Rules that are not modelled: each an unsupported row.
    eh.fde(c, 0x3000, 0x14, def_cfa_expr(b"\x77\x08\x06") + adv(4) + def_cfa(RSP, 16) + adv(4)
           + def_cfa(RBX, 8) + adv(4) + def_cfa(RSP, 8) + b"\x09" + uleb(RBP) + uleb(RBX)
           + adv(4) + restore(RBP) + b"\x10" + uleb(RA) + uleb(2) + b"\x77\x00")
    # Adjacent: the outermost frame (_start): the return address is undefined.
    eh.fde(c, 0x3014, 0x0C, undefined(RA))
    eh.fde(c, 0x3100, 0)  # an empty range covers nothing
    # Overlap the other way round: the one listed first starts later, inside the other.
    eh.fde(c, 0x4040, 0x40, def_cfa_offset(64))
    eh.fde(c, 0x4000, 0x100, adv(0x20) + def_cfa_offset(16) + adv(0x40) + def_cfa_offset(24))
    return eh


def test_hand_built_eh_frame_gives_exact_rows() -> None:
    eh = _synthetic_eh()
    table = _unwind.CfiTable(eh.bytes(), eh.vaddr)
    assert table.rows() == [
        (0x1000, "sp", 8, None, -8),
        (0x1001, "sp", 16, -16, -8),
        (0x1004, "bp", 16, -16, -8),
        (0x1030, "sp", 8, None, -8),  # after `leave`: CFA back on rsp, rbp restored
        (0x1031, "bp", 16, -16, -8),  # restore_state: the body's rules again
        (0x1040, "sp", 8, None, -8),
        (0x1041, "sp", 16, None, -8),
        (0x1045, "sp", 48, None, -8),
        (0x1060, "sp", 32, None, -8),  # the overlapping FDE, from where it is alone
        (0x1068, "sp", 40, None, -8),
        (0x1070, "none", 0, None, 0),
        (0x2000, "sp", 16, None, -8),
        (0x2006, "sp", 24, None, -8),
        (0x2010, "plt11", 8, None, -8),
        (0x2040, "none", 0, None, 0),
        (0x3000, "unsupported", 0, None, 0),
        (0x3004, "sp", 16, None, -8),
        (0x3008, "unsupported", 0, None, 0),
        (0x3014, "outermost", 0, None, 0),
        (0x3020, "none", 0, None, 0),
        (0x4000, "sp", 8, None, -8),
        (0x4020, "sp", 16, None, -8),
        (0x4040, "sp", 64, None, -8),  # listed first: its coverage
        (0x4080, "sp", 24, None, -8),  # then the other's, in the state it has there
        (0x4100, "none", 0, None, 0),
    ]
    assert table.fde_count == 9 and table.bad_entries == 0
    assert table.unsupported_rows == 2 and table.row_count == 25
    assert table.memory_bytes == 25 * 16
    assert table.lookup(0xFFF) is None
    assert table.lookup(0x1003) == ("sp", 16, -16, -8)
    assert table.lookup(0x103F) == ("bp", 16, -16, -8)
    assert table.lookup(0x1070) is None
    assert table.lookup(0x2011) == ("plt", 8, None, -8)
    assert table.lookup(0x3009) == ("unsupported", 0, None, 0)
    assert table.lookup(0x301F) == ("outermost", 0, None, 0)
    assert table.lookup(1 << 63) is None


def test_every_instruction_and_augmentation_is_decoded() -> None:
    eh = EhFrame(0x100000)
    # Version 3 (uleb RA column), a personality (indirect pcrel sdata4), an LSDA
    # encoding, a signal frame, FDE pointers udata8 absolute.
    c3 = eh.cie(aug=b"zPLRS", aug_data=b"\x9b" + struct.pack("<i", -64) + b"\x1b" + b"\x04",
                version=3)
    c_eh = eh.cie(aug=b"eh")  # old GCC: an 8-byte eh_ptr after the string, absptr FDEs
    c64 = eh.cie(dwarf64=True, code_align=4, data_align=-4)
    eh.fde(c3, 0x1000, 0x100, aug_data=b"\0\0\0\0", absolute=True, insns=(
        adv(1) + b"\x11" + uleb(RBP) + sleb(3)                      # offset_extended_sf: -24
        + b"\x02\x10" + b"\x12" + uleb(RSP) + sleb(-4)              # advance_loc1, def_cfa_sf
        + b"\x03\x10\x00" + b"\x13" + sleb(-6)                      # advance_loc2, offset_sf
        + b"\x04\x10\x00\x00\x00" + b"\x2e" + uleb(64)              # advance_loc4, args_size
        + b"\x05" + uleb(RBP) + uleb(4)                              # offset_extended: -32
        + adv(4) + b"\x08" + uleb(RBP)                               # same_value
        + adv(4) + b"\x2f" + uleb(RBP) + uleb(1)                     # negative_offset_ext: +8
        + adv(4) + b"\x06" + uleb(RBP)                               # restore_extended
        + adv(4) + b"\x14" + uleb(RBX) + uleb(1) + b"\x15" + uleb(RBX) + sleb(1)
        + b"\x16" + uleb(RBX) + uleb(1) + b"\x30"                    # val_* of rbx: ignored
        + adv(4) + b"\x14" + uleb(RBP) + uleb(2)                     # val_offset rbp: no
        + adv(4) + undefined(RBP)                                    # undefined rbp: kept
        + adv(4) + def_cfa_expr(PLT10)))
    # set_loc, its operand in the FDE's encoding (here absptr)
    eh.fde(c_eh, 0x2000, 0x40, absolute=True, z=False,
           insns=b"\x01" + struct.pack("<Q", 0x2010) + def_cfa_offset(32))
    eh.fde(c64, 0x3000, 0x40, dwarf64=True, insns=adv(2) + def_cfa_offset(24))
    c_uleb = eh.cie(aug_data=b"\x01")  # FDE addresses as absolute ulebs
    eh.fde(c_uleb, 0, 0, where=uleb(0x4000) + uleb(0x20), insns=adv(1) + def_cfa_offset(16))
    table = _unwind.CfiTable(eh.bytes(), eh.vaddr)
    assert table.bad_entries == 0 and table.fde_count == 4
    assert table.rows() == [
        (0x1000, "sp", 8, None, -8),
        (0x1001, "sp", 8, -24, -8),
        (0x1011, "sp", 32, -24, -8),      # def_cfa_sf: -4 * data_align -8
        (0x1021, "sp", 48, -24, -8),      # def_cfa_offset_sf: -6 * -8
        (0x1031, "sp", 48, -32, -8),
        (0x1035, "sp", 48, None, -8),
        (0x1039, "sp", 48, 8, -8),
        (0x103D, "sp", 48, None, -8),     # restore_extended: the CIE's rule (none)
        (0x1045, "unsupported", 0, None, 0),
        (0x1049, "sp", 48, None, -8),
        (0x104D, "plt10", 8, None, -8),
        (0x1100, "none", 0, None, 0),
        (0x2000, "sp", 8, None, -8),      # "eh" augmentation, absolute udata8 pointers
        (0x2010, "sp", 32, None, -8),     # set_loc
        (0x2040, "none", 0, None, 0),
        (0x3000, "sp", 8, None, -4),      # 64-bit entry, data alignment -4
        (0x3008, "sp", 24, None, -4),     # code alignment 4
        (0x3040, "none", 0, None, 0),
        (0x4000, "sp", 8, None, -8),
        (0x4001, "sp", 16, None, -8),
        (0x4020, "none", 0, None, 0),
    ]


def test_debug_frame_versions_and_priority_of_eh_frame() -> None:
    eh = EhFrame(0x8000)
    c = eh.cie()
    eh.fde(c, 0x1000, 0x20, adv(4) + def_cfa_offset(16))
    dbg = DebugFrame()
    c1 = dbg.cie()
    c4 = dbg.cie(version=4)
    c64 = dbg.cie(version=3, dwarf64=True)
    dbg.fde(c1, 0x1000, 0x30, def_cfa_offset(64))       # covered by .eh_frame up to 0x1020
    dbg.fde(c4, 0x4000, 0x10, adv(2) + def_cfa_offset(24))
    dbg.fde(c64, 0x5000, 0x10, adv(3) + def_cfa(RBP, 16) + offset(RBP, 2), dwarf64=True)
    table = _unwind.CfiTable(eh.bytes(), eh.vaddr, dbg.bytes())
    assert table.bad_entries == 0 and table.fde_count == 4
    assert table.rows() == [
        (0x1000, "sp", 8, None, -8),
        (0x1004, "sp", 16, None, -8),
        (0x1020, "sp", 64, None, -8),  # the .debug_frame FDE where .eh_frame is silent
        (0x1030, "none", 0, None, 0),
        (0x4000, "sp", 8, None, -8),
        (0x4002, "sp", 24, None, -8),
        (0x4010, "none", 0, None, 0),
        (0x5000, "sp", 8, None, -8),
        (0x5003, "bp", 16, -16, -8),
        (0x5010, "none", 0, None, 0),
    ]
    only_debug = _unwind.CfiTable(b"", 0, dbg.bytes())
    assert only_debug.lookup(0x1001) == ("sp", 64, None, -8)
    assert _unwind.CfiTable(None, 0, None).row_count == 0
    assert _unwind.CfiTable(memoryview(eh.bytes()), eh.vaddr).rows() == _unwind.CfiTable(
        eh.bytes(), eh.vaddr).rows()


def test_bad_entries_are_skipped_and_counted() -> None:
    eh = EhFrame(0x8000)
    c = eh.cie()
    bad_version = eh.cie()
    eh.buf[bad_version + 8] = 9
    eh.fde(c, 0x1000, 0x10, adv(1) + def_cfa_offset(16))
    eh.fde(bad_version, 0x2000, 0x10)                       # its CIE is bad
    eh.fde(c, 0x3000, 0x10, REMEMBER * 17)                  # state stack overflow
    eh.fde(c, 0x4000, 0x10, RESTORE_STATE)                  # nothing remembered
    eh.fde(c, 0x5000, 0x10, b"\x3f")                        # unknown opcode
    eh.fde(c, 0x6000, 0x10, adv(4) + b"\x01" + struct.pack("<i", -0x7000))  # set_loc back
    eh.fde(c, 0x7000, 0x10, def_cfa_expr(b"\x77") + b"\x0f\x7f")  # a block past the end
    fde_at = len(eh.buf)
    eh.fde(c, 0x8000, 0x10)
    struct.pack_into("<I", eh.buf, fde_at + 4, fde_at + 4 + 1000)  # CIE pointer before 0
    eh.fde(c, 0x9000, 0x10, adv(2) + def_cfa_offset(32))
    table = _unwind.CfiTable(eh.bytes(), eh.vaddr)
    assert table.bad_entries == 7
    assert table.fde_count == 2
    assert table.rows() == [
        (0x1000, "sp", 8, None, -8), (0x1001, "sp", 16, None, -8), (0x1010, "none", 0, None, 0),
        (0x9000, "sp", 8, None, -8), (0x9002, "sp", 32, None, -8), (0x9010, "none", 0, None, 0),
    ]
    # A length running past the section: nothing after it can be found.
    raw = bytearray(eh.bytes())
    struct.pack_into("<I", raw, fde_at, 0x7FFFFFF0)
    cut = _unwind.CfiTable(bytes(raw), eh.vaddr)
    assert cut.bad_entries == 7 and cut.lookup(0x9000) is None and cut.lookup(0x1000)


# ---- hand-built modules and stacks: exact frames and stop reasons ---------------------------

SP0 = 0x7FFD0000
A_BIAS, B_BIAS, C_BIAS = 0x10000, 0x1F000, 0x30000


def _modules() -> tuple[list[tuple[int, int, int, UnwindSections | None]], dict[str, Any]]:
    a = EhFrame(0x800)
    ca = a.cie()
    a.fde(ca, 0x100, 0x100, adv(4) + def_cfa_offset(32))            # sub rsp, 24
    a.fde(ca, 0x300, 0x10, def_cfa(RSP, 0) + offset(RA, 0))       # broken: CFA = sp
    a.fde(ca, 0x400, 0x40, def_cfa_offset(16) + adv(16) + def_cfa_expr(PLT11))
    a.fde(ca, 0x500, 0x10, def_cfa_expr(b"\x70\x00"))              # unsupported
    # g: no frame pointer, rbp a general register: push rbp; sub rsp, 16
    a.fde(ca, 0x600, 0x80, adv(1) + def_cfa_offset(16) + offset(RBP, 2) + adv(4)
          + def_cfa_offset(32))
    b = EhFrame(0x1800)
    cb = b.cie()
    # f: push rbp; mov rbp, rsp; ...; call (the last instruction: returns to the end)
    b.fde(cb, 0x1300, 0x80, adv(1) + def_cfa_offset(16) + offset(RBP, 2) + adv(3)
          + def_cfa_register(RBP))
    b.fde(cb, 0x1380, 0x80, undefined(RA))                         # the next function
    c = EhFrame(0x900)
    cc = c.cie()
    c.fde(cc, 0x500, 0x100, adv(1) + def_cfa_offset(16))           # main: one push
    c.fde(cc, 0x600, 0x100, undefined(RA))                         # _start
    src = {
        "a": UnwindSections(a.bytes(), a.vaddr, None),
        "b": UnwindSections(b.bytes(), b.vaddr, None),
        "c": UnwindSections(c.bytes(), c.vaddr, None),
    }
    mods = [
        (0x30000, 0x31000, C_BIAS, src["c"]),
        (0x10000, 0x11000, A_BIAS, src["a"]),
        (0x20000, 0x21000, B_BIAS, src["b"]),
        (0x40000, 0x41000, 0, None),                               # code without CFI
    ]
    return mods, src


def _stack(values: dict[int, int], size: int = 0x60) -> bytes:
    raw = bytearray(size)
    for off, v in values.items():
        if off + 8 <= size:
            struct.pack_into("<Q", raw, off, v)
    return bytes(raw)


# A in f (sp + 32), B in f (frame record at sp + 48), C in main (one push), C's _start.
GOOD = {24: 0x20380, 48: 0x1234, 56: 0x30580, 72: 0x30650}
IP_A = 0x10150
BP_B = SP0 + 48


def _unwinder() -> tuple[_unwind.Unwinder, dict[str, Any]]:
    mods, src = _modules()
    u = _unwind.Unwinder()
    u.set_modules(mods)
    return u, src


def test_synthetic_stack_unwinds_through_three_modules() -> None:
    u, _ = _unwinder()
    assert u.tables_built == 0  # built lazily
    want = [IP_A, 0x2037F, 0x3057F, 0x3064F]
    for mode in (_unwind.UNWIND_DWARF, _unwind.UNWIND_AUTO):
        assert u.unwind_py(mode, IP_A, SP0, BP_B, _stack(GOOD)) == (want, "end")
    assert u.tables_built == 3
    # The return address 0x20380 is the end of B's f, where the outermost _start-like
    # function starts: looked up at pc - 1 it is f's frame.
    assert u.unwind_py(_unwind.UNWIND_DWARF, IP_A, SP0, BP_B, _stack({**GOOD, 72: 0})) == (
        want[:3], "end")  # a zero return address ends the stack
    # From A's g, which keeps the caller's rbp on the stack: B's bp-based CFA needs it.
    ip_g = A_BIAS + 0x650
    g_stack = _stack({16: BP_B, 24: 0x20380, 48: 0x1234, 56: 0x30580, 72: 0x30650})
    assert u.unwind_py(_unwind.UNWIND_DWARF, ip_g, SP0, 0x5555, g_stack) == (
        [ip_g, *want[1:]], "end")
    assert u.unwound == 4 and u.stops["end"] == 4
    assert u.last_stop == _unwind.STOP_END and _unwind.STOP_REASONS[u.last_stop] == "end"


def test_stop_reasons() -> None:
    u, _ = _unwinder()
    dwarf, auto, fp = _unwind.UNWIND_DWARF, _unwind.UNWIND_AUTO, _unwind.UNWIND_FP
    stack = _stack(GOOD)
    # STACK_END: the copy ends before the next return address.
    assert u.unwind_py(dwarf, IP_A, SP0, BP_B, stack[:76]) == (
        [IP_A, 0x2037F, 0x3057F], "stack_end")
    assert u.unwind_py(dwarf, IP_A, SP0, BP_B, stack[:20]) == ([IP_A], "stack_end")
    # MAX: only when there is more to come.
    assert u.unwind_py(dwarf, IP_A, SP0, BP_B, stack, max_frames=2) == (
        [IP_A, 0x2037F], "max")
    assert u.unwind_py(dwarf, IP_A, SP0, BP_B, stack, max_frames=4)[1] == "end"
    assert u.unwind_py(dwarf, IP_A, SP0, BP_B, stack, max_frames=0) == ([], "max")
    # NO_MODULE
    assert u.unwind_py(dwarf, 0x50000, SP0, BP_B, stack) == ([0x50000], "no_module")
    # NO_RULE: no CFI for the module, no FDE at pc, an unsupported rule; AUTO then takes
    # one frame-pointer step (bp = B's frame record: C's main returns into _start).
    for ip in (0x40010, A_BIAS + 0x50, A_BIAS + 0x505):
        assert u.unwind_py(dwarf, ip, SP0, BP_B, stack) == ([ip], "no_rule")
        assert u.unwind_py(auto, ip, SP0, BP_B, stack) == ([ip, 0x3057F, 0x3064F], "end")
    # Frame pointers only: the FP step from B's record, then 0x1234 is no frame.
    assert u.unwind_py(fp, IP_A, SP0, BP_B, stack) == ([IP_A, 0x3057F], "bad_frame")
    # BAD_FRAME: a return address in no module (not emitted); a garbage rbp for a
    # bp-based CFA; a CFA that does not move sp up; an FP step from a bp below sp.
    assert u.unwind_py(dwarf, IP_A, SP0, BP_B, _stack({**GOOD, 24: 0x99999})) == (
        [IP_A], "bad_frame")
    assert u.unwind_py(dwarf, IP_A, SP0, 0x1234, stack) == ([IP_A, 0x2037F], "bad_frame")
    assert u.unwind_py(dwarf, A_BIAS + 0x304, SP0, BP_B, _stack({0: 0x20380})) == (
        [A_BIAS + 0x304], "bad_frame")
    assert u.unwind_py(auto, 0x40010, SP0, SP0 - 16, stack) == ([0x40010], "bad_frame")
    stops = u.stops
    assert set(stops) == set(_unwind.STOP_REASONS.values())
    assert stops["bad_frame"] == 5 and stops["no_rule"] == 3 and stops["max"] == 2


def test_plt_rule_depends_on_the_offset_in_the_entry() -> None:
    u, _ = _unwinder()
    # In a .plt entry before its push (offset < 11): CFA = sp + 8; after: sp + 16.
    before, after = A_BIAS + 0x414, A_BIAS + 0x41B
    assert u.unwind_py(_unwind.UNWIND_DWARF, before, SP0, 0, _stack({0: 0x30580}, 16)) == (
        [before, 0x3057F], "stack_end")
    assert u.unwind_py(_unwind.UNWIND_DWARF, after, SP0, 0, _stack({8: 0x30580}, 24)) == (
        [after, 0x3057F], "stack_end")


def test_tables_are_built_once_per_source_object() -> None:
    mods, src = _modules()
    u = _unwind.Unwinder()
    u.set_modules(mods)
    u.unwind_py(_unwind.UNWIND_DWARF, IP_A, SP0, BP_B, _stack(GOOD))
    assert u.tables_built == 3
    u.set_modules([*mods, (0x60000, 0x61000, 0x60000 - 0x1000, src["b"])])  # a new mapping
    assert u.module_count == 5
    u.unwind_py(_unwind.UNWIND_DWARF, IP_A, SP0, BP_B, _stack(GOOD))
    u.unwind_py(_unwind.UNWIND_DWARF, 0x60000 + 0x304, SP0, SP0 + 16, _stack({24: 0x30580}))
    assert u.tables_built == 3 and u.memory_bytes > 0
    # New (equal) objects are new sources; a source no longer listed is dropped.
    u.set_modules([(s, e, b, UnwindSections(x.eh_frame, x.eh_frame_vaddr, None)
                    if x is not None else None) for s, e, b, x in mods])
    assert u.unwind_py(_unwind.UNWIND_DWARF, IP_A, SP0, BP_B, _stack(GOOD))[1] == "end"
    assert u.tables_built == 6
    # A source whose sections are unusable is a module without CFI, not an error.
    u.set_modules([(0x10000, 0x11000, A_BIAS, object())])
    assert u.unwind_py(_unwind.UNWIND_DWARF, IP_A, SP0, 0, b"") == ([IP_A], "no_rule")


# ---- fuzz -----------------------------------------------------------------------------------

FUZZ = r"""
import ctypes, mmap, random, struct, sys
from rsprof import _unwind

# Every input ends where an inaccessible page starts: a read past it crashes.
PAGE = mmap.PAGESIZE
SPAN = 16 * PAGE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

def guarded():
    mm = mmap.mmap(-1, SPAN + PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    assert libc.mprotect(addr + SPAN, PAGE, 0) == 0
    return mm

def at_guard(mm, data):
    mm[SPAN - len(data):SPAN] = data
    return memoryview(mm)[SPAN - len(data):SPAN]

def entries(data):
    pos, out = 0, []
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length in (0, 0xFFFFFFFF) or pos + 4 + length > len(data):
            break
        out.append((pos, length))
        pos += 4 + length
    return out

def cut_last(data):
    # One entry, shortened by a few bytes (its length field agreeing), made the last
    # thing in the section: every operand read can run into the guard page.
    found = entries(data)
    if not found:
        return bytes(data)
    pos, length = rng.choice(found)
    k = rng.randint(1, min(length, 12))
    out = bytearray(data[: pos + 4 + length - k])
    struct.pack_into("<I", out, pos, length - k)
    return bytes(out)

sections, stacks = guarded(), guarded()
seeds = [bytes.fromhex(h) for h in sys.argv[1:]]
rng = random.Random(1234)
n = 0
for i in range(4000):
    base = bytearray(rng.choice(seeds))
    how = i % 5
    if how == 4:
        data = cut_last(base)
    elif how == 0:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    else:
        for _ in range(rng.randint(1, 12)):
            if base:
                base[rng.randrange(len(base))] = rng.choice(
                    [0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        if how == 2 and base:
            del base[rng.randrange(len(base)):]
        if how == 3 and len(base) > 8:
            at = rng.randrange(len(base) - 4)
            struct.pack_into("<I", base, at, rng.choice([0, 0xFFFFFFFF, 1, 4, 0x7FFFFFFF]))
        data = bytes(base)
    vaddr = rng.choice([0, 0x8000, (1 << 64) - 16, rng.randrange(1 << 64)])
    view = at_guard(sections, data)
    t = _unwind.CfiTable(view, vaddr, view if i % 3 == 0 else None)
    del view
    rows = t.rows()
    assert all(a[0] < b[0] for a, b in zip(rows, rows[1:]))
    for _ in range(4):
        t.lookup(rng.randrange(1 << 64))
    n += 1
u = _unwind.Unwinder()
mods = []
for k, s in enumerate(seeds):
    class Src:
        eh_frame = s
        eh_frame_vaddr = 0x8000
        debug_frame = s
    mods.append((0x10000 * (k + 1), 0x10000 * (k + 1) + 0x8000, 0x10000 * (k + 1), Src()))
u.set_modules(mods)
for i in range(3000):
    stack = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 256)))
    if rng.random() < 0.5:
        stack = b"".join(struct.pack("<Q", rng.choice([0, 0x10000 * rng.randint(1, 4)
                                                      + rng.randrange(0x8000),
                                                      rng.randrange(1 << 64)]))
                         for _ in range(32))
    ip = 0x10000 * rng.randint(1, 4) + rng.randrange(0x8000)
    sp = rng.choice([0x7ff000, (1 << 64) - 64, 0])
    view = at_guard(stacks, stack)
    u.unwind_py(rng.choice([1, 2, 3]), ip, sp, sp + rng.randrange(-64, 512) & (2**64 - 1),
                view, rng.randrange(0, 130))
    del view
print("ok", n, u.unwound)
"""


def test_fuzzed_sections_never_crash_or_hang() -> None:
    eh = _synthetic_eh()
    mods, _ = _modules()
    dbg = DebugFrame()
    c = dbg.cie(version=4)
    dbg.fde(c, 0x1000, 0x40, adv(1) + def_cfa_offset(16) + REMEMBER + adv(2) + RESTORE_STATE)
    libc_eh = _sections(LIBC).eh_frame
    seeds = [eh.bytes(), dbg.bytes(), bytes(libc_eh[:4096])] + [
        bytes(m[3].eh_frame) for m in mods if m[3] is not None]
    # In a child: a crash or a hang fails this test instead of killing the run.
    out = subprocess.run([sys.executable, "-c", FUZZ, *(s.hex() for s in seeds)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:2] == ["ok", "4000"]


# ---- a real program without frame pointers ------------------------------------------------

PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char copy[1 << 16];
static uint64_t stack_top;
static volatile int sink;

__attribute__((noipa)) void leaf(const char *path) {
    volatile char pad[40];
    uint64_t rip, rsp, rbp;
    pad[0] = 1;
    __asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2"
                     : "=r"(rip), "=r"(rsp), "=r"(rbp));
    size_t n = stack_top - rsp;
    if (n > sizeof copy)
        n = sizeof copy;
    memcpy(copy, (const void *)rsp, n);
    FILE *f = fopen(path, "wb");
    fwrite(copy, 1, n, f);
    fclose(f);
    printf("regs %lx %lx %lx\n", (unsigned long)rip, (unsigned long)rsp, (unsigned long)rbp);
    sink += pad[0];
}

__attribute__((noipa)) void mid(const char *path, int k) {
    volatile char pad[200];
    pad[k & 7] = (char)k;
    leaf(path);
    sink += pad[3];
}

__attribute__((noipa)) void outer(const char *path, int a, int b, int c) {
    volatile char pad[1000];
    int x = a * 3, y = b * 5, z = c * 7;
    pad[a & 15] = (char)x;
    mid(path, a + b);
    sink += x + y + z + pad[4];
}

int main(int argc, char **argv) {
    char line[4096];
    FILE *maps = fopen("/proc/self/maps", "r");
    while (fgets(line, sizeof line, maps)) {
        if (strstr(line, "[stack]"))
            stack_top = strtoull(strchr(line, '-') + 1, NULL, 16);
        else if (strstr(line, " r-xp "))
            printf("map %s", line);
    }
    fclose(maps);
    printf("fn leaf %lx\nfn mid %lx\nfn outer %lx\nfn main %lx\n", (unsigned long)leaf,
           (unsigned long)mid, (unsigned long)outer, (unsigned long)main);
    fflush(stdout);
    outer(argv[1], argc, argc + 1, argc + 2);
    return 0;
}
"""


def _bias(path: str, start: int, file_offset: int) -> int:
    with open(path, "rb") as fh:
        for seg in ELFFile(fh).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_offset"] <= file_offset < (
                    seg["p_offset"] + seg["p_filesz"]):
                return int(start - (seg["p_vaddr"] + file_offset - seg["p_offset"]))
    raise AssertionError(f"no PT_LOAD of {path} holds offset {file_offset:#x}")


def _functions(path: str, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    wanted = set(names)
    with open(path, "rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        return {s.name: (s["st_value"], s["st_size"]) for s in symtab.iter_symbols()
                if s.name in wanted and s["st_info"]["type"] == "STT_FUNC"}


@pytest.fixture(scope="module")
def sampled_program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("unwind")
    exe = _gcc(tmp, "prog", PROGRAM, "-O2", "-g0", "-fomit-frame-pointer", "-fno-inline")
    dump = tmp / "stack.bin"
    out = subprocess.run([str(exe), str(dump)], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    maps, fns, regs = [], {}, []
    for line in out.splitlines():
        words = line.split()
        if words[0] == "map":
            lo, hi = (int(x, 16) for x in words[1].split("-"))
            maps.append((lo, hi, int(words[3], 16), words[6] if len(words) > 6 else ""))
        elif words[0] == "fn":
            fns[words[1]] = int(words[2], 16)
        elif words[0] == "regs":
            regs = [int(x, 16) for x in words[1:4]]
    yield {"exe": str(exe), "maps": maps, "fns": fns, "regs": regs,
           "stack": dump.read_bytes()}


def _program_unwinder(prog: dict[str, Any]) -> tuple[_unwind.Unwinder, dict[str, range]]:
    modules = []
    sources: dict[str, UnwindSections | None] = {}
    exe_bias = None
    for lo, hi, off, path in prog["maps"]:
        if not path.startswith("/"):
            continue
        if path not in sources:
            sources[path] = read_unwind_sections(Path(path).read_bytes())
        bias = _bias(path, lo, off)
        modules.append((lo, hi, bias, sources[path]))
        if os.path.realpath(path) == os.path.realpath(prog["exe"]):
            exe_bias = bias
    assert exe_bias is not None
    spans = {}
    for name, (value, size) in _functions(prog["exe"], prog["fns"]).items():
        assert value + exe_bias == prog["fns"][name]  # the bias agrees with the program
        spans[name] = range(value + exe_bias, value + exe_bias + size)
    assert set(spans) == {"leaf", "mid", "outer", "main"}
    u = _unwind.Unwinder()
    u.set_modules(modules)
    return u, spans


def _names(frames: list[int], spans: dict[str, range]) -> list[str]:
    return [next((n for n, r in spans.items() if f in r), "?") for f in frames]


def test_real_program_without_frame_pointers_unwinds_through_cfi(
        sampled_program: dict[str, Any]) -> None:
    u, spans = _program_unwinder(sampled_program)
    rip, rsp, rbp = sampled_program["regs"]
    stack = sampled_program["stack"]
    frames, stop = u.unwind_py(_unwind.UNWIND_DWARF, rip, rsp, rbp, stack)
    assert _names(frames, spans)[:4] == ["leaf", "mid", "outer", "main"], [hex(f) for f in frames]
    # On through libc's __libc_start_call_main and __libc_start_main to _start, whose
    # return address is undefined: the whole stack.
    assert stop == "end" and len(frames) >= 6
    assert u.unwind_py(_unwind.UNWIND_AUTO, rip, rsp, rbp, stack) == (frames, stop)
    # Without CFI there is no way up: frame pointers alone do not get there.
    fp_frames, _ = u.unwind_py(_unwind.UNWIND_FP, rip, rsp, rbp, stack)
    assert _names(fp_frames, spans)[:4] != ["leaf", "mid", "outer", "main"]
    assert "main" not in _names(fp_frames, spans)


def test_real_program_copy_cut_short_stops_at_stack_end(
        sampled_program: dict[str, Any]) -> None:
    u, spans = _program_unwinder(sampled_program)
    rip, rsp, rbp = sampled_program["regs"]
    # Enough for leaf's and mid's frames but not outer's (1000+ bytes of locals).
    frames, stop = u.unwind_py(_unwind.UNWIND_DWARF, rip, rsp, rbp,
                               sampled_program["stack"][:512])
    assert _names(frames, spans) == ["leaf", "mid", "outer"] and stop == "stack_end"


def test_frame_convention_is_return_address_minus_one(sampled_program: dict[str, Any]) -> None:
    u, _ = _program_unwinder(sampled_program)
    rip, rsp, rbp = sampled_program["regs"]
    stack = sampled_program["stack"]
    frames, _ = u.unwind_py(_unwind.UNWIND_DWARF, rip, rsp, rbp, stack)
    words = {struct.unpack_from("<Q", stack, i)[0] for i in range(0, len(stack) - 7, 8)}
    assert frames[0] == rip
    assert all(f + 1 in words for f in frames[1:])  # every caller: a return address on the stack
