"""The target's executable mappings with their code bytes, for the ring decoder.

The decoder recovers the caller of a leaf in a library without frame pointers
by scanning the copied stack for return addresses; it checks each candidate
against the code (is the instruction before it a call?), so it needs the
bytes of every executable mapping. Files are mapped read-only, once each.
To check that a candidate returns from a call to the function below it, the
decoder also gets the function bounds and call slots of every mapped object
(`facts`, rsprof/recording/code_facts.py). For CFI unwinding it hands out
each object's `.eh_frame`/`.debug_frame` with its load bias (`unwind_modules`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable

from rsprof.attribution import is_system_module
from rsprof.recording.code_facts import (
    ObjectFacts,
    mapped_objects,
    read_object_facts,
    runtime_facts,
)
from rsprof.recording.unwind_info import UnwindSections, read_unwind_sections
from rsprof.symbols.maps import Mapping, open_mapping

CodeRange = tuple[int, int, bool, memoryview | None]
# (start, end, load bias, unwind sections or None): what _unwind.Unwinder.set_modules takes
UnwindModule = tuple[int, int, int, UnwindSections | None]


class CodeMap:
    def __init__(self, pid: int, executable: str | None = None) -> None:
        self.pid = pid
        self.executable = executable  # the profiled program: never system code
        self._files: dict[tuple[str, int, str], mmap.mmap | None] = {}
        self._facts: dict[tuple[str, int, str], ObjectFacts | None] = {}
        self._unwind: dict[tuple[str, int, str], UnwindSections | None] = {}

    def _file(self, mapping: Mapping) -> mmap.mmap | None:
        key = mapping.file_key
        if key not in self._files:
            mm = None
            fd = open_mapping(self.pid, mapping)
            if fd is not None:
                with contextlib.suppress(OSError, ValueError):
                    mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
                os.close(fd)
            self._files[key] = mm
        return self._files[key]

    def ranges(self, mappings: Iterable[Mapping]) -> list[CodeRange]:
        out: list[CodeRange] = []
        for m in mappings:
            mm = self._file(m)
            view = None
            if mm is not None and m.offset < len(mm):
                view = memoryview(mm)[m.offset : min(len(mm), m.offset + m.end - m.start)]
            out.append((m.start, m.end, is_system_module(m.path, self.executable), view))
        return out

    def _object_facts(self, mapping: Mapping) -> ObjectFacts | None:
        key = mapping.file_key
        if key not in self._facts:
            mm = self._file(mapping)
            self._facts[key] = read_object_facts(memoryview(mm)) if mm is not None else None
        return self._facts[key]

    def unwind_modules(self, mappings: Iterable[Mapping]) -> list[UnwindModule]:
        """Every executable mapping with its object's load bias and unwind sections
        (the same UnwindSections object for every mapping of one file, so the
        unwinder builds each file's rule table once). A mapping whose file cannot
        be read, or whose bias is unknown, is listed without sections: the
        unwinder then knows the address is code but has no rules for it."""
        out: list[UnwindModule] = []
        for m in mappings:
            key = m.file_key
            facts = self._object_facts(m)
            bias = facts.bias(m.start, m.offset) if facts is not None else None
            if key not in self._unwind:
                mm = self._file(m)
                self._unwind[key] = (read_unwind_sections(memoryview(mm))
                                     if mm is not None else None)
            sections = self._unwind[key]
            out.append((m.start, m.end, bias if bias is not None else 0,
                        sections if bias is not None else None))
        return out

    def facts(self, mappings: Iterable[Mapping]
              ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Function bounds and (call slot, possible target) pairs of every mapped
        object, runtime addresses; slot values are read from the process."""
        items = [(m.start, m.end, m.offset, self._object_facts(m)) for m in mappings]
        return runtime_facts(mapped_objects(items), self._read_memory)

    def _read_memory(self, address: int, size: int) -> bytes | None:
        try:
            with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
                mem.seek(address)
                return mem.read(size)
        except (OSError, OverflowError, ValueError):
            return None
