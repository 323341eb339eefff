"""Symbolizer: absolute addresses of a live (or recently live) process -> frames."""

from __future__ import annotations

import contextlib
import os
import threading
from bisect import bisect_right
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rsprof.symbols.maps import Mapping
    from rsprof.symbols.model import Frame, ResolvedAddress
    from rsprof.symbols.objfile import ModuleDetail, ObjectSymbols

UNKNOWN_MODULE = "[unknown]"

__all__ = ["UNKNOWN_MODULE", "Symbolizer", "resolve_file_addresses"]


class _ObjectSlot:
    """A mapped file: an open descriptor to its bytes, and its symbols once loaded."""

    __slots__ = ("fd", "lock", "path", "symbols")

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        self.fd = fd
        self.lock = threading.Lock()
        self.symbols: ObjectSymbols | None = None

    def load(self, cache_dir: Path | None) -> ObjectSymbols:
        with self.lock:
            if self.symbols is None:
                from rsprof.symbols.maps import fd_path
                from rsprof.symbols.objfile import ObjectSymbols

                read_path = fd_path(self.fd) if self.fd is not None else self.path
                self.symbols = ObjectSymbols(self.path, read_path, cache_dir)
            return self.symbols


class Symbolizer:
    """Resolves absolute lookup addresses of process `pid` to inline-aware frames.

    The maps are read at construction; the mapped files are opened right away so that
    they remain readable after the process exits or a file is deleted. Symbols are
    loaded lazily, per object, the first time an address falls into it.
    """

    def __init__(self, pid: int, cache_dir: Path | None = None, *, preload: bool = False) -> None:
        from rsprof.symbols.cache import default_cache_dir

        self.pid = pid
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.warnings: list[str] = []
        self._current: list[Mapping] = []
        self._current_starts: list[int] = []
        self._old: list[Mapping] = []
        self._old_starts: list[int] = []
        self._slots: dict[tuple[str, int, str], _ObjectSlot] = {}
        self._results: dict[int, ResolvedAddress] = {}
        self._unresolved: set[int] = set()
        self._warned: set[str] = set()
        self._preloader: threading.Thread | None = None
        self.refresh_maps()
        if preload:
            self.preload()

    # -- lifecycle -----------------------------------------------------------

    def preload(self) -> None:
        """Load symbols (building SymCaches) for all mapped objects in a background thread.

        Call it when profiling starts: the expensive part (DWARF -> SymCache) runs in
        native code without the GIL while the recording goes on, so `resolve()` at the
        end finds everything loaded. `resolve()` waits for an object still in progress.
        """
        if self._preloader is not None and self._preloader.is_alive():
            return
        exe = self._exe_key()
        slots = sorted(self._slots.items(), key=lambda kv: kv[0] != exe)
        todo = [slot for _key, slot in slots if slot.symbols is None]
        cache_dir = self.cache_dir

        def run() -> None:
            for slot in todo:
                with contextlib.suppress(Exception):
                    slot.load(cache_dir)
            from rsprof.symbols.dwarf_reader import start_background_builds

            start_background_builds()  # the recording still runs: build SymCaches now

        self._preloader = threading.Thread(target=run, name="rsprof-symbols", daemon=True)
        self._preloader.start()

    def _exe_key(self) -> tuple[str, int, str] | None:
        try:
            st = os.stat(f"/proc/{self.pid}/exe")
        except OSError:
            return None
        for key in self._slots:
            if key[1] == st.st_ino:
                return key
        return None

    def close(self) -> None:
        """Release the file descriptors held for mapped files."""
        if self._preloader is not None:
            self._preloader.join()
            self._preloader = None
        from rsprof.symbols.dwarf_reader import start_background_builds

        start_background_builds()
        for slot in self._slots.values():
            if slot.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(slot.fd)
                slot.fd = None

    def __enter__(self) -> Symbolizer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- maps ----------------------------------------------------------------

    def refresh_maps(self) -> None:
        """Re-read the process maps; mappings that disappeared are kept as a fallback."""
        from rsprof.symbols.maps import open_mapping, read_exec_mappings

        try:
            fresh = read_exec_mappings(self.pid)
        except OSError as e:
            if not self._current and not self._old:
                self._warn(f"cannot read memory maps of pid {self.pid}: {e}")
            return
        for m in fresh:
            if m.file_key not in self._slots:
                self._slots[m.file_key] = _ObjectSlot(m.path, open_mapping(self.pid, m))
        fresh_set = set(fresh)
        old = {m for m in self._old if m not in fresh_set}
        old.update(m for m in self._current if m not in fresh_set)
        self._current = fresh
        self._current_starts = [m.start for m in fresh]
        self._old = sorted(old, key=lambda m: m.start)
        self._old_starts = [m.start for m in self._old]

    @property
    def mappings(self) -> list[Mapping]:
        """The executable mappings from the latest read of the maps."""
        return list(self._current)

    def _find_mapping(self, address: int) -> Mapping | None:
        i = bisect_right(self._current_starts, address) - 1
        if i >= 0 and address < self._current[i].end:
            return self._current[i]
        i = bisect_right(self._old_starts, address) - 1
        while i >= 0:  # old mappings may overlap each other
            m = self._old[i]
            if address < m.end:
                return m
            i -= 1
        return None

    # -- objects -------------------------------------------------------------

    def _load_objects_for(self, addresses: Iterable[int]) -> None:
        """Load the objects these addresses fall into, in parallel.

        Building a SymCache runs in native code without the GIL, so the main binary
        and, say, libc with a separate debug file are processed concurrently.
        """
        pending: dict[tuple[str, int, str], _ObjectSlot] = {}
        for address in addresses:
            m = self._find_mapping(address)
            if m is not None and m.file_key not in pending:
                slot = self._slots[m.file_key]
                if slot.symbols is None:
                    pending[m.file_key] = slot
        if len(pending) < 2:
            return
        slots = list(pending.values())
        cache_dir = self.cache_dir

        def load(slot: _ObjectSlot) -> None:
            with contextlib.suppress(Exception):
                slot.load(cache_dir)

        threads = [threading.Thread(target=load, args=(slot,), daemon=True) for slot in slots[1:]]
        for t in threads:
            t.start()
        load(slots[0])
        for t in threads:
            t.join()

    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    def _symbols_for(self, mapping: Mapping) -> ObjectSymbols:
        from rsprof.symbols.objfile import is_system_library

        slot = self._slots[mapping.file_key]
        sym = slot.symbols if slot.symbols is not None else slot.load(self.cache_dir)
        if mapping.path not in self._warned:
            self._warned.add(mapping.path)
            if sym.error is not None:
                self._warn(f"cannot read {mapping.path}: {sym.error}")
            elif sym.detail is not None and (sym.detail.symbols == "none"
                                             or not is_system_library(mapping.path)):
                # Exactly what is missing (never "functions only" for a stripped file):
                # the note `rsprof top` prints too.
                from rsprof.report.detail_notes import symbols_note

                text = symbols_note(mapping.path, sym.detail.symbols, sym.detail.functions)
                if text:
                    self._warn(text)
        return sym

    def module_detail(self, path: str, build_id: str | None) -> ModuleDetail | None:
        """The detail of the loaded object `path` with `build_id` (as ResolvedAddress
        names it), None when it is not loaded or could not be read."""
        for slot in self._slots.values():
            sym = slot.symbols
            if slot.path == path and sym is not None and sym.build_id == build_id:
                return sym.detail
        return None

    def module_details(self) -> dict[str, ModuleDetail]:
        """The detail of every object loaded so far, by module path."""
        return {slot.path: slot.symbols.detail for slot in self._slots.values()
                if slot.symbols is not None and slot.symbols.detail is not None}

    # -- resolution ----------------------------------------------------------

    @property
    def unresolved_addresses(self) -> int:
        """How many distinct addresses resolved to no function at all."""
        return len(self._unresolved)

    def _resolve_one(self, address: int) -> ResolvedAddress:
        from rsprof.symbols.model import Frame, ResolvedAddress

        mapping = self._find_mapping(address)
        if mapping is None:
            frame = Frame(
                f"{UNKNOWN_MODULE}+0x{address:x}", None, None, UNKNOWN_MODULE, False, False
            )
            return ResolvedAddress(address, UNKNOWN_MODULE, None, address, (frame,))
        sym = self._symbols_for(mapping)
        rel = sym.rel_address(mapping.file_offset(address))
        return ResolvedAddress(address, mapping.path, sym.build_id, rel, sym.frames(rel),
                               segment_mapping(mapping, sym))

    def resolve(self, addresses: Iterable[int]) -> dict[int, ResolvedAddress]:
        """Resolve lookup addresses (return addresses already minus one)."""
        out: dict[int, ResolvedAddress] = {}
        results = self._results
        addresses = list(addresses)
        self._load_objects_for(a for a in addresses if a not in results)
        for address in addresses:
            if address in out:
                continue
            res = results.get(address)
            if res is None:
                res = self._resolve_one(address)
                if res.module != UNKNOWN_MODULE:
                    results[address] = res  # unknown ones may map after refresh_maps()
                if not res.frames[-1].resolved:
                    self._unresolved.add(address)
                else:
                    self._unresolved.discard(address)
            out[address] = res
        return out


PAGE = 4096


def segment_mapping(mapping: Mapping, sym: ObjectSymbols) -> tuple[int, int, int]:
    """(start, end, file offset) of a mapping, for profile formats: /proc/PID/maps's,
    except that a mapping whose first page begins before its PT_LOAD segment (a
    segment at a file offset that is not page aligned, as lld lays out Rust
    binaries) starts where the segment's first byte is mapped, at the segment's file
    offset: the same address-to-file-offset map (x - start + offset), and `go tool
    pprof`, whose ELF reader takes start minus the segment's address as the load
    bias (and ignores the file offset), then reads the same addresses as addr2line."""
    start, offset = mapping.start, mapping.offset
    loads = sym.identity.loads if sym.identity is not None else ()
    for seg in loads:
        if offset < seg.offset < offset + PAGE and seg.offset < offset + mapping.end - start:
            return start + seg.offset - offset, mapping.end, seg.offset
    return start, mapping.end, offset


def resolve_file_addresses(
    path: str, rel_addresses: Iterable[int], cache_dir: Path | None = None
) -> dict[int, tuple[Frame, ...]]:
    """Offline: resolve ELF virtual addresses (as given to addr2line) of one file."""
    from rsprof.symbols import dwarf_reader

    addrs = list(rel_addresses)
    dwarf_reader.prefetch(path, addrs)  # decodes DWARF on another core meanwhile
    from rsprof.symbols.objfile import ObjectSymbols

    sym = ObjectSymbols(path, path, cache_dir)
    out = {rel: sym.frames(rel) for rel in addrs}
    dwarf_reader.start_background_builds()  # SymCache for the next run, now that we are done
    return out
