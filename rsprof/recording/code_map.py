"""The target's executable mappings with their code bytes, for the ring decoder.

The decoder recovers the caller of a leaf in a library without frame pointers
by scanning the copied stack for return addresses; it checks each candidate
against the code (is the instruction before it a call?), so it needs the
bytes of every executable mapping. Files are mapped read-only, once each.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable

from rsprof.attribution import is_system_module
from rsprof.symbols.maps import Mapping, open_mapping

CodeRange = tuple[int, int, bool, memoryview | None]


class CodeMap:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._files: dict[tuple[str, int, str], mmap.mmap | None] = {}

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
            out.append((m.start, m.end, is_system_module(m.path), view))
        return out
