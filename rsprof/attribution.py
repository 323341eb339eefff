"""The one attribution rule: which function a sample or allocation is charged to.

Every view (recording, `top`, SQL views, exports, the TUI) uses this module,
so the same stack is always charged to the same function.

Rule: walk the stack's logical frames (inlined frames included) from the
innermost outwards and charge the first frame that is the user's own code.
A frame is *internal* (not the user's) when any of these holds:

* its source file is the Rust standard library (`/rustc/<hash>/...`, the
  crates std vendors under `/rust/deps/`, or a `lib/rustlib/src` checkout) or a
  dependency (`.cargo/registry`, `.cargo/git`);
* its module is a system library (under /lib, /usr/lib, ld-linux, libc, libm,
  libgcc_s, libstdc++, the vDSO) or rsprof's own shim, or it lies in no
  executable mapping at all (`[unknown]`);
* it has no source file (no debug info) and its name is rooted in `std::`,
  `core::`, `alloc::`, `rsprof_trace::` or is a Rust runtime symbol
  (`__rust_*`, `rust_begin_unwind`), or a C runtime start symbol.

Only whole path prefixes and whole name segments are matched, so a user
function called `free_list`, `init` or `utils::x` is never hidden. When no
frame is the user's, the innermost frame is charged. `--include-internal`
charges the innermost frame (the true leaf) always.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

_INTERNAL_FILE_PREFIXES = ("/rustc/", "/rust/deps/")
_INTERNAL_FILE_PARTS = ("/.cargo/registry/", "/.cargo/git/", "/lib/rustlib/src/")
_SYSTEM_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/")
_SYSTEM_LIB_PREFIXES = (
    "ld-linux", "libc.so", "libc-", "libm.so", "libpthread", "libdl.so", "librt.so",
    "libgcc_s", "libstdc++", "linux-vdso", "libresolv",
)
_SPECIAL_MODULES = ("[vdso]", "[vsyscall]", "[unknown]")
_RSPROF_MODULE_PREFIXES = ("librsprof",)
_INTERNAL_CRATES = frozenset({"std", "core", "alloc", "proc_macro", "rsprof_trace", "__rustc"})
_ALWAYS_INTERNAL_CRATES = frozenset({"rsprof_trace", "__rustc"})
_RUNTIME_SYMBOLS = frozenset({
    "_start", "__libc_start_main", "__libc_start_call_main", "rust_begin_unwind",
    "rust_panic", "main",
})


class FrameLike(Protocol):
    @property
    def function(self) -> str: ...
    @property
    def file(self) -> str | None: ...
    @property
    def module(self) -> str: ...


def is_system_module(module: str) -> bool:
    """True for the C runtime, the dynamic loader, the vDSO, rsprof's shim and no module."""
    if module in _SPECIAL_MODULES:
        return True
    base = os.path.basename(module)
    if base.startswith(_RSPROF_MODULE_PREFIXES):
        return True
    if base.startswith(_SYSTEM_LIB_PREFIXES):
        return True
    return module.startswith(_SYSTEM_DIRS)


_PRIMITIVES = frozenset({
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
    "f32", "f64", "bool", "char", "str", "()",
})


def _crate_of(function: str) -> str:
    """The crate a demangled Rust name belongs to: for `<T as Trait>::f`, T's crate."""
    name = function.lstrip("<&*[").removeprefix("mut ").removeprefix("const ")
    if name.startswith("dyn "):
        name = name[4:]
    head = name.split("::", 1)[0]
    head = head.split("<", 1)[0].split(" as ", 1)[0].split(";", 1)[0].rstrip("]>").strip()
    return "core" if head in _PRIMITIVES else head


def is_internal(function: str, file: str | None, module: str) -> bool:
    """Whether a frame is library/runtime code rather than the user's own."""
    if is_system_module(module):
        return True
    if _crate_of(function) in _ALWAYS_INTERNAL_CRATES:
        # Allocator shims and rsprof's own crate, wherever their source lives
        # (a path dependency on rsprof-trace has a file outside any registry).
        return True
    if file:
        if file.startswith(_INTERNAL_FILE_PREFIXES):
            return True
        return any(part in file for part in _INTERNAL_FILE_PARTS)
    if function.startswith("__rust_") or function in _RUNTIME_SYMBOLS:
        return True
    return _crate_of(function) in _INTERNAL_CRATES


def charged_index(frames: Sequence[FrameLike], include_internal: bool = False) -> int:
    """Index (innermost = 0) of the frame a stack is charged to; -1 for no frames."""
    if not frames:
        return -1
    if include_internal:
        return 0
    for i, frame in enumerate(frames):
        if not is_internal(frame.function, frame.file, frame.module):
            return i
    return 0
