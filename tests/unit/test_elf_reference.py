"""rsprof's struct-based ELF reader (rsprof/symbols/elf.py) checked against pyelftools."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_TYPE, ENUM_ST_INFO_BIND, ENUM_ST_INFO_TYPE
from elftools.elf.sections import Section

from rsprof.symbols.elf import (
    STT_FUNC,
    STT_GNU_IFUNC,
    LoadSegment,
    NotElfError,
    read_elf_identity,
    read_section_facts,
)
from rsprof.symbols.symtab import SymbolTable

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE_DIR = ROOT / "example"
EXAMPLE_BIN = EXAMPLE_DIR / "target" / "release" / "rsprof-example"

_SHT_NOBITS = "SHT_NOBITS"
FuncSym = tuple[int, int, int, bytes]


def _mapped_library(prefixes: tuple[str, ...]) -> str | None:
    """Path of a shared object this test process has mapped, by basename prefix."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6:
                path = parts[5].strip()
                if os.path.basename(path).startswith(prefixes) and os.path.isfile(path):
                    return path
    return None


def _example_binary() -> str:
    if not EXAMPLE_BIN.is_file():
        if shutil.which("cargo") is None:
            pytest.skip("cargo is not installed and the example binary is not built")
        subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"],
                       cwd=EXAMPLE_DIR, check=True)
    return str(EXAMPLE_BIN)


def _find(which: str) -> str:
    path: str | None
    if which == "rust-example":
        return _example_binary()
    if which == "ls":
        path = shutil.which("ls") or "/usr/bin/ls"
    elif which == "python":
        path = os.path.realpath(sys.executable)
    elif which == "libc":
        path = _mapped_library(("libc.so", "libc-"))
    elif which == "libpython":
        path = _mapped_library(("libpython",))
    elif which == "unwind-ext":
        import rsprof._unwind as ext

        path = ext.__file__
    else:
        raise AssertionError(which)
    if not path or not os.path.isfile(path):
        pytest.skip(f"no {which} ELF file here")
    path = os.path.realpath(path)
    with open(path, "rb") as fh:
        if fh.read(4) != b"\x7fELF":
            pytest.skip(f"{path} is not ELF")
    return path


@dataclass
class Reference:
    """What pyelftools says about one file."""

    path: str
    build_id: str | None
    note_section_build_id: str | None
    loads: tuple[LoadSegment, ...]
    e_type: int
    has_dwarf: bool
    symbol_table: str | None
    functions: list[FuncSym]
    # (file offset, vaddr) of function symbols that lie in file-backed sections
    function_offsets: list[tuple[int, int]]


def _enum(value: int | str, table: dict[str, int]) -> int:
    return value if isinstance(value, int) else table[value]


def _build_id_of_notes(notes: Iterator[dict[str, object]]) -> str | None:
    for note in notes:
        if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
            return str(note["n_desc"]).lower()
    return None


def _reference(path: str) -> Reference:
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        build_id = None
        loads = []
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                loads.append(LoadSegment(seg["p_offset"], seg["p_vaddr"], seg["p_filesz"],
                                         seg["p_memsz"], seg["p_flags"]))
            elif seg["p_type"] == "PT_NOTE" and build_id is None:
                build_id = _build_id_of_notes(seg.iter_notes())

        sections = list(elf.iter_sections())
        first_by_name: dict[str, Section] = {}
        for sec in sections:
            first_by_name.setdefault(sec.name, sec)
        has_dwarf = any(
            sec.name in (".debug_info", ".zdebug_info")
            and sec["sh_type"] != _SHT_NOBITS and sec["sh_size"] > 0
            for sec in sections
        )
        note_sec = first_by_name.get(".note.gnu.build-id")
        note_build_id = (
            _build_id_of_notes(note_sec.iter_notes())
            if note_sec is not None else None
        )

        # elf.py's rule: the first of .symtab, .dynsym that has a valid string-table link,
        # contents, and at least one defined function symbol with a nonzero value.
        table: str | None = None
        functions: list[FuncSym] = []
        offsets: list[tuple[int, int]] = []
        for cand in (".symtab", ".dynsym"):
            sec = first_by_name.get(cand)
            if sec is None:
                continue
            if sec["sh_link"] >= len(sections):
                continue
            if sec["sh_type"] == _SHT_NOBITS or sec["sh_size"] == 0:
                continue
            found: list[FuncSym] = []
            for sym in sec.iter_symbols():
                kind = _enum(sym["st_info"]["type"], ENUM_ST_INFO_TYPE)
                shndx = sym["st_shndx"]
                if (kind in (STT_FUNC, STT_GNU_IFUNC) and sym["st_value"]
                        and shndx != "SHN_UNDEF" and shndx != 0):
                    bind = _enum(sym["st_info"]["bind"], ENUM_ST_INFO_BIND)
                    found.append((sym["st_value"], sym["st_size"], bind,
                                  sym.name.encode("utf-8")))
                    if isinstance(shndx, int) and shndx < len(sections):
                        home = sections[shndx]
                        start = home["sh_addr"]
                        if (home["sh_type"] != _SHT_NOBITS
                                and start <= sym["st_value"] < start + home["sh_size"]):
                            offsets.append(
                                (home["sh_offset"] + sym["st_value"] - start, sym["st_value"])
                            )
            if found:
                table, functions, function_offsets = cand, found, offsets
                break
            offsets = []
        else:
            function_offsets = []
        return Reference(
            path=path, build_id=build_id, note_section_build_id=note_build_id,
            loads=tuple(loads), e_type=_enum(elf["e_type"], ENUM_E_TYPE),
            has_dwarf=has_dwarf, symbol_table=table, functions=functions,
            function_offsets=function_offsets,
        )


_REFERENCES: dict[str, Reference] = {}

FILES = ["rust-example", "ls", "python", "libc", "libpython", "unwind-ext"]


@pytest.fixture(params=FILES)
def ref(request: pytest.FixtureRequest) -> Reference:
    which = request.param
    if which not in _REFERENCES:
        _REFERENCES[which] = _reference(_find(which))
    return _REFERENCES[which]


def test_build_id_matches(ref: Reference) -> None:
    identity = read_elf_identity(ref.path)
    assert identity.build_id == ref.build_id
    if ref.path == str(EXAMPLE_BIN) or "libc" in os.path.basename(ref.path):
        # Every real toolchain output here carries a 20-byte GNU build-id.
        assert ref.build_id is not None and len(ref.build_id) == 40


def test_load_segments_match(ref: Reference) -> None:
    identity = read_elf_identity(ref.path)
    assert identity.loads == ref.loads
    assert len(identity.loads) >= 1
    assert identity.e_type == ref.e_type
    assert identity.image_base == ref.loads[0].vaddr


def test_section_facts_match(ref: Reference) -> None:
    facts = read_section_facts(ref.path)
    assert facts.has_dwarf == ref.has_dwarf
    assert facts.symbol_table == ref.symbol_table
    assert facts.build_id == ref.note_section_build_id
    assert len(facts.functions) == len(ref.functions)
    assert Counter(facts.functions) == Counter(ref.functions)


def test_function_offsets_translate_to_vaddrs(ref: Reference) -> None:
    """A file offset inside a function maps back to its vaddr (how samples are placed)."""
    if not ref.function_offsets:
        pytest.skip("no function symbols in file-backed sections")
    identity = read_elf_identity(ref.path)
    wrong = [(hex(off), hex(va)) for off, va in ref.function_offsets
             if identity.vaddr_of_offset(off) != va]
    assert wrong == []


def test_symbol_table_lookup_finds_reference_functions(ref: Reference) -> None:
    """Every sized reference function is found at its start by the built SymbolTable."""
    facts = read_section_facts(ref.path)
    table = SymbolTable.from_symbols(facts.functions, facts.has_dwarf)
    starts = {value for value, size, _bind, _name in ref.functions if size > 0}
    names_at: dict[int, set[str]] = {}
    for value, _size, _bind, name in ref.functions:
        names_at.setdefault(value, set()).add(name.decode("utf-8", "replace"))
    for value in starts:
        found = table.lookup(value)
        assert found is not None, hex(value)
        assert found[1] == value
        assert found[0] in names_at[value]


def test_known_facts_of_example_binary() -> None:
    """Sanity of the reference itself on the Rust example (debug info, .symtab, main)."""
    ref = _REFERENCES.get("rust-example") or _reference(_find("rust-example"))
    assert ref.has_dwarf
    assert ref.symbol_table == ".symtab"
    assert any(name == b"main" for _v, _s, _b, name in ref.functions)
    assert any(b"rsprof_example" in name for _v, _s, _b, name in ref.functions)


def test_not_elf(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"#!/bin/sh\necho not elf\n" + b"\0" * 64)
    with pytest.raises(NotElfError):
        read_elf_identity(str(path))
    with pytest.raises(NotElfError):
        read_section_facts(str(path))


# -- synthetic ELF files: the 32-bit and big-endian paths no local binary exercises ------

def _build_elf(is64: bool, little: bool, dwarf_type: int) -> bytes:
    """A small but well-formed ELF: two PT_LOADs, a build-id note, .symtab, .debug_info."""
    e = "<" if little else ">"
    base = 0x400000 if is64 else 0x08048000
    text_off, text_size = 0x200, 0x100
    note_off = 0x300
    build_id = bytes(range(0xA0, 0xB4))
    note = struct.pack(e + "III", 4, len(build_id), 3) + b"GNU\0" + build_id
    strtab = b"\0local_fn\0global_fn\0weak_alias\0ifunc_fn\0data_obj\0printf\0zero_fn\0abs_fn\0"

    def name(s: str) -> int:
        return strtab.index(b"\0" + s.encode() + b"\0") + 1

    text_addr = base + text_off
    # (name, value, size, bind, type, shndx)
    syms = [
        ("", 0, 0, 0, 0, 0),
        ("local_fn", text_addr + 0x10, 0x10, 0, 2, 1),
        ("global_fn", text_addr + 0x20, 0x30, 1, 2, 1),
        ("weak_alias", text_addr + 0x20, 0x30, 2, 2, 1),
        ("ifunc_fn", text_addr + 0x60, 0x8, 1, 10, 1),
        ("data_obj", text_addr + 0x80, 0x8, 1, 1, 1),
        ("printf", 0, 0, 1, 2, 0),
        ("zero_fn", 0, 0x10, 1, 2, 0xFFF1),
        ("abs_fn", 0x1234, 0x4, 1, 2, 0xFFF1),
    ]
    symtab = b""
    for sname, value, size, bind, kind, shndx in syms:
        info = (bind << 4) | kind
        n = name(sname) if sname else 0
        if is64:
            symtab += struct.pack(e + "IBBHQQ", n, info, 0, shndx, value, size)
        else:
            symtab += struct.pack(e + "IIIBBH", n, value, size, info, 0, shndx)
    debug_info = b"\x01" * 16
    shstrtab = b"\0.text\0.note.gnu.build-id\0.symtab\0.strtab\0.debug_info\0.shstrtab\0"

    def sh_name(s: str) -> int:
        return shstrtab.index(b"\0" + s.encode() + b"\0") + 1

    symtab_off = 0x340
    strtab_off = symtab_off + len(symtab)
    debug_off = strtab_off + len(strtab)
    shstr_off = debug_off + len(debug_info)
    shoff = (shstr_off + len(shstrtab) + 7) & ~7
    ent = 24 if is64 else 16
    # (name, type, flags, addr, offset, size, link, info, align, entsize)
    sections = [
        ("", 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (".text", 1, 6, text_addr, text_off, text_size, 0, 0, 16, 0),
        (".note.gnu.build-id", 7, 2, base + 0x1300, note_off, len(note), 0, 0, 4, 0),
        (".symtab", 2, 0, 0, symtab_off, len(symtab), 4, 2, 8, ent),
        (".strtab", 3, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0),
        (".debug_info", dwarf_type, 0, 0, debug_off, len(debug_info), 0, 0, 1, 0),
        (".shstrtab", 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),
    ]
    # (type, flags, offset, vaddr, filesz, memsz, align)
    phdrs = [
        (1, 5, 0, base, 0x300, 0x300, 0x1000),
        (1, 6, 0x300, base + 0x1300, 0x40, 0x1000, 0x1000),
        (4, 4, note_off, base + 0x1300, len(note), len(note), 4),
    ]
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1]) + b"\0" * 9
    machine = (62 if little else 21) if is64 else (3 if little else 20)
    hdr_fmt = e + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH")
    header = ident + struct.pack(hdr_fmt, 3, machine, 1, text_addr, ehsize, shoff, 0,
                                 ehsize, phentsize, len(phdrs), shentsize, len(sections),
                                 len(sections) - 1)
    ph = b""
    for p_type, p_flags, off, vaddr, filesz, memsz, align in phdrs:
        if is64:
            ph += struct.pack(e + "IIQQQQQQ", p_type, p_flags, off, vaddr, vaddr, filesz,
                              memsz, align)
        else:
            ph += struct.pack(e + "IIIIIIII", p_type, off, vaddr, vaddr, filesz, memsz,
                              p_flags, align)
    sh = b""
    for sname, *rest in sections:
        fields = (sh_name(sname) if sname else 0, *rest)
        sh += struct.pack(e + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII"), *fields)
    blob = bytearray(shoff + len(sh))
    blob[0 : len(header) + len(ph)] = header + ph
    blob[text_off : text_off + text_size] = b"\xc3" * text_size
    blob[note_off : note_off + len(note)] = note
    blob[symtab_off:strtab_off] = symtab
    blob[strtab_off:debug_off] = strtab
    blob[debug_off:shstr_off] = debug_info
    blob[shstr_off : shstr_off + len(shstrtab)] = shstrtab
    blob[shoff:] = sh
    return bytes(blob)


@pytest.mark.parametrize("is64", [True, False], ids=["elf64", "elf32"])
@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("dwarf_type", [1, 8], ids=["dwarf", "nobits-dwarf"])
def test_synthetic_elf_matches_reference(tmp_path: Path, is64: bool, little: bool,
                                         dwarf_type: int) -> None:
    path = tmp_path / "synthetic.elf"
    path.write_bytes(_build_elf(is64, little, dwarf_type))
    ref = _reference(str(path))
    # The reference itself saw what was built.
    assert ref.build_id == bytes(range(0xA0, 0xB4)).hex()
    assert ref.has_dwarf == (dwarf_type == 1)
    assert sorted(n for *_rest, n in ref.functions) == [
        b"abs_fn", b"global_fn", b"ifunc_fn", b"local_fn", b"weak_alias"]
    assert len(ref.loads) == 2

    identity = read_elf_identity(str(path))
    assert identity.build_id == ref.build_id
    assert identity.loads == ref.loads
    assert identity.e_type == ref.e_type == 3
    facts = read_section_facts(str(path))
    assert facts.has_dwarf == ref.has_dwarf
    assert facts.symbol_table == ref.symbol_table == ".symtab"
    assert facts.build_id == ref.note_section_build_id == ref.build_id
    assert Counter(facts.functions) == Counter(ref.functions)
    for off, vaddr in ref.function_offsets:
        assert identity.vaddr_of_offset(off) == vaddr
