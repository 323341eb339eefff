"""Maps parsing, libc symbols in a live process, ELF address spaces (PIE and non-PIE)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rsprof.symbols.elf import read_elf_identity, read_section_facts
from rsprof.symbols.maps import (
    VDSO,
    Mapping,
    fd_path,
    open_mapping,
    parse_maps,
    read_exec_mappings,
    readable_path,
)
from rsprof.symbols.resolver import Symbolizer, resolve_file_addresses
from rsprof.symbols.symtab import SymbolTable

MAPS = "\n".join(
    [
        "55d0c0a00000-55d0c0a14000 r--p 00000000 08:01 1234   /opt/app/bin/app",
        "55d0c0a14000-55d0c0a5e000 r-xp 00014000 08:01 1234   /opt/app/bin/app (deleted)",
        "55d0c0a5e000-55d0c0a6b000 r--p 0005e000 08:01 1234   /opt/app/bin/app (deleted)",
        "55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0      [heap]",
        "7f0000028000-7f00001bd000 r-xp 00028000 08:01 777    /usr/lib/x86_64-linux-gnu/libc.so.6",
        "7f0000300000-7f0000301000 r-xp 00000000 00:00 0 ",
        "7f0000400000-7f0000401000 r-xp 00000000 08:01 99     /tmp/dir with space/lib.so",
        "7ffc8a5f2000-7ffc8a5f4000 r-xp 00000000 00:00 0      [vdso]",
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]",
    ]
)


def test_parse_maps() -> None:
    maps = parse_maps(MAPS)
    assert maps == [
        Mapping(0x55D0C0A14000, 0x55D0C0A5E000, 0x14000, "/opt/app/bin/app", 1234, "08:01", True),
        Mapping(
            0x7F0000028000,
            0x7F00001BD000,
            0x28000,
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            777,
            "08:01",
            False,
        ),
        Mapping(
            0x7F0000400000, 0x7F0000401000, 0, "/tmp/dir with space/lib.so", 99, "08:01", False
        ),
        Mapping(0x7FFC8A5F2000, 0x7FFC8A5F4000, 0, "[vdso]", 0, "00:00", False),
    ]
    assert maps[0].file_offset(0x55D0C0A14010) == 0x14010


def test_own_process_mappings_are_readable() -> None:
    maps = read_exec_mappings(os.getpid())
    assert maps
    for m in maps:
        if m.path == VDSO:
            fd = open_mapping(os.getpid(), m)  # copied out of memory
            assert fd is not None
            with open(fd_path(fd), "rb") as f:
                assert f.read(4) == b"\x7fELF"
            os.close(fd)
            continue
        path = readable_path(os.getpid(), m)
        assert path is not None
        with open(path, "rb") as f:
            assert f.read(4) == b"\x7fELF"


def _libc_function_address(name: str) -> int:
    libc = ctypes.CDLL(None)
    addr = ctypes.cast(getattr(libc, name), ctypes.c_void_p).value
    assert addr is not None
    return addr


def test_libc_function_in_live_process(tmp_path: Path) -> None:
    addr = _libc_function_address("random_r")
    with Symbolizer(os.getpid(), tmp_path) as sym:
        res = sym.resolve([addr, addr + 1])
    for a in (addr, addr + 1):
        r = res[a]
        assert "libc" in os.path.basename(r.module)
        # "__random_r" when a libc6-dbg style debug file provides DWARF (its real name)
        assert r.frames[-1].function in ("random_r", "__random_r")
        assert r.frames[-1].resolved and r.frames[-1].module == r.module
        assert r.frames[-1].file is None or r.frames[-1].line is not None
    assert sym.warnings == []  # system libraries are expected to be stripped
    assert sym.unresolved_addresses == 0
    # the dynamic symbol table alone names it too, at the same ELF address
    facts = read_section_facts(res[addr].module)
    table = SymbolTable.from_symbols(facts.functions, facts.has_dwarf)
    assert table.lookup(res[addr].rel_address + 1) == ("random_r", res[addr].rel_address)


def test_unknown_address(tmp_path: Path) -> None:
    with Symbolizer(os.getpid(), tmp_path) as sym:
        r = sym.resolve([0x10])[0x10]
    assert r.module == "[unknown]" and r.build_id is None
    assert r.frames[0].function == "[unknown]+0x10" and not r.frames[0].resolved
    assert sym.unresolved_addresses == 1


def test_dead_pid_does_not_raise(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    sym = Symbolizer(proc.pid, tmp_path)
    assert sym.resolve([0x1234])[0x1234].module == "[unknown]"
    assert len(sym.warnings) == 1


def test_symbol_table_lookup_and_round_trip() -> None:
    table = SymbolTable.from_symbols(
        [
            (0x1000, 0x20, 1, b"outer"),
            (0x1008, 0x4, 0, b"nested"),
            (0x1040, 0x10, 0, b"__alias"),
            (0x1040, 0x10, 1, b"alias"),
            (0x1080, 0, 1, b"sizeless"),
        ],
        has_dwarf=False,
    )
    assert table.lookup(0x1000) == ("outer", 0x1000)
    assert table.lookup(0x1009) == ("nested", 0x1008)
    assert table.lookup(0x1010) == ("outer", 0x1000)  # past nested's end, inside outer
    assert table.lookup(0x1020) is None  # past outer's end
    assert table.lookup(0x1044) == ("alias", 0x1040)  # global preferred over the alias
    assert table.lookup(0x1080) == ("sizeless", 0x1080)
    assert table.lookup(0x1081) is None
    assert table.lookup(0xFFF) is None
    again = SymbolTable.from_bytes(table.to_bytes())
    assert [again.lookup(a) for a in range(0xFF0, 0x1090)] == [
        table.lookup(a) for a in range(0xFF0, 0x1090)
    ]
    with pytest.raises(ValueError):
        SymbolTable.from_bytes(table.to_bytes()[:-3])


C_SOURCE = """\
#include <stdio.h>
static inline __attribute__((always_inline)) int sq(int x) { return x * x + 1; }
__attribute__((noinline)) int work(int n) {
    int a = 0;
    for (int i = 0; i < n; i++) a += sq(i ^ a) * (i | 3);
    return a;
}
int main(int c, char **v) { printf("%d\\n", work(c * 1000)); return 0; }
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("pie", ["-no-pie", "-pie"])
def test_c_binary_address_space_matches_addr2line(tmp_path: Path, pie: str) -> None:
    src = tmp_path / "t.c"
    src.write_text(C_SOURCE)
    exe = tmp_path / "t"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-g",
            pie,
            "-fPIE" if pie == "-pie" else "-fno-pie",
            "-o",
            str(exe),
            str(src),
        ],
        check=True,
    )
    ident = read_elf_identity(str(exe))
    assert ident.build_id == read_section_facts(str(exe)).build_id
    assert (ident.image_base == 0) == (pie == "-pie")
    nm = subprocess.run(["nm", "-S", str(exe)], capture_output=True, text=True, check=True)
    start, size = next(
        (int(p[0], 16), int(p[1], 16))
        for p in (line.split() for line in nm.stdout.splitlines())
        if len(p) == 4 and p[3] == "work"
    )
    addrs = list(range(start, start + size))
    ours = resolve_file_addresses(str(exe), addrs)
    out = subprocess.run(
        ["addr2line", "-f", "-i", "-e", str(exe), *map(hex, addrs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(ours[a][-1].function == "work" for a in addrs)
    # every location addr2line prints must be one we report for some address
    theirs = {line.rsplit("/", 1)[-1].split(" ")[0] for line in out.splitlines() if ":" in line}
    mine = {f"{os.path.basename(f.file)}:{f.line}" for a in addrs for f in ours[a] if f.file}
    theirs.discard("t.c:?")
    assert theirs and theirs <= mine | {"t.c:0"}
    assert any(f.function == "sq" and f.inlined for a in addrs for f in ours[a])


def test_vdso_addresses_name_vdso_functions() -> None:
    from rsprof.symbols.resolver import Symbolizer

    vdso = next(m for m in read_exec_mappings(os.getpid()) if m.path == VDSO)
    with Symbolizer(os.getpid(), cache_dir=None) as sym:
        names = set()
        for address in range(vdso.start, vdso.end, 16):
            res = sym.resolve([address])[address]
            assert res.module == VDSO
            names.update(f.function for f in res.frames if f.resolved)
    assert any("clock_gettime" in n for n in names), names
