"""The target's executable mappings with their code bytes, for the ring decoder.

The decoder recovers the caller of a leaf in a library without frame pointers
by scanning the copied stack for return addresses; it checks each candidate
against the code (is the instruction before it a call?), so it needs the
bytes of every executable mapping. Files are mapped read-only, once each.
To check that a candidate returns from a call to the function below it, the
decoder also gets the function bounds and call slots of every mapped object
(`facts`, rsprof/recording/code_facts.py).
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
from rsprof.symbols.maps import Mapping, open_mapping

CodeRange = tuple[int, int, bool, memoryview | None]


class CodeMap:
    def __init__(self, pid: int, executable: str | None = None) -> None:
        self.pid = pid
        self.executable = executable  # the profiled program: never system code
        self._files: dict[tuple[str, int, str], mmap.mmap | None] = {}
        self._facts: dict[tuple[str, int, str], ObjectFacts | None] = {}

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

    def facts(self, mappings: Iterable[Mapping]
              ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Function bounds and (call slot, possible target) pairs of every mapped
        object, runtime addresses; slot values are read from the process."""
        items = []
        for m in mappings:
            key = m.file_key
            if key not in self._facts:
                mm = self._file(m)
                self._facts[key] = read_object_facts(memoryview(mm)) if mm is not None else None
            items.append((m.start, m.end, m.offset, self._facts[key]))
        return runtime_facts(mapped_objects(items), self._read_memory)

    def _read_memory(self, address: int, size: int) -> bytes | None:
        try:
            with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
                mem.seek(address)
                return mem.read(size)
        except (OSError, OverflowError, ValueError):
            return None
