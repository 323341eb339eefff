"""What detail a profile lacks, and how to get it: one note per module below full.

The recorder stores, per module, the detail its ELF file can give
(`modules.symbols`, `modules.functions`, `modules.cfi`: docs/schema.md). A
module whose frames show less than function, file:line and inlined frames gets
a note here, with the fix; `rsprof top` prints them under its header, the TUI
one short line, and the recorder's stderr warning is the same text. The
levels (rsprof.symbols.objfile.ModuleDetail):

* "functions": a .symtab but no DWARF line info: function names, no file:line;
* "exports": stripped (no .symtab): only the functions .dynsym exports have
  names, every other address is `module+0xoffset`;
* "none": no function symbol at all (a stripped executable, whose .dynsym
  exports none): addresses only.

Libraries of the system (libc, the loader, the vDSO) routinely have no line
info and no .symtab: they are noted only when they have no symbols at all.
Without unwind tables (.eh_frame/.debug_frame) a recording that walked stacks
by CFI (--unwind auto or dwarf) could not unwind through a module by them.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from rsprof.attribution import is_system_module
from rsprof.storage.schema import has_column

FIX_LINES = 'build with debug = "line-tables-only" or more in [profile.release]'
FIX_SYMBOLS = ("rebuild without strip, or install its debug symbols: a -dbgsym package or "
               "/usr/lib/debug/.build-id")


def symbols_note(module: str, symbols: str | None, functions: int | None) -> str:
    """The note for a module whose symbols give `symbols` detail ("" at full detail,
    or when the level is not known)."""
    if symbols == "functions":
        return f"{module}: no line info: functions only, no file:line ({FIX_LINES})"
    if symbols == "exports":
        n = functions or 0
        return (f"{module}: stripped: addresses only, except {n:,} exported "
                f"function{'' if n == 1 else 's'} ({FIX_SYMBOLS})")
    if symbols == "none":
        return f"{module}: stripped: addresses only, no symbols at all ({FIX_SYMBOLS})"
    return ""


def cfi_note(module: str, unwind: str) -> str:
    """The note for a module without unwind tables in a recording that unwound by CFI."""
    if unwind == "dwarf":
        return (f"{module}: no unwind tables (.eh_frame): stacks through it end there "
                "(--unwind dwarf uses CFI only; --unwind auto falls back to frame pointers)")
    return f"{module}: no unwind tables (.eh_frame): stacks through it rely on frame pointers"


_SHORT = {"functions": "no line info, functions only", "exports": "stripped, addresses only",
          "none": "stripped, addresses only"}


@dataclass(frozen=True, slots=True)
class DetailNote:
    module: str
    text: str   # what `top` prints
    short: str  # what the TUI shows (basename, a few words)


def detail_notes(conn: sqlite3.Connection) -> list[DetailNote]:
    """Notes for the modules that hold sampled addresses (of CPU samples or heap
    stacks: those with a row in `mappings`) whose detail is below full: the
    program's own executable first. Empty for a file written before rsprof stored
    the detail (no `modules.symbols`)."""
    if not has_column(conn, "modules", "symbols"):
        return []
    unwind = "r.unwind" if has_column(conn, "recordings", "unwind") else "'fp'"
    executables: set[str] = set()
    build_ids: set[str] = set()
    for exe, build_id in conn.execute("SELECT executable, build_id FROM recordings"):
        if exe:
            executables.add(exe.removesuffix(" (deleted)"))
        if build_id:
            build_ids.add(build_id)
    rows = conn.execute(
        f"SELECT m.path, m.build_id, m.symbols, m.functions, m.cfi, {unwind}"
        " FROM modules m"
        " JOIN (SELECT DISTINCT recording_id, module_id FROM mappings) mp"
        " ON mp.module_id = m.id"
        " JOIN recordings r ON r.id = mp.recording_id"
        " WHERE m.symbols IS NOT NULL ORDER BY m.path").fetchall()
    for path, build_id, *_ in rows:
        if build_id and build_id in build_ids:  # the executable under another name
            executables.add(path)
    notes: list[tuple[bool, DetailNote]] = []
    seen: set[str] = set()
    for path, _build_id, symbols, functions, cfi, how in rows:
        own = path in executables
        base = os.path.basename(path) or path
        found: list[tuple[str, str]] = []
        if own or not is_system_module(path, executables) or symbols == "none":
            text = symbols_note(path, symbols, functions)
            if text:
                found.append((text, f"{base}: {_SHORT[symbols]}"))
        if not cfi and cfi is not None and how in ("auto", "dwarf"):
            found.append((cfi_note(path, how), f"{base}: no unwind tables"))
        for text, short in found:
            if text not in seen:
                seen.add(text)
                notes.append((own, DetailNote(path, text, short)))
    notes.sort(key=lambda n: not n[0])  # stable: the executable's first, then by path
    return [note for _own, note in notes]


def detail_note_lines(conn: sqlite3.Connection) -> list[str]:
    """The notes as `top` prints them."""
    return [note.text for note in detail_notes(conn)]


def detail_note_short(conn: sqlite3.Connection) -> str:
    """The notes in one short line, as the TUI shows them ("" at full detail)."""
    shorts: list[str] = []
    for note in detail_notes(conn):
        if note.short not in shorts:
            shorts.append(note.short)
    return "; ".join(shorts)
