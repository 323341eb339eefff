"""What the stack decoder needs to check a recovered return address: function
bounds and the targets of indirect call slots, per mapped ELF object.

A word on the stack is taken as a caller only if it is provably a return
address into a function that called the frame below it (docs/attribution.md,
"Frame-pointer stacks"). That needs, for every executable mapping:

- **function bounds**: the address ranges of the `.eh_frame` FDEs (every
  function the compiler emitted unwind info for: all of a Rust binary, glibc,
  the shim), so "the function containing this address" and its first bytes
  (its prologue) are known;
- **call slots**: the 64-bit slots that `call *slot(%rip)` / `jmp *slot(%rip)`
  go through (the GOT), with the functions they can hold: their value read
  from the process (relocated, so IFUNCs and interposed symbols are what the
  program really calls), plus the statically known target (R_X86_64_RELATIVE,
  or every non-IFUNC definition of the symbol's name among the mapped
  objects, for a lazily bound slot that still points into the PLT).

Little-endian 64-bit ELF only (x86-64, where the scan runs); anything else,
or a malformed file, yields no facts (the decoder then recovers nothing).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

_PT_LOAD = 1
_PF_X = 1
_SHT_RELA = 4
_SHT_DYNSYM = 11
_R_X86_64_64 = 1
_R_X86_64_GLOB_DAT = 6
_R_X86_64_JUMP_SLOT = 7
_R_X86_64_RELATIVE = 8
_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_MAX_FDES = 1 << 21  # a sanity bound for malformed .eh_frame sections


@dataclass(slots=True)
class ObjectFacts:
    """Facts of one ELF object, in its own virtual addresses."""

    # executable PT_LOADs: (offset, vaddr, filesz)
    loads: list[tuple[int, int, int]] = field(default_factory=list)
    functions: list[tuple[int, int]] = field(default_factory=list)  # FDE [start, end)
    # (slot vaddr, target vaddr in this object or None, symbol name or None)
    slots: list[tuple[int, int | None, bytes | None]] = field(default_factory=list)
    exports: dict[bytes, int] = field(default_factory=dict)  # non-IFUNC function -> vaddr

    def bias(self, map_start: int, map_offset: int) -> int | None:
        """Load bias of the object whose executable segment is mapped with file
        offset `map_offset` at `map_start` (the mapping starts at the page that
        holds the segment's first byte)."""
        for off, vaddr, filesz in self.loads:
            if off & ~0xFFF <= map_offset < off + max(filesz, 1):
                return map_start - (map_offset - off + vaddr)
        return None


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80 or shift > 63:
            return value, pos


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    start = pos
    value, pos = _uleb(data, pos)
    shift = 7 * (pos - start)
    if shift < 64 and (value >> (shift - 1)) & 1:  # the last byte's sign bit
        value -= 1 << shift
    return value, pos


_FIXED = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}


def _encoded(data: bytes, pos: int, enc: int, section_vaddr: int) -> tuple[int, int]:
    """Read a DW_EH_PE-encoded pointer at pos; returns (value, new pos)."""
    fmt = enc & 0x0F
    if fmt == 0x01:
        value, new = _uleb(data, pos)
    elif fmt == 0x09:
        value, new = _sleb(data, pos)
    elif fmt in _FIXED:
        st = _FIXED[fmt]
        value = struct.unpack_from(st, data, pos)[0]
        new = pos + struct.calcsize(st)
    else:
        raise ValueError(f"pointer encoding {enc:#x}")
    if enc & 0x70 == 0x10:  # pcrel
        value += section_vaddr + pos
    elif enc & 0x70 not in (0x00,):
        raise ValueError(f"pointer application {enc:#x}")
    return value & 0xFFFFFFFFFFFFFFFF, new


def _cie_fde_encoding(data: bytes, pos: int, end: int, section_vaddr: int) -> int:
    """The FDE pointer encoding ('R' augmentation) of the CIE whose body starts at pos."""
    version = data[pos]
    pos += 1
    aug_end = data.index(b"\0", pos, end)
    aug = bytes(data[pos:aug_end])
    pos = aug_end + 1
    if b"eh" in aug:
        pos += 8
    _, pos = _uleb(data, pos)  # code alignment
    _, pos = _sleb(data, pos)  # data alignment
    if version == 1:
        pos += 1
    else:
        _, pos = _uleb(data, pos)
    enc = 0x00
    if aug.startswith(b"z"):
        _, pos = _uleb(data, pos)
        for ch in aug[1:]:
            if ch == ord("R"):
                enc = data[pos]
                pos += 1
            elif ch == ord("P"):
                penc = data[pos]
                _, pos = _encoded(data, pos + 1, penc & 0x7F, section_vaddr)
            elif ch == ord("L"):
                pos += 1
            elif ch not in (ord("S"), ord("B"), ord("G")):
                break
    return enc


def fde_ranges(data: bytes, section_vaddr: int) -> list[tuple[int, int]]:
    """[start, end) of every FDE of an .eh_frame section loaded at section_vaddr."""
    out: list[tuple[int, int]] = []
    encodings: dict[int, int] = {}
    pos = 0
    size = len(data)
    while pos + 4 <= size and len(out) < _MAX_FDES:
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0:
            break
        body = pos + 4
        if length == 0xFFFFFFFF:
            length = struct.unpack_from("<Q", data, body)[0]
            body += 8
        end = body + length
        if end > size or length < 4:
            break
        cie_ptr = struct.unpack_from("<I", data, body)[0]
        if cie_ptr != 0:
            cie = body - cie_ptr
            try:
                if cie not in encodings:
                    cie_len = struct.unpack_from("<I", data, cie)[0]
                    cie_body = cie + 4
                    if cie_len == 0xFFFFFFFF:
                        cie_len = struct.unpack_from("<Q", data, cie_body)[0]
                        cie_body += 8
                    encodings[cie] = _cie_fde_encoding(data, cie_body + 4, cie_body + cie_len,
                                                       section_vaddr)
                enc = encodings[cie]
                start, p = _encoded(data, body + 4, enc, section_vaddr)
                span, _ = _encoded(data, p, enc & 0x0F, section_vaddr)
                if span:
                    out.append((start, start + span))
            except (ValueError, IndexError, struct.error):
                pass
        pos = end
    out.sort()
    return out


def read_object_facts(data: bytes | memoryview) -> ObjectFacts:
    """Facts of the ELF object whose bytes are `data` (empty facts if unsupported)."""
    facts = ObjectFacts()
    try:
        _read_into(facts, data)
    except (ValueError, IndexError, struct.error):
        return ObjectFacts(loads=facts.loads)
    return facts


def _read_into(facts: ObjectFacts, data: bytes | memoryview) -> None:
    if len(data) < 64 or bytes(data[:4]) != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(
        "<HHHHH", data, 54)
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == _PT_LOAD and p_flags & _PF_X:
            facts.loads.append((p_offset, p_vaddr, p_filesz))
    if not e_shoff or e_shentsize < 64 or e_shnum == 0 or e_shnum > 1 << 16:
        return
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
                for i in range(e_shnum)]

    def contents(i: int) -> bytes:
        s = sections[i]
        return bytes(data[s[4] : s[4] + s[5]]) if s[1] != 8 else b""  # not SHT_NOBITS

    names = contents(e_shstrndx) if e_shstrndx < e_shnum else b""
    symbols: dict[int, list[tuple[bytes, int, int, int]]] = {}  # dynsym index -> entries

    def dynsym(i: int) -> list[tuple[bytes, int, int, int]]:
        if i not in symbols:
            entries: list[tuple[bytes, int, int, int]] = []
            if 0 < i < e_shnum and sections[i][1] == _SHT_DYNSYM:
                strtab = contents(sections[i][6]) if sections[i][6] < e_shnum else b""
                raw = contents(i)
                for name_off, info, _other, shndx, value, _size in struct.iter_unpack(
                        "<IBBHQQ", raw[: len(raw) - len(raw) % 24]):
                    end = strtab.find(b"\0", name_off)
                    entries.append((bytes(strtab[name_off:end]) if end >= 0 else b"",
                                    info, shndx, value))
            symbols[i] = entries
        return symbols[i]

    for i, s in enumerate(sections):
        name_end = names.find(b"\0", s[0])
        name = bytes(names[s[0] : name_end]) if name_end >= 0 else b""
        if name == b".eh_frame" and s[1] != 8:
            facts.functions = fde_ranges(contents(i), s[3])
        elif s[1] == _SHT_DYNSYM:
            for sym_name, info, shndx, value in dynsym(i):
                if shndx != 0 and value and (info & 0xF) == _STT_FUNC and info >> 4 in (1, 2):
                    facts.exports.setdefault(sym_name, value)
        elif s[1] == _SHT_RELA and s[9] == 24:
            syms = dynsym(s[6])
            raw = contents(i)
            usable = len(raw) - len(raw) % 24
            for r_offset, r_info, r_addend in struct.iter_unpack("<QQq", raw[:usable]):
                rtype, sym = r_info & 0xFFFFFFFF, r_info >> 32
                if rtype == _R_X86_64_RELATIVE:
                    facts.slots.append((r_offset, r_addend & 0xFFFFFFFFFFFFFFFF, None))
                elif (rtype in (_R_X86_64_GLOB_DAT, _R_X86_64_JUMP_SLOT, _R_X86_64_64)
                      and sym < len(syms)
                      and (syms[sym][1] & 0xF) in (_STT_FUNC, _STT_GNU_IFUNC, 0)):
                    facts.slots.append((r_offset, None, syms[sym][0] or None))
    facts.slots.sort(key=lambda s: s[0])


@dataclass(frozen=True, slots=True)
class MappedObject:
    """One mapped object: its facts and where it is (runtime = vaddr + bias)."""

    facts: ObjectFacts
    bias: int
    code_start: int  # its executable mapping(s), runtime addresses
    code_end: int


ReadMemory = Callable[[int, int], "bytes | None"]


def runtime_facts(objects: Sequence[MappedObject], read_memory: ReadMemory | None = None
                  ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Function ranges and (slot, possible target) pairs in runtime addresses.

    `read_memory(address, size) -> bytes | None` reads the process (the slot
    values as the dynamic linker left them); None: static targets only.
    """
    functions: list[tuple[int, int]] = []
    seen_objects: set[int] = set()
    exports: dict[bytes, list[int]] = {}
    for obj in objects:
        for start, end in obj.facts.functions:
            s, e = start + obj.bias, end + obj.bias
            if obj.code_start <= s < obj.code_end:
                functions.append((s, min(e, obj.code_end)))
        if id(obj.facts) in seen_objects:
            continue
        seen_objects.add(id(obj.facts))
        for export, vaddr in obj.facts.exports.items():
            exports.setdefault(export, []).append(vaddr + obj.bias)
    slots: list[tuple[int, int]] = []
    done: set[tuple[int, int]] = set()
    for obj in objects:
        if (id(obj.facts), obj.bias) in done or not obj.facts.slots:
            continue
        done.add((id(obj.facts), obj.bias))
        values = _slot_values(obj, read_memory)
        for slot, target, name in obj.facts.slots:
            addr = slot + obj.bias
            targets = set()
            if target is not None:
                targets.add(target + obj.bias)
            if name is not None:
                targets.update(exports.get(name, ()))
            value = values.get(addr)
            if value:
                targets.add(value)
            slots.extend((addr, t) for t in targets)
    functions.sort()
    slots.sort()
    return functions, slots


def _slot_values(obj: MappedObject, read_memory: ReadMemory | None) -> dict[int, int]:
    if read_memory is None:
        return {}
    first = obj.facts.slots[0][0] + obj.bias
    last = obj.facts.slots[-1][0] + obj.bias + 8
    if last - first > 1 << 24:
        return {}
    raw = read_memory(first, last - first)
    if not raw or len(raw) < last - first:
        return {}
    out: dict[int, int] = {}
    for slot, _t, _n in obj.facts.slots:
        addr = slot + obj.bias
        out[addr] = struct.unpack_from("<Q", raw, addr - first)[0]
    return out


def mapped_objects(mappings: Iterable[tuple[int, int, int, ObjectFacts | None]]
                   ) -> list[MappedObject]:
    """(start, end, file offset, facts) of executable mappings -> MappedObjects."""
    out: list[MappedObject] = []
    for start, end, offset, facts in mappings:
        if facts is None:
            continue
        bias = facts.bias(start, offset)
        if bias is not None:
            out.append(MappedObject(facts, bias, start, end))
    return out
