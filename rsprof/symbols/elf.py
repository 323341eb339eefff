"""ELF facts needed for symbolization: build-id, PT_LOAD segments, function symbols, DWARF.

Everything is read with `struct` directly rather than through pyelftools: importing
pyelftools alone costs ~40 ms, which is most of what `addr2line` needs to symbolize a
whole recording, and we only need a handful of header fields. Elf64_Sym entries are
decoded in bulk with `struct.iter_unpack`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

PT_LOAD = 1
PT_NOTE = 4
NT_GNU_BUILD_ID = 3
STT_FUNC = 2
STT_GNU_IFUNC = 10
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
SHN_UNDEF = 0
_SHN_XINDEX = 0xFFFF
_SHT_NOBITS = 8
_MAX_SECTION = 1 << 31


class NotElfError(ValueError):
    """The file is not a (supported) ELF file."""


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True, slots=True)
class ElfIdentity:
    """Build-id and load layout of an ELF file."""

    build_id: str | None  # lowercase hex GNU build-id
    loads: tuple[LoadSegment, ...]  # in program-header order
    e_type: int  # ET_EXEC = 2, ET_DYN = 3

    @property
    def image_base(self) -> int:
        """vaddr of the first PT_LOAD: the origin of symbolic's SymCache addresses."""
        return self.loads[0].vaddr if self.loads else 0

    def vaddr_of_offset(self, file_offset: int) -> int:
        """Translate a file offset inside a loaded segment into an ELF virtual address."""
        best: LoadSegment | None = None
        for seg in self.loads:
            if seg.offset <= file_offset < seg.offset + max(seg.filesz, 1):
                return file_offset - seg.offset + seg.vaddr
            if seg.offset <= file_offset and (best is None or seg.offset > best.offset):
                best = seg
        if best is not None:
            return file_offset - best.offset + best.vaddr
        return file_offset


def _parse_build_id_notes(data: bytes, endian: str, align: int) -> str | None:
    pos = 0
    hdr = struct.Struct(endian + "III")
    while pos + 12 <= len(data):
        namesz, descsz, ntype = hdr.unpack_from(data, pos)
        pos += 12
        name = data[pos : pos + namesz]
        pos += (namesz + align - 1) // align * align
        desc = data[pos : pos + descsz]
        pos += (descsz + align - 1) // align * align
        if ntype == NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU" and desc:
            return desc.hex()
    return None


def read_elf_identity(path: str) -> ElfIdentity:
    """Read the build-id (from PT_NOTE) and PT_LOAD segments of an ELF file."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            raise NotElfError(path)
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is64:
            e_type, _m, _v, _entry, e_phoff = struct.unpack_from(endian + "HHIQQ", ident, 16)
            e_phentsize, e_phnum = struct.unpack_from(endian + "HH", ident, 54)
            ph = struct.Struct(endian + "IIQQQQQQ")
        else:
            e_type, _m, _v, _entry, e_phoff = struct.unpack_from(endian + "HHIII", ident, 16)
            e_phentsize, e_phnum = struct.unpack_from(endian + "HH", ident, 42)
            ph = struct.Struct(endian + "IIIIIIII")
        if e_phnum == 0 or e_phentsize < ph.size:
            return ElfIdentity(None, (), e_type)
        f.seek(e_phoff)
        table = f.read(e_phentsize * e_phnum)
        loads: list[LoadSegment] = []
        notes: list[tuple[int, int, int]] = []
        for i in range(e_phnum):
            if (i + 1) * e_phentsize > len(table):
                break
            fields = ph.unpack_from(table, i * e_phentsize)
            if is64:
                p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, p_align = fields
            else:
                p_type, p_offset, p_vaddr, _pa, p_filesz, p_memsz, p_flags, p_align = fields
            if p_type == PT_LOAD:
                loads.append(LoadSegment(p_offset, p_vaddr, p_filesz, p_memsz, p_flags))
            elif p_type == PT_NOTE and 0 < p_filesz < (1 << 20):
                notes.append((p_offset, p_filesz, 8 if p_align == 8 else 4))
        build_id = None
        for off, size, align in notes:
            f.seek(off)
            build_id = _parse_build_id_notes(f.read(size), endian, align)
            if build_id:
                break
    return ElfIdentity(build_id, tuple(loads), e_type)


@dataclass(slots=True)
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    addralign: int


@dataclass(frozen=True, slots=True)
class SectionFacts:
    """What the section headers tell us."""

    has_dwarf: bool
    symbol_table: str | None  # ".symtab", ".dynsym" or None
    # (value, size, binding, raw name) of every defined STT_FUNC/STT_GNU_IFUNC symbol
    functions: list[tuple[int, int, int, bytes]]
    build_id: str | None  # from .note.gnu.build-id, for files without PT_NOTE


def _function_symbols(
    data: bytes, strtab: bytes, is64: bool, little: bool
) -> list[tuple[int, int, int, bytes]]:
    """Defined STT_FUNC/STT_GNU_IFUNC symbols with a nonzero value, from raw ElfN_Sym."""
    endian = "<" if little else ">"
    if is64:  # st_name, st_info, st_other, st_shndx, st_value, st_size
        fmt, size, i_info, i_shndx, i_value, i_size = endian + "IBBHQQ", 24, 1, 3, 4, 5
    else:  # st_name, st_value, st_size, st_info, st_other, st_shndx
        fmt, size, i_info, i_shndx, i_value, i_size = endian + "IIIBBH", 16, 3, 5, 1, 2
    usable = len(data) - len(data) % size
    out: list[tuple[int, int, int, bytes]] = []
    find = strtab.find
    func_types = (STT_FUNC, STT_GNU_IFUNC)
    for sym in struct.iter_unpack(fmt, data[:usable]):
        info = sym[i_info]
        if (info & 0xF) in func_types and sym[i_value] and sym[i_shndx] != SHN_UNDEF:
            name_off = sym[0]
            end = find(b"\0", name_off)
            name = strtab[name_off:end] if end >= 0 else strtab[name_off:]
            out.append((sym[i_value], sym[i_size], info >> 4, name))
    return out


def _section_headers(f: BinaryIO, is64: bool, endian: str) -> list[_Section]:
    f.seek(0)
    ehdr = f.read(64)
    if is64:
        e_shoff = struct.unpack_from(endian + "Q", ehdr, 40)[0]
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(endian + "HHH", ehdr, 58)
        sh = struct.Struct(endian + "IIQQQQIIQQ")
    else:
        e_shoff = struct.unpack_from(endian + "I", ehdr, 32)[0]
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(endian + "HHH", ehdr, 46)
        sh = struct.Struct(endian + "IIIIIIIIII")
    if e_shoff == 0 or e_shentsize < sh.size:
        return []
    f.seek(e_shoff)
    first = f.read(e_shentsize)
    if len(first) < sh.size:
        return []
    zero = sh.unpack_from(first)
    if e_shnum == 0:  # extended numbering: the count lives in section 0's sh_size
        e_shnum = zero[5]
    if e_shstrndx == _SHN_XINDEX:
        e_shstrndx = zero[7]
    if not 0 < e_shnum < 1 << 20:
        return []
    table = first + f.read(e_shentsize * (e_shnum - 1))
    raw = [
        sh.unpack_from(table, i * e_shentsize)
        for i in range(e_shnum)
        if (i + 1) * e_shentsize <= len(table)
    ]
    sections = [_Section("", r[1], r[4], r[5], r[6], r[8]) for r in raw]
    if e_shstrndx < len(sections):
        names = _read_section(f, sections[e_shstrndx])
        for sec, r in zip(sections, raw, strict=True):
            end = names.find(b"\0", r[0])
            sec.name = names[r[0] : end if end >= 0 else None].decode("utf-8", "replace")
    return sections


def _read_section(f: BinaryIO, sec: _Section) -> bytes:
    if sec.type == _SHT_NOBITS or sec.size == 0 or sec.size > _MAX_SECTION:
        return b""
    f.seek(sec.offset)
    return f.read(sec.size)


def _section_table(f: BinaryIO, path: str) -> tuple[list[_Section], bool, bool]:
    """The section headers of the ELF file open as `f`, whether it is 64-bit and
    whether it is little-endian."""
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise NotElfError(path)
    is64 = ident[4] == 2
    little = ident[5] == 1
    return _section_headers(f, is64, "<" if little else ">"), is64, little


def read_section_facts(path: str) -> SectionFacts:
    """DWARF presence and function symbols (.symtab, else .dynsym), from the section table."""
    with open(path, "rb") as f:
        sections, is64, little = _section_table(f, path)
        by_name: dict[str, _Section] = {}
        has_dwarf = False
        for sec in sections:
            by_name.setdefault(sec.name, sec)
            if (
                sec.name in (".debug_info", ".zdebug_info")
                and sec.type != _SHT_NOBITS
                and sec.size > 0
            ):
                has_dwarf = True
        build_id: str | None = None
        note = by_name.get(".note.gnu.build-id")
        if note is not None:
            build_id = _parse_build_id_notes(
                _read_section(f, note), "<" if little else ">", 8 if note.addralign == 8 else 4
            )
        functions: list[tuple[int, int, int, bytes]] = []
        table: str | None = None
        for cand in (".symtab", ".dynsym"):
            symsec = by_name.get(cand)
            if symsec is None or symsec.link >= len(sections):
                continue
            data = _read_section(f, symsec)
            if not data:
                continue
            strtab = _read_section(f, sections[symsec.link])
            functions = _function_symbols(data, strtab, is64, little)
            if functions:
                table = cand
                break
    return SectionFacts(has_dwarf, table, functions, build_id)


@dataclass(frozen=True, slots=True)
class DetailFacts:
    """What detail an object can give, from its section names alone (no section read)."""

    has_symtab: bool  # a .symtab with entries: not stripped
    has_cfi: bool  # .eh_frame or .debug_frame with contents: unwindable without frame pointers


def read_detail_facts(path: str) -> DetailFacts:
    """Whether `path` keeps its .symtab and has unwind tables (CFI)."""
    with open(path, "rb") as f:
        sections, is64, _little = _section_table(f, path)
    entry = 24 if is64 else 16  # an ElfN_Sym; the first entry is the null symbol
    has_symtab = has_cfi = False
    for sec in sections:
        if sec.type == _SHT_NOBITS:  # a separate debug file's placeholders
            continue
        if sec.name == ".symtab" and sec.size > entry:
            has_symtab = True
        elif sec.name in (".eh_frame", ".debug_frame") and sec.size > 4:  # not a terminator
            has_cfi = True
    return DetailFacts(has_symtab, has_cfi)


# The libc allocator functions an executable replaces when it defines them itself.
MALLOC_FAMILY = ("malloc", "free", "calloc", "realloc")


@dataclass(frozen=True, slots=True)
class AllocatorSymbols:
    """What an executable's symbol tables say about the allocator it uses."""

    defines_malloc: tuple[str, ...]  # MALLOC_FAMILY functions it defines and exports (.dynsym)
    has_symtab: bool  # a .symtab (not stripped)
    rust_alloc_shim: bool  # .symtab names __rust_alloc: a Rust program's allocator entry
    rust_default_alloc: bool  # ... and std's default allocator (__rdl_alloc, calls malloc)


def read_allocator_symbols(path: str) -> AllocatorSymbols:
    """Whether `path` defines malloc itself (jemalloc linked unprefixed, as rustc does:
    the executable comes first in symbol lookup, before any LD_PRELOAD library), and
    whether a Rust program keeps std's default allocator or has a #[global_allocator].

    Rust mangles these names (v0: `_RNvCs..._7___rustc12___rust_alloc`), so the
    string table is searched for the plain name inside them."""
    with open(path, "rb") as f:
        sections, is64, little = _section_table(f, path)
        defines: tuple[str, ...] = ()
        strtab = b""
        has_symtab = False
        for sec in sections:
            if sec.name not in (".dynsym", ".symtab") or sec.link >= len(sections):
                continue
            if sec.name == ".dynsym":
                data = _read_section(f, sec)
                names = {n for _, _, binding, n in
                         _function_symbols(data, _read_section(f, sections[sec.link]), is64,
                                           little)
                         if binding in (STB_GLOBAL, STB_WEAK)}
                defines = tuple(n for n in MALLOC_FAMILY if n.encode() in names)
            else:
                has_symtab = sec.size > 0
                strtab = _read_section(f, sections[sec.link])
    rg = b"__rg_alloc" in strtab  # older compilers' name for a #[global_allocator]
    return AllocatorSymbols(
        defines_malloc=defines, has_symtab=has_symtab,
        rust_alloc_shim=rg or b"__rust_alloc" in strtab,
        rust_default_alloc=not rg and b"__rdl_alloc" in strtab)
