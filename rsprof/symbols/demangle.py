"""Symbol demangling: Rust legacy, Rust v0 and C++ (via libstdc++'s `__cxa_demangle`).

`demangle()` never raises: anything it cannot decode is returned unchanged.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from rsprof.symbols.demangle_v0 import V0Error, demangle_v0

__all__ = ["demangle", "demangle_cpp", "demangle_rust_legacy", "demangle_v0"]

_LEGACY_ESCAPES = {
    "SP": "@",
    "BP": "*",
    "RF": "&",
    "LT": "<",
    "GT": ">",
    "LP": "(",
    "RP": ")",
    "C": ",",
}
_HASH_RE = re.compile(r"h[0-9a-f]{16}\Z")
_LLVM_SUFFIX_RE = re.compile(r"\.llvm\.[0-9A-Fa-f@]+\Z")


class _NotLegacy(Exception):
    pass


def _legacy_component(comp: str) -> str:
    if comp.startswith("_$"):
        comp = comp[1:]
    out: list[str] = []
    i, n = 0, len(comp)
    while i < n:
        c = comp[i]
        if c == ".":
            if comp.startswith("..", i):
                out.append("::")
                i += 2
            else:
                out.append(".")
                i += 1
        elif c == "$":
            end = comp.find("$", i + 1)
            if end < 0:
                raise _NotLegacy
            esc = comp[i + 1 : end]
            rep = _LEGACY_ESCAPES.get(esc)
            if rep is None:
                if not esc.startswith("u") or len(esc) < 2:
                    raise _NotLegacy
                try:
                    rep = chr(int(esc[1:], 16))
                except ValueError as e:
                    raise _NotLegacy from e
                if not rep.isprintable() and rep not in " ":
                    raise _NotLegacy
            out.append(rep)
            i = end + 1
        else:
            j = i
            while j < n and comp[j] not in ".$":
                j += 1
            out.append(comp[i:j])
            i = j
    return "".join(out)


def _parse_legacy(symbol: str) -> tuple[list[str], str] | None:
    """Split `_ZN<len><name>...E<suffix>` into raw components and the suffix."""
    if symbol.startswith("_ZN"):
        i = 3
    elif symbol.startswith("__ZN"):
        i = 4
    elif symbol.startswith("ZN"):
        i = 2
    else:
        return None
    comps: list[str] = []
    n = len(symbol)
    while True:
        if i >= n:
            return None
        if symbol[i] == "E":
            i += 1
            break
        j = i
        while j < n and symbol[j].isdigit():
            j += 1
        if j == i:
            return None
        length = int(symbol[i:j])
        if length == 0 or j + length > n:
            return None
        comps.append(symbol[j : j + length])
        i = j + length
    if not comps:
        return None
    return comps, symbol[i:]


def _is_rust_legacy(symbol: str) -> bool:
    parsed = _parse_legacy(symbol)
    return parsed is not None and len(parsed[0]) >= 2 and bool(_HASH_RE.match(parsed[0][-1]))


def demangle_rust_legacy(symbol: str) -> str | None:
    """Demangle a legacy Rust symbol, dropping the `h<16 hex>` hash; None if not one."""
    parsed = _parse_legacy(symbol)
    if parsed is None:
        return None
    comps, suffix = parsed
    if len(comps) < 2 or not _HASH_RE.match(comps[-1]):
        return None
    try:
        text = "::".join(_legacy_component(c) for c in comps[:-1])
    except _NotLegacy:
        return None
    if suffix:
        suffix = _LLVM_SUFFIX_RE.sub("", suffix)
    return text + suffix


def _runtime_names() -> Iterator[str | None]:
    """Where a C++ demangler may live; find_library (which runs ldconfig) only if needed."""
    yield "libstdc++.so.6"
    import ctypes.util

    yield ctypes.util.find_library("stdc++")
    yield "libc++.so.1"


class _CxaDemangle:
    """Lazily bound `__cxa_demangle` and `free`."""

    def __init__(self) -> None:
        self.func: Callable[..., Any] | None = None
        self.free: Callable[..., Any] | None = None
        self.loaded = False

    def load(self) -> None:
        self.loaded = True
        for name in _runtime_names():
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name)
                func = getattr(lib, "__cxa_demangle")  # not lib.__cxa_... (class-private mangling)
            except (OSError, AttributeError):
                continue
            func.restype = ctypes.c_void_p
            func.argtypes = [
                ctypes.c_char_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_int),
            ]
            libc = ctypes.CDLL(None)
            free = libc.free
            free.restype = None
            free.argtypes = [ctypes.c_void_p]
            self.func, self.free = func, free
            return


_CXA = _CxaDemangle()


def demangle_cpp(symbol: str) -> str | None:
    """Demangle an Itanium C++ symbol with the C++ runtime's demangler; None on failure."""
    if not _CXA.loaded:
        _CXA.load()
    func, free = _CXA.func, _CXA.free
    if func is None or free is None:
        return None
    try:
        raw = symbol.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if b"\0" in raw:
        return None
    status = ctypes.c_int(-1)
    ptr = func(raw, None, None, ctypes.byref(status))
    if not ptr:
        return None
    try:
        if status.value != 0:
            return None
        value = ctypes.string_at(ptr)
    finally:
        free(ptr)
    return value.decode("utf-8", "replace")


@lru_cache(maxsize=65536)
def demangle(symbol: str) -> str:
    """Demangle a Rust (legacy or v0) or C++ symbol; return it unchanged if that fails."""
    try:
        if symbol.startswith(("_R", "__R")):
            try:
                return demangle_v0(symbol)
            except V0Error:
                return symbol
        if symbol.startswith(("_Z", "__Z")):
            if _is_rust_legacy(symbol):
                rust = demangle_rust_legacy(symbol)
                if rust is not None:
                    return rust
            cpp = demangle_cpp(symbol[1:] if symbol.startswith("__Z") else symbol)
            return cpp if cpp is not None else symbol
    except Exception:  # never raise from the demangler
        return symbol
    return symbol
