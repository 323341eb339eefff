"""The symbol data model shared by the resolver, storage, attribution and reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    """One logical frame at an address: a real function or one inlined into it."""

    function: str  # demangled, without the Rust hash suffix; "module+0xoffset" when unknown
    file: str | None  # full path as recorded in DWARF (e.g. /rustc/<hash>/library/...)
    line: int | None
    module: str  # full path of the ELF object the address lies in ("[unknown]" if none)
    inlined: bool  # True when this frame was inlined into the next (outer) frame
    resolved: bool = True  # False when no symbol covered the address


@dataclass(frozen=True, slots=True)
class ResolvedAddress:
    """What one lookup address resolves to."""

    address: int  # the absolute lookup address in the target (already -1 for return addresses)
    module: str  # full path of the mapping, "[unknown]" when in no executable mapping
    build_id: str | None  # hex GNU build-id of that module, if any
    rel_address: int  # address relative to the module's ELF vaddr space (what addr2line takes)
    frames: tuple[Frame, ...]  # innermost (deepest inline) first, the real function last
    # The mapping it lies in, as /proc/PID/maps has it: (start, end, file offset of start).
    mapping: tuple[int, int, int] | None = None
