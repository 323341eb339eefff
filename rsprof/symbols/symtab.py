"""A compact, sorted function-symbol table with size-checked lookup, and its disk form."""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable

from rsprof.symbols.elf import STB_GLOBAL, STB_LOCAL, STB_WEAK

_MAGIC = b"RSPSYMT1"
_HEADER = struct.Struct("<8sIIII")  # magic, flags, count, names length, reserved
_FLAG_HAS_DWARF = 1
_MAX_BACKTRACK = 32  # how many enclosing candidates to try for nested symbols


def _preference(binding: int, name: bytes) -> tuple[int, int, int]:
    """Lower is better: global/weak over local, fewer leading underscores, shorter."""
    bind_rank = 0 if binding == STB_GLOBAL else 1 if binding == STB_WEAK else 2
    if binding == STB_LOCAL:
        bind_rank = 2
    underscores = len(name) - len(name.lstrip(b"_"))
    return (bind_rank, underscores, len(name))


class SymbolTable:
    """Function symbols sorted by start; `lookup` honours symbol sizes."""

    __slots__ = ("_ends", "_name_offs", "_names", "_starts", "has_dwarf")

    def __init__(
        self,
        starts: array[int],
        ends: array[int],
        name_offs: array[int],
        names: bytes,
        has_dwarf: bool,
    ) -> None:
        self._starts = starts
        self._ends = ends
        self._name_offs = name_offs  # len(starts) + 1 offsets into names
        self._names = names
        self.has_dwarf = has_dwarf

    def __len__(self) -> int:
        return len(self._starts)

    @classmethod
    def from_symbols(
        cls, symbols: Iterable[tuple[int, int, int, bytes]], has_dwarf: bool
    ) -> SymbolTable:
        """Build from (value, size, binding, name); aliases at one address collapse to one."""
        best: dict[int, tuple[tuple[int, int, int], int, bytes]] = {}
        for value, size, binding, name in symbols:
            pref = _preference(binding, name)
            cur = best.get(value)
            if cur is None:
                best[value] = (pref, size, name)
            else:
                keep_pref, keep_size, keep_name = cur
                if pref < keep_pref:
                    keep_pref, keep_name = pref, name
                best[value] = (keep_pref, max(size, keep_size), keep_name)
        starts = array("Q")
        ends = array("Q")
        offs = array("I", [0])
        blob = bytearray()
        for value in sorted(best):
            _pref, size, name = best[value]
            starts.append(value)
            ends.append(value + max(size, 1))
            blob += name
            offs.append(len(blob))
        return cls(starts, ends, offs, bytes(blob), has_dwarf)

    def lookup(self, address: int) -> tuple[str, int] | None:
        """(raw symbol name, symbol start) of the function covering `address`, else None."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, address) - 1
        stop = max(-1, i - _MAX_BACKTRACK)
        while i > stop:
            if address < ends[i]:
                a, b = self._name_offs[i], self._name_offs[i + 1]
                return self._names[a:b].decode("utf-8", "replace"), starts[i]
            i -= 1
        return None

    # -- disk form ---------------------------------------------------------

    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(
                _MAGIC,
                _FLAG_HAS_DWARF if self.has_dwarf else 0,
                len(self._starts),
                len(self._names),
                0,
            )
        ]
        for arr in (self._starts, self._ends, self._name_offs):
            a = array(arr.typecode, arr)
            if sys.byteorder != "little":
                a.byteswap()
            parts.append(a.tobytes())
        parts.append(self._names)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> SymbolTable:
        """Parse `to_bytes()` output; raises ValueError if it is corrupt."""
        if len(data) < _HEADER.size:
            raise ValueError("symbol table cache too short")
        magic, flags, count, names_len, _ = _HEADER.unpack_from(data, 0)
        if magic != _MAGIC:
            raise ValueError("bad symbol table cache magic")
        pos = _HEADER.size
        arrays: list[array[int]] = []
        for typecode, n in (("Q", count), ("Q", count), ("I", count + 1)):
            arr = array(typecode)
            size = arr.itemsize * n
            if pos + size > len(data):
                raise ValueError("truncated symbol table cache")
            arr.frombytes(data[pos : pos + size])
            if sys.byteorder != "little":
                arr.byteswap()
            arrays.append(arr)
            pos += size
        if pos + names_len != len(data):
            raise ValueError("symbol table cache has the wrong length")
        names = data[pos:]
        starts, ends, offs = arrays
        if offs[0] != 0 or offs[-1] != names_len:
            raise ValueError("corrupt symbol table cache name offsets")
        return cls(starts, ends, offs, names, bool(flags & _FLAG_HAS_DWARF))
