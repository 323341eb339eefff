"""Cold-path DWARF lookup: decode only the compile units that hold the addresses.

Building a SymCache converts the whole object's DWARF up front (~70 ms for a 5 MB
Rust binary). For a first run it is faster to do what addr2line does: find each
address's compile unit (via .debug_aranges or the unit DIEs' ranges) and decode just
that unit's line program and DIE tree, in C (rsprof/_dwarf.pyx, csrc/rsprof_dwarf.c).

`open_dwarf_reader()` returns None whenever this path cannot serve the file
(no/odd DWARF, big-endian, unsupported compression, the extension missing, ...):
callers then fall back to the SymCache.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsprof._dwarf import SECTION_NAMES  # the C reader's section order, defined once

if TYPE_CHECKING:  # rsprof.symbols.dwarf (and symbolic) load only on the warm/fallback path
    from rsprof.symbols.dwarf import DwarfLines

_SHF_COMPRESSED = 0x800
_SHT_NOBITS = 8
_ELFCOMPRESS_ZLIB = 1
_MAX_DECOMPRESSED = 1 << 31

_WANTED = frozenset(SECTION_NAMES)


class _Unsupported(Exception):
    pass


def _sections(mm: mmap.mmap) -> dict[str, tuple[int, int, int]]:
    """name -> (offset, size, flags) of the DWARF sections we read."""
    if len(mm) < 64 or mm[:4] != b"\x7fELF":
        raise _Unsupported("not ELF")
    is64 = mm[4] == 2
    if mm[5] != 1:
        raise _Unsupported("big-endian")
    if is64:
        e_shoff = struct.unpack_from("<Q", mm, 40)[0]
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", mm, 58)
        sh = struct.Struct("<IIQQQQIIQQ")  # name type flags addr offset size ...
    else:
        e_shoff = struct.unpack_from("<I", mm, 32)[0]
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", mm, 46)
        sh = struct.Struct("<IIIIIIIIII")
    if e_shoff == 0 or e_shentsize < sh.size or e_shoff + sh.size > len(mm):
        raise _Unsupported("no section headers")
    first = sh.unpack_from(mm, e_shoff)
    if e_shnum == 0:
        e_shnum = first[5]
    if e_shstrndx == 0xFFFF:
        e_shstrndx = first[7]
    if not 0 < e_shnum < 1 << 20 or e_shoff + e_shnum * e_shentsize > len(mm):
        raise _Unsupported("bad section headers")
    raw = [sh.unpack_from(mm, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    if e_shstrndx >= len(raw):
        raise _Unsupported("no section names")
    names_off, names_size = raw[e_shstrndx][4], raw[e_shstrndx][5]
    if names_off + names_size > len(mm):
        raise _Unsupported("bad section names")
    names = mm[names_off : names_off + names_size]
    out: dict[str, tuple[int, int, int]] = {}
    for r in raw:
        end = names.find(b"\0", r[0])
        name = names[r[0] : end if end >= 0 else None].decode("latin-1")
        if name.startswith(".zdebug_"):
            name = "." + name[2:]
            flags = r[2] | (1 << 40)  # GNU-style compression marker (private)
        else:
            flags = r[2]
        if name in _WANTED and name not in out and r[1] != _SHT_NOBITS and r[5] > 0:
            if r[4] + r[5] > len(mm):
                raise _Unsupported(f"{name} beyond end of file")
            out[name] = (r[4], r[5], flags)
    return out


def _section_data(mm: mmap.mmap, off: int, size: int, flags: int, is64: bool) -> Any:
    view = memoryview(mm)[off : off + size]
    if flags & (1 << 40):  # .zdebug_*: "ZLIB" + 8-byte big-endian size + zlib stream
        if size < 12 or bytes(view[:4]) != b"ZLIB":
            raise _Unsupported("bad .zdebug section")
        expected = struct.unpack_from(">Q", view, 4)[0]
        return _inflate(view[12:], expected)
    if flags & _SHF_COMPRESSED:
        chdr = struct.Struct("<IIQQ" if is64 else "<III")
        if size < chdr.size:
            raise _Unsupported("bad compressed section")
        fields = chdr.unpack_from(view, 0)
        ch_type, ch_size = fields[0], fields[2] if is64 else fields[1]
        if ch_type != _ELFCOMPRESS_ZLIB:
            raise _Unsupported(f"compression type {ch_type}")
        return _inflate(view[chdr.size :], ch_size)
    return view


def _inflate(data: memoryview, expected: int) -> bytes:
    if expected > _MAX_DECOMPRESSED:
        raise _Unsupported("section too large")
    try:
        out = zlib.decompress(data, bufsize=max(expected, 1))
    except zlib.error as e:
        raise _Unsupported(f"zlib: {e}") from e
    if len(out) != expected:
        raise _Unsupported("decompressed size mismatch")
    return out


class DwarfReaderLines:
    """Same interface as `dwarf.DwarfLines`, backed by the C reader (ELF vaddrs)."""

    __slots__ = ("_cache", "_reader")

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._cache: dict[int, list[tuple[str, str | None, int | None]]] = {}

    def lookup(self, rel: int) -> list[tuple[str, str | None, int | None]]:
        """(raw function name, file, line) innermost-first; empty when DWARF does not
        give a source location for `rel` (the caller then uses its symbol table)."""
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        try:
            entries = self._reader.lookup(rel) if rel >= 0 else []
        except Exception:
            entries = []
        for _name, path, line in entries:
            if path is not None or line is not None:
                break
        else:
            entries = []
        self._cache[rel] = entries
        return entries


_PREFETCHED: dict[tuple[str, int, int, int], DwarfReaderLines | None] = {}


def _file_id(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def prefetch(path: str, addresses: list[int]) -> None:
    """Open the reader for `path` and decode the units of `addresses` in a background
    thread (native code, no GIL), so it overlaps with the caller's imports and symbol
    table loading; `open_dwarf_reader(path)` then returns this reader."""
    ident = _file_id(path)
    if ident is None or ident in _PREFETCHED:
        return
    reader = open_dwarf_reader(path)
    _PREFETCHED[ident] = reader
    if reader is None or not addresses:
        return
    raw = reader._reader

    def run() -> None:
        with contextlib.suppress(Exception):
            raw.prefetch(addresses)

    threading.Thread(target=run, name="rsprof-dwarf-prefetch", daemon=True).start()


def open_dwarf_reader(path: str) -> DwarfReaderLines | None:
    """A lazy DWARF reader over the file at `path`, or None if unsupported."""
    if _PREFETCHED:
        ident = _file_id(path)
        if ident is not None and ident in _PREFETCHED:
            return _PREFETCHED.pop(ident)
    try:
        from rsprof._dwarf import DwarfReader
    except ImportError:
        return None
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return None
    try:
        secs = _sections(mm)
        if ".debug_info" not in secs or ".debug_abbrev" not in secs:
            return None
        is64 = mm[4] == 2
        buffers = [
            _section_data(mm, *secs[name], is64) if name in secs else None
            for name in SECTION_NAMES
        ]
        return DwarfReaderLines(DwarfReader(buffers))
    except (_Unsupported, ValueError, struct.error, OverflowError, MemoryError):
        return None


# -- cold/warm selection and the background SymCache build -------------------------

_BUILDER = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from rsprof.symbols.dwarf_reader import _build_main; _build_main(sys.argv[2:])"
)
_LOCK_STALE_S = 120.0
_PENDING: dict[tuple[str, str], Any] = {}  # (cache_dir, key) -> Popen of a builder
_DEFERRED: dict[tuple[str, str], tuple[str, Path]] = {}  # builds not started yet
_ATEXIT_REGISTERED = False
_PENDING_LOCK = threading.Lock()
_FD_PATH = re.compile(r"/proc/self/fd/(\d+)\Z")


def _defer_build(debug_path: str, cache_dir: Path, key: str) -> None:
    """Remember to build the SymCache once the lookups are answered (see
    `start_background_builds`); at the latest when the interpreter exits."""
    global _ATEXIT_REGISTERED
    with _PENDING_LOCK:
        _DEFERRED[(str(cache_dir), key)] = (debug_path, cache_dir)
        if not _ATEXIT_REGISTERED:
            import atexit

            atexit.register(start_background_builds)
            _ATEXIT_REGISTERED = True


def start_background_builds() -> None:
    """Start the deferred SymCache builds (detached processes). Call it after answering
    the lookups, so the builds do not compete with them for CPU."""
    with _PENDING_LOCK:
        todo = list(_DEFERRED.items())
        _DEFERRED.clear()
    for (_cache, key), (debug_path, cache_dir) in todo:
        _spawn_builder(debug_path, cache_dir, key)


def _wait_pending(cache_dir: Path, key: str) -> None:
    """Wait for a SymCache build this process started (or deferred) for the same object."""
    with _PENDING_LOCK:
        deferred = _DEFERRED.pop((str(cache_dir), key), None)
    if deferred is not None:
        _spawn_builder(deferred[0], cache_dir, key)
    with _PENDING_LOCK:
        proc = _PENDING.pop((str(cache_dir), key), None)
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=60)


def _cached_symcache(cache_dir: Path, key: str, image_base: int) -> DwarfLines | None:
    """The warm path: a valid SymCache on disk (symbolic is imported only if one exists)."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return None
    prefix = key + ".v"
    if not any(n.startswith(prefix) and n.endswith(".symcache") for n in names):
        return None
    from rsprof.symbols import dwarf

    try:
        sc = dwarf._open_cached(dwarf.symcache_file(cache_dir, key))
    except Exception:
        return None
    return dwarf.DwarfLines(sc, image_base) if sc is not None else None


def _spawn_builder(debug_path: str, cache_dir: Path, key: str) -> None:
    """Build and write the SymCache in a detached low-priority process, so the next run
    is warm without this (short-lived) process paying for it or waiting at exit."""
    if os.environ.get("RSPROF_NO_BACKGROUND_SYMCACHE"):
        return
    if getattr(sys, "frozen", False):
        # A one-file binary has no interpreter to run `-c` with: build in a thread.
        threading.Thread(target=_build_in_thread, args=(debug_path, cache_dir, key),
                         name="rsprof-symcache", daemon=True).start()
        return
    lock = cache_dir / f"{key}.building"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if time.time() - os.stat(lock).st_mtime < _LOCK_STALE_S:
                return  # another process is building it
            os.unlink(lock)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
    except OSError:
        return
    import subprocess

    m = _FD_PATH.match(debug_path)
    pass_fds = (int(m.group(1)),) if m else ()
    root = str(Path(__file__).resolve().parent.parent.parent)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BUILDER, root, debug_path, str(cache_dir), key, str(lock)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            os.unlink(lock)
        return
    with _PENDING_LOCK:
        _PENDING[(str(cache_dir), key)] = proc


def _build_in_thread(debug_path: str, cache_dir: Path, key: str) -> None:
    with contextlib.suppress(Exception):
        from rsprof.symbols.dwarf import load_dwarf_lines

        load_dwarf_lines(debug_path, 0, cache_dir, key)


def _build_main(argv: list[str]) -> None:
    """Entry point of the background builder process."""
    debug_path, cache_dir, key, lock = argv[:4]
    try:
        with contextlib.suppress(OSError):
            os.nice(10)
        from rsprof.symbols.dwarf import load_dwarf_lines

        load_dwarf_lines(debug_path, 0, Path(cache_dir), key)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def load_source_lines(
    debug_path: str, image_base: int, cache_dir: Path | None, key: str | None
) -> DwarfLines | DwarfReaderLines | None:
    """Source lookup for an object: a cached SymCache when there is one (warm), else the
    lazy C reader (cold) with the SymCache built in the background for next time, else
    (the reader cannot handle the file) a SymCache built right away."""
    if cache_dir is not None and key:
        _wait_pending(cache_dir, key)
        warm = _cached_symcache(cache_dir, key, image_base)
        if warm is not None:
            return warm
    reader = open_dwarf_reader(debug_path)
    if reader is not None:
        if cache_dir is not None and key:
            _defer_build(debug_path, cache_dir, key)
        return reader
    from rsprof.symbols.dwarf import load_dwarf_lines

    return load_dwarf_lines(debug_path, image_base, cache_dir, key)


def separate_debug_file(build_id: str | None) -> str | None:
    """A distro debug file for `build_id` (/usr/lib/debug/.build-id/xx/yyyy.debug);
    same as `dwarf.separate_debug_file`, without importing that module."""
    if not build_id or len(build_id) < 4:
        return None
    path = f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    return path if os.path.isfile(path) else None
