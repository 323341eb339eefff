"""The unwind sections (.eh_frame, .debug_frame) of an ELF file, for _unwind.CfiTable.

Read with `struct` from the file's bytes (pyelftools is too slow at run time);
the sections come back as memoryviews of the input, never copies (a zlib-
compressed .debug_frame is the exception: it has to be inflated). A file
without section headers (stripped by sstrip, or a core-like image) still has
its .eh_frame found through PT_GNU_EH_FRAME (.eh_frame_hdr), bounded by the
end of the PT_LOAD that holds it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

EM_X86_64 = 62

_PT_LOAD = 1
_PT_GNU_EH_FRAME = 0x6474E550
_SHT_NOBITS = 8
_SHF_COMPRESSED = 0x800
_ELFCOMPRESS_ZLIB = 1
_SHN_XINDEX = 0xFFFF
_MAX_SECTIONS = 1 << 20
_MAX_INFLATED = 1 << 30  # a sanity bound for a compressed .debug_frame


@dataclass(frozen=True, slots=True)
class UnwindSections:
    eh_frame: memoryview | bytes  # empty when the object has only .debug_frame
    eh_frame_vaddr: int  # where .eh_frame is loaded (object vaddr): pc-relative pointers
    debug_frame: memoryview | bytes | None
    machine: int = EM_X86_64  # e_machine: the register numbering of the rules


def read_unwind_sections(data: bytes | memoryview) -> UnwindSections | None:
    """The unwind sections of a little-endian ELF64 file's bytes; None when it has
    neither, or is not such a file, or is malformed (never an exception)."""
    try:
        return _read(memoryview(data).cast("B") if isinstance(data, memoryview)
                     else memoryview(data))
    except (ValueError, IndexError, TypeError, struct.error, zlib.error, OverflowError):
        return None


def _read(data: memoryview) -> UnwindSections | None:
    size = len(data)
    if size < 64 or bytes(data[:4]) != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (e_machine,) = struct.unpack_from("<H", data, 18)
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(
        "<HHHHH", data, 54)
    eh: tuple[memoryview, int] | None = None
    debug: memoryview | bytes | None = None
    if e_shoff and e_shentsize >= 64 and e_shoff + 64 <= size:
        eh, debug = _from_sections(data, e_shoff, e_shentsize, e_shnum, e_shstrndx)
    if eh is None and e_phoff and e_phentsize >= 56:
        eh = _from_eh_frame_hdr(data, e_phoff, e_phentsize, e_phnum)
    if eh is None and debug is None:
        return None
    eh_view, eh_vaddr = eh if eh is not None else (data[0:0], 0)
    return UnwindSections(eh_view, eh_vaddr, debug, e_machine)


def _from_sections(data: memoryview, shoff: int, shentsize: int, shnum: int, shstrndx: int
                   ) -> tuple[tuple[memoryview, int] | None, memoryview | bytes | None]:
    size = len(data)
    first = struct.unpack_from("<IIQQQQIIQQ", data, shoff)
    if shnum == 0:
        shnum = first[5]  # sh_size of section 0 holds a count too big for e_shnum
    if shstrndx == _SHN_XINDEX:
        shstrndx = first[6]  # its sh_link holds the index
    if not 0 < shnum <= _MAX_SECTIONS or shoff + shnum * shentsize > size:
        return None, None
    if shstrndx >= shnum:
        return None, None
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
               for i in range(shnum)]
    strtab = headers[shstrndx]
    if strtab[1] == _SHT_NOBITS or strtab[4] + strtab[5] > size:
        return None, None
    names = data[strtab[4] : strtab[4] + strtab[5]]
    eh: tuple[memoryview, int] | None = None
    debug: memoryview | bytes | None = None
    for name_off, sh_type, flags, addr, offset, sh_size, *_ in headers:
        if sh_type == _SHT_NOBITS or sh_size == 0 or offset + sh_size > size:
            continue
        name = _name_at(names, name_off)
        if name == b".eh_frame" and eh is None and not flags & _SHF_COMPRESSED:
            eh = (data[offset : offset + sh_size], addr)
        elif name == b".debug_frame" and debug is None:
            body = data[offset : offset + sh_size]
            debug = _inflated(body) if flags & _SHF_COMPRESSED else body
    return eh, debug


def _name_at(names: memoryview, off: int) -> bytes:
    if off >= len(names):
        return b""
    chunk = bytes(names[off : off + 16])  # the two names sought are shorter
    end = chunk.find(b"\0")
    return chunk[:end] if end >= 0 else chunk


def _inflated(body: memoryview) -> bytes | None:
    """An SHF_COMPRESSED section's contents (zlib only), or None."""
    ch_type, _reserved, ch_size = struct.unpack_from("<IIQ", body, 0)
    if ch_type != _ELFCOMPRESS_ZLIB or ch_size > _MAX_INFLATED:
        return None
    out = zlib.decompressobj().decompress(body[24:], ch_size)
    return out if len(out) == ch_size else None


def _from_eh_frame_hdr(data: memoryview, phoff: int, phentsize: int, phnum: int
                       ) -> tuple[memoryview, int] | None:
    size = len(data)
    if phnum > 1 << 16 or phoff + phnum * phentsize > size:
        return None
    headers = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
               for i in range(phnum)]
    loads = [h for h in headers if h[0] == _PT_LOAD]
    for p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, *_ in headers:
        if p_type != _PT_GNU_EH_FRAME or p_filesz < 4 or p_offset + p_filesz > size:
            continue
        version, ptr_enc = data[p_offset], data[p_offset + 1]
        if version != 1:
            continue
        ptr = _encoded_pointer(data, p_offset + 4, ptr_enc, p_vaddr + 4, p_vaddr)
        if ptr is None:
            continue
        for _t, _f, l_offset, l_vaddr, _pa, l_filesz, *_ in loads:
            if l_vaddr <= ptr < l_vaddr + l_filesz:
                start = l_offset + (ptr - l_vaddr)
                end = min(l_offset + l_filesz, size)
                if start < end:
                    return data[start:end], ptr
    return None


_FORMATS = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i",
            0x0C: "<q"}


def _encoded_pointer(data: memoryview, pos: int, enc: int, field_vaddr: int, hdr_vaddr: int
                     ) -> int | None:
    """A DW_EH_PE-encoded pointer of .eh_frame_hdr: absptr, pcrel or datarel."""
    fmt = _FORMATS.get(enc & 0x0F)
    if fmt is None or enc & 0x80:
        return None
    (value,) = struct.unpack_from(fmt, data, pos)
    app = enc & 0x70
    if app == 0x10:
        value += field_vaddr
    elif app == 0x30:
        value += hdr_vaddr
    elif app != 0:
        return None
    return int(value) & 0xFFFFFFFFFFFFFFFF
