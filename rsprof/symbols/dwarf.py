"""file:line and inlined-frame lookup from DWARF, through symbolic's SymCache.

A SymCache is built once per object (fast, in Rust) and kept on disk next to the
symbol-table cache, so later runs mmap it instead of re-reading DWARF.

SymCache addresses are relative to the object's *load address*, which symbolic
defines as the vaddr of the first PT_LOAD segment (0 for PIE executables and
shared libraries, e.g. 0x400000 for non-PIE executables): we subtract it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from rsprof.symbols.cache import read_sealed, write_sealed

_SYMBOL_ONLY_LINE = 0


class DwarfLines:
    """Inline-aware source lookup for one object."""

    __slots__ = ("_image_base", "_symcache")

    def __init__(self, symcache: Any, image_base: int) -> None:
        self._symcache = symcache
        self._image_base = image_base

    def lookup(self, rel: int) -> list[tuple[str, str | None, int | None]]:
        """(raw function name, file, line) innermost-first for an ELF vaddr.

        Empty when DWARF does not cover the address; SymCache's own symbol-table
        fallback (no file, no line, and no size check) is discarded so the caller can
        use its size-checked symbol table instead.
        """
        addr = rel - self._image_base
        if addr < 0:
            return []
        try:
            locs = self._symcache.lookup(addr)
        except Exception:
            return []
        out: list[tuple[str, str | None, int | None]] = []
        has_source = False
        for loc in locs:
            path = loc.full_path or None
            line = loc.line or None
            if path is not None or line is not None:
                has_source = True
            out.append((loc.symbol or "", path, line))
        return out if has_source else []


def _symcache_version() -> int:
    from symbolic.symcache import SYMCACHE_LATEST_VERSION

    return int(SYMCACHE_LATEST_VERSION)


def symcache_file(cache_dir: Path, key: str) -> Path:
    """Where the SymCache for object `key` lives (the format version is in the name)."""
    return cache_dir / f"{key}.v{_symcache_version()}.symcache"


def _open_cached(path: Path) -> Any | None:
    from symbolic.symcache import SymCache as _SymCache

    symcache_cls: Any = _SymCache
    data = read_sealed(path)
    if data is None:
        return None
    try:
        sc = symcache_cls.from_bytes(data)
        if not sc.is_latest_version:
            return None
        return sc
    except Exception:
        return None


def build_symcache(debug_path: str) -> Any | None:
    """Build a SymCache from an object file; None if symbolic cannot read it."""
    from symbolic.debuginfo import Archive

    try:
        archive = Archive.open(debug_path)
        for obj in archive.iter_objects():
            return obj.make_symcache()
    except Exception:
        return None
    return None


def load_dwarf_lines(
    debug_path: str, image_base: int, cache_dir: Path | None, key: str | None
) -> DwarfLines | None:
    """The DWARF lookup for an object, from the disk cache when possible.

    A missing, stale or corrupt cache file is rebuilt (atomically); failures to write
    the cache are ignored. Returns None if no SymCache can be built at all.
    """
    target = symcache_file(cache_dir, key) if cache_dir is not None and key else None
    sc = _open_cached(target) if target is not None else None
    if sc is None:
        sc = build_symcache(debug_path)
        if sc is None:
            return None
        if target is not None:
            buf = io.BytesIO()
            try:
                sc.dump_into(buf)
            except Exception:
                buf = io.BytesIO()
            if buf.tell():
                write_sealed(target, buf.getvalue())
    return DwarfLines(sc, image_base)


def separate_debug_file(build_id: str | None) -> str | None:
    """A distro debug file for `build_id` (/usr/lib/debug/.build-id/xx/yyyy.debug)."""
    if not build_id or len(build_id) < 4:
        return None
    path = f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    return path if os.path.isfile(path) else None
