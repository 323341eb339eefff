"""rsprof/recording/code_facts.py: function bounds (.eh_frame FDEs) and call slots
(relocated GOT entries) of real objects, checked against pyelftools and a live
process."""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from rsprof.recording.code_facts import read_object_facts
from rsprof.recording.code_map import CodeMap
from rsprof.symbols.maps import read_exec_mappings


def _mapped(prefix: str) -> str:
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith(prefix):
                return os.path.realpath(parts[5].strip())
    pytest.skip(f"no {prefix} mapped here")


def _objects(targets: Path) -> list[str]:
    return [_mapped("libc.so"), os.path.realpath(sys.executable), str(targets / "stale_frames")]


def _facts(path: str):
    with open(path, "rb") as f:
        return read_object_facts(memoryview(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_fde_ranges_and_slots_agree_with_pyelftools(targets: Path, which: int) -> None:
    path = _objects(targets)[which]
    facts = _facts(path)
    with open(path, "rb") as f:
        elf = ELFFile(f)
        expected = set()
        if elf.has_dwarf_info() and elf.get_dwarf_info().has_EH_CFI():
            for entry in elf.get_dwarf_info().EH_CFI_entries():
                header = getattr(entry, "header", None)  # None: the terminator
                if header is not None and "initial_location" in header \
                        and header["address_range"]:
                    start = header["initial_location"]
                    expected.add((start, start + header["address_range"]))
        relocs = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec.is_RELA():
                symtab = elf.get_section(sec["sh_link"])
                for r in sec.iter_relocations():
                    relocs[r["r_offset"]] = (r["r_info_type"], r["r_addend"],
                                             symtab.get_symbol(r["r_info_sym"]).name
                                             if r["r_info_sym"] else "")
        loads = [(s["p_offset"], s["p_vaddr"], s["p_filesz"]) for s in elf.iter_segments()
                 if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1]
    assert expected and set(facts.functions) == expected
    assert facts.loads == loads
    assert facts.slots
    for slot, target, name in facts.slots:
        rtype, addend, sym = relocs[slot]
        if target is not None:
            assert (rtype, target) == (8, addend)  # R_X86_64_RELATIVE
        else:
            assert rtype in (1, 6, 7) and name == sym.encode()


def test_a_live_process_resolves_functions_and_slots(targets: Path) -> None:
    proc = subprocess.Popen([str(targets / "stale_frames"), "--seconds", "30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "ready" in proc.stdout.readline()
        maps = read_exec_mappings(proc.pid)
        functions, slots = CodeMap(proc.pid).facts(maps)
        starts = {s for s, _ in functions}
        exe = next(m for m in maps if m.path.endswith("stale_frames"))
        libc = next(m for m in maps if os.path.basename(m.path).startswith("libc.so"))
        exe_facts, libc_facts = _facts(exe.path), _facts(libc.path)
        exe_bias = exe_facts.bias(exe.start, exe.offset)
        libc_bias = libc_facts.bias(libc.start, libc.offset)
        assert exe_bias is not None and libc_bias is not None
        nm = subprocess.run(["nm", exe.path], capture_output=True, text=True).stdout
        create = next(int(line.split()[0], 16) for line in nm.splitlines()
                      if "12stale_frames6create17h" in line)
        assert create + exe_bias in starts
        free = libc_facts.exports[b"free"] + libc_bias
        assert free in starts
        # The program's free@GOT holds libc's free, read from the process.
        got_free = next(s + exe_bias for s, _, n in exe_facts.slots if n == b"free")
        assert (got_free, free) in slots
    finally:
        proc.kill()
        proc.wait()


def test_garbage_yields_no_facts_and_no_exception(targets: Path) -> None:
    good = Path(targets / "stale_frames").read_bytes()[:200_000]
    assert read_object_facts(b"").functions == []
    assert read_object_facts(b"\x7fELF" + bytes(60)).functions == []
    rng = random.Random(5)
    for _ in range(200):
        data = bytearray(good)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        cut = rng.randrange(64, len(data))
        read_object_facts(bytes(data[:cut]))  # must not raise
