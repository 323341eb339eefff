"""All symbol sources of one ELF object: identity, symbol table (cached), DWARF (cached)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rsprof.symbols.cache import read_sealed, write_sealed
from rsprof.symbols.demangle import demangle
from rsprof.symbols.dwarf_reader import DwarfReaderLines, load_source_lines, separate_debug_file
from rsprof.symbols.elf import (
    ElfIdentity,
    NotElfError,
    read_detail_facts,
    read_elf_identity,
    read_section_facts,
)
from rsprof.symbols.model import Frame
from rsprof.symbols.symtab import SymbolTable

if TYPE_CHECKING:
    from rsprof.symbols.dwarf import DwarfLines

_SYSTEM_PREFIXES = (
    "/lib/",
    "/lib32/",
    "/lib64/",
    "/libx32/",
    "/usr/lib/",
    "/usr/lib32/",
    "/usr/lib64/",
    "/usr/libx32/",
    "/usr/libexec/",
)


def is_system_library(path: str) -> bool:
    """Distribution-provided objects (and the kernel's vDSO), routinely without DWARF."""
    return path.startswith(_SYSTEM_PREFIXES) or path == "[vdso]"


def cache_key(identity: ElfIdentity, read_path: str) -> str:
    """Per-object cache key: build-id plus file size (a stripped copy shares the
    build-id but not the contents), or a hash of the file's identity without one."""
    st = os.stat(read_path)
    if identity.build_id:
        return f"{identity.build_id}-{st.st_size:x}"
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    import hashlib  # only for objects without a build-id: keep it off the common path

    return "nobid-" + hashlib.sha1(ident.encode()).hexdigest()[:24]


# The detail an object's symbols give (docs/schema.md, modules.symbols), best first.
SYMBOL_LEVELS = ("lines", "functions", "exports", "none")


@dataclass(frozen=True, slots=True)
class ModuleDetail:
    """The detail a profile can have for one object.

    `symbols`: "lines" (DWARF line info, in the file or a separate debug file found by
    build-id: function, file:line and inlined frames), "functions" (a .symtab, no line
    info: function names only), "exports" (stripped: no .symtab, only the functions of
    .dynsym; every other address is module+0xoffset), "none" (no function symbols).
    `functions`: how many function symbols (distinct addresses) it has.
    `cfi`: it has .eh_frame or .debug_frame, so CPU stacks through it can be unwound
    without frame pointers.
    """

    symbols: str
    functions: int
    cfi: bool


def _bare(name: str) -> bool:
    """A DWARF name without its path: not mangled, no `::` outside generics."""
    return not name.startswith(("_ZN", "_R")) and "::" not in name.split("<", 1)[0]


class ObjectSymbols:
    """Resolves ELF virtual addresses of one object to frames.

    `module` is the path reported in frames; `read_path` is where the bytes are read
    (e.g. /proc/self/fd/N for a file that is deleted on disk).
    """

    def __init__(self, module: str, read_path: str, cache_dir: Path | None) -> None:
        self.module = module
        self.basename = os.path.basename(module) or module
        self.identity: ElfIdentity | None = None
        self.symtab = SymbolTable.from_symbols((), False)
        self.dwarf: DwarfLines | DwarfReaderLines | None = None
        self.error: str | None = None
        self._frame_memo: dict[tuple[str, str | None, int | None, bool], Frame] = {}
        try:
            self.identity = read_elf_identity(read_path)
            key = cache_key(self.identity, read_path)
            self.symtab = self._load_symtab(read_path, cache_dir, key)
            if self.symtab.has_dwarf:
                self.dwarf = load_source_lines(read_path, self.identity.image_base, cache_dir, key)
            else:
                debug = separate_debug_file(self.identity.build_id)
                if debug is not None:
                    self.dwarf = load_source_lines(
                        debug, self.identity.image_base, cache_dir, key + ".debug"
                    )
        except (OSError, NotElfError) as e:
            self.error = str(e)
        self.detail: ModuleDetail | None = None  # None when the file cannot be read
        if self.error is None:
            try:
                facts = read_detail_facts(read_path)
            except (OSError, ValueError, struct.error):
                pass
            else:
                if self.dwarf is not None:
                    level = "lines"
                elif not len(self.symtab):
                    level = "none"
                else:
                    level = "functions" if facts.has_symtab else "exports"
                self.detail = ModuleDetail(level, len(self.symtab), facts.has_cfi)

    @property
    def build_id(self) -> str | None:
        return self.identity.build_id if self.identity is not None else None

    @property
    def has_debug_info(self) -> bool:
        return self.dwarf is not None

    @staticmethod
    def _load_symtab(read_path: str, cache_dir: Path | None, key: str) -> SymbolTable:
        target = cache_dir / f"{key}.symtab" if cache_dir is not None else None
        if target is not None:
            data = read_sealed(target)
            if data is not None:
                try:
                    return SymbolTable.from_bytes(data)
                except ValueError:
                    pass
        facts = read_section_facts(read_path)
        table = SymbolTable.from_symbols(facts.functions, facts.has_dwarf)
        if target is not None:
            write_sealed(target, table.to_bytes())
        return table

    def rel_address(self, file_offset: int) -> int:
        """ELF vaddr of a file offset (what addr2line takes)."""
        if self.identity is None:
            return file_offset
        return self.identity.vaddr_of_offset(file_offset)

    def unknown(self, rel: int) -> Frame:
        return Frame(f"{self.basename}+0x{rel:x}", None, None, self.module, False, False)

    def frames(self, rel: int) -> tuple[Frame, ...]:
        """Frames at ELF vaddr `rel`, innermost (deepest inline) first."""
        module = self.module
        if self.dwarf is not None:
            entries = self.dwarf.lookup(rel)
            if entries:
                last = len(entries) - 1
                out: list[Frame] = []
                memo = self._frame_memo  # equal frames are shared (they are immutable)
                for i, (name, path, line) in enumerate(entries):
                    if i == last and (not name or _bare(name)):
                        # The function itself: line tables alone (`debug =
                        # "line-tables-only"`) name it without its path (`leaf`),
                        # where the symbol table (and so a warm SymCache) has
                        # `two_callers::leaf`: one name for both readers.
                        hit = self.symtab.lookup(rel)
                        if hit is not None:
                            name = hit[0]
                    if not name:
                        name = "<inlined>"
                    key = (name, path, line, i < last)
                    frame = memo.get(key)
                    if frame is None:
                        frame = Frame(demangle(name), path, line, module, i < last, True)
                        memo[key] = frame
                    out.append(frame)
                return tuple(out)
        hit = self.symtab.lookup(rel)
        if hit is not None:
            return (Frame(demangle(hit[0]), None, None, module, False, True),)
        return (self.unknown(rel),)
