"""The one attribution rule: which function a sample or allocation is charged to.

Every view (recording, `top`, SQL views, exports, the TUI) uses this module,
so the same stack is always charged to the same function. docs/attribution.md
states the rule; in short:

* A frame is the user's own code when its module is the profiled executable
  (wherever it is installed) or a library of the program outside the system
  locations, its source file is neither Rust's standard library
  (`/rustc/<hash>/library/...`, `/rust/deps/...`, a `lib/rustlib/src`
  checkout) nor a registry or git dependency (`<cargo home>/registry/src/
  <index>-<hash>/<crate>-<version>/...`, `<cargo home>/git/checkouts/...`),
  and it is not rsprof's own code. Without a source file, names rooted in
  `std::`, `core::`, `alloc::`, `__rustc::` or `rsprof_trace::` and the
  runtime symbols are not the user's.
* A sample is rsprof's own (charged to the pseudo-function `[rsprof]`) when,
  walking from the leaf outwards, rsprof's code comes before any user frame
  and that first frame of rsprof's is the leaf itself or rsprof's recording
  code. Below a pass-through entry point (the shim's malloc/free/... hooks
  calling the real function, its thread-start trampoline, rsprof-trace's
  `GlobalAlloc` methods calling the wrapped allocator) the time is the
  program's own: charged by the usual rule.
* Otherwise the first frame that is the user's is charged; when no frame is,
  the innermost. `--include-internal` charges the innermost frame always
  (rsprof's own time stays `[rsprof]`).

Only whole path prefixes, path components and name segments are matched, so a
user function called `free_list`, `alloc_pool` or `utils::x` is never hidden.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from rsprof.symbols.model import Frame

# The pseudo-function every sample spent in rsprof's own code is charged to.
RSPROF_FUNCTION = "[rsprof]"

_INTERNAL_FILE_PREFIXES = ("/rustc/", "/rust/deps/")
_INTERNAL_FILE_PARTS = ("/.cargo/registry/", "/.cargo/git/", "/lib/rustlib/src/")
# Cargo's download directories under any CARGO_HOME (also /usr/local/cargo of the
# official Docker images, which has no ".cargo" in it): registry sources are
# <home>/registry/src/<index>-<16 hex>/<crate>-<version>/..., git dependencies
# <home>/git/checkouts/<name>-<16 hex>/<revision>/...
_DEPENDENCY_FILE = re.compile(
    r"/registry/src/[^/]+-[0-9a-f]{16}/[^/]+-[0-9][^/]*/"
    r"|/git/checkouts/[^/]+-[0-9a-f]{16}/[^/]+/")
_SYSTEM_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/")
_SYSTEM_LIB_PREFIXES = (
    "ld-linux", "libc.so", "libc-", "libm.so", "libpthread", "libdl.so", "librt.so",
    "libgcc_s", "libstdc++", "linux-vdso", "libresolv",
)
_SPECIAL_MODULES = ("[vdso]", "[vsyscall]", "[unknown]")
_RSPROF_MODULE_PREFIXES = ("librsprof",)
_RSPROF_C_PREFIXES = ("rsprof_shim_", "rsprof__")
_INTERNAL_CRATES = frozenset({"std", "core", "alloc", "proc_macro", "rsprof_trace", "__rustc"})
_ALWAYS_INTERNAL_CRATES = frozenset({"rsprof_trace", "__rustc"})
# rustc's allocator shims for a `#[global_allocator]` of the program's own: generated
# into the crate that declares it, with that declaration's file and line as their
# location (so the file rule alone would take them for the user's code).
_ALLOCATOR_SHIMS = frozenset({
    "__rust_alloc", "__rust_dealloc", "__rust_realloc", "__rust_alloc_zeroed",
    "__rg_alloc", "__rg_dealloc", "__rg_realloc", "__rg_alloc_zeroed",
})
_RUNTIME_SYMBOLS = frozenset({
    "_start", "__libc_start_main", "__libc_start_call_main", "rust_begin_unwind",
    "rust_panic", "main",
})
# rsprof's functions that call the real thing on the program's behalf: the LD_PRELOAD
# shim's interposed functions (csrc/rsprof_preload.c) and its thread-start trampoline.
_SHIM_PASS_THROUGH = frozenset({
    "malloc", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
    "memalign", "valloc", "pvalloc", "free", "pthread_create", "start_trampoline",
})
# ... and rsprof-trace's allocator wrappers, which call the allocator they wrap.
_TRACE_PASS_THROUGH = re.compile(
    r" as core::alloc::global::GlobalAlloc>::(alloc|alloc_zeroed|dealloc|realloc)$")
_DELETED = " (deleted)"

# The profiled executable's module path(s): one path, a collection of paths (the
# executable's file may be mapped under more than one name), or None (unknown).
Executable = str | Collection[str] | None


class FrameLike(Protocol):
    @property
    def function(self) -> str: ...
    @property
    def file(self) -> str | None: ...
    @property
    def module(self) -> str: ...


def is_executable(module: str, executable: Executable) -> bool:
    """Whether `module` is the profiled executable."""
    if not executable:
        return False
    if isinstance(executable, str):
        return module == executable.removesuffix(_DELETED)
    return module in executable


def is_rsprof_module(module: str) -> bool:
    """rsprof's LD_PRELOAD shim (librsprof_shim.so, wherever it was copied)."""
    return os.path.basename(module).startswith(_RSPROF_MODULE_PREFIXES)


def is_system_module(module: str, executable: Executable = None) -> bool:
    """True for the C runtime, the dynamic loader, the vDSO, rsprof's shim, no module,
    and any module in a system location (/lib, /usr/lib, /usr/local/lib, ...) that is
    not the profiled `executable`."""
    if module in _SPECIAL_MODULES:
        return True
    if is_rsprof_module(module):
        return True
    if is_executable(module, executable):
        return False
    base = os.path.basename(module)
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


def _is_rsprof_source(file: str) -> bool:
    """One of rsprof's C sources (csrc/rsprof_*.c or .h), compiled into the shim or,
    by rsprof-trace, into the user's binary."""
    directory, base = os.path.split(file)
    return (os.path.basename(directory) == "csrc" and base.startswith("rsprof_")
            and base.endswith((".c", ".h")))


def is_rsprof_code(function: str, file: str | None, module: str) -> bool:
    """A frame of rsprof's own code: anything in the shim module, the C recorder's
    functions (`rsprof_shim_*`, `rsprof__*`, or a file of csrc/) and the
    rsprof_trace crate, wherever they were linked."""
    if is_rsprof_module(module) or function == RSPROF_FUNCTION:
        return True
    if function.startswith(_RSPROF_C_PREFIXES):
        return True
    if file and _is_rsprof_source(file):
        return True
    return _crate_of(function) == "rsprof_trace"


def is_pass_through(function: str, file: str | None, module: str) -> bool:
    """rsprof code that calls the real function on the program's behalf (the shim's
    allocator hooks and thread trampoline, rsprof-trace's GlobalAlloc methods): what
    it calls is the program's work, not rsprof's."""
    if not is_rsprof_code(function, file, module):
        return False
    if _crate_of(function) == "rsprof_trace":
        return _TRACE_PASS_THROUGH.search(function) is not None
    in_shim = is_rsprof_module(module) or (
        file is not None and os.path.basename(file) == "rsprof_preload.c")
    return in_shim and function in _SHIM_PASS_THROUGH


def is_internal(function: str, file: str | None, module: str,
                executable: Executable = None) -> bool:
    """Whether a frame is library, runtime or rsprof code rather than the user's own."""
    if is_rsprof_code(function, file, module):
        return True
    if is_system_module(module, executable):
        return True
    if _crate_of(function) in _ALWAYS_INTERNAL_CRATES or function in _ALLOCATOR_SHIMS:
        # Allocator shims, wherever their source lives.
        return True
    if file:
        if file.startswith(_INTERNAL_FILE_PREFIXES):
            return True
        if any(part in file for part in _INTERNAL_FILE_PARTS):
            return True
        return _DEPENDENCY_FILE.search(file) is not None
    if function.startswith("__rust_") or function in _RUNTIME_SYMBOLS:
        return True
    return _crate_of(function) in _INTERNAL_CRATES


def is_user_frame(function: str, file: str | None, module: str,
                  executable: Executable = None) -> bool:
    """The rule for "the user's own code" (docs/attribution.md)."""
    return not is_internal(function, file, module, executable)


def rsprof_frame(module: str) -> Frame:
    """The pseudo-frame of rsprof's own time, in the module its code runs from."""
    return Frame(RSPROF_FUNCTION, None, None, module, False, True)


_USER, _INTERNAL, _RSPROF, _PASS_THROUGH = range(4)
_F = TypeVar("_F", bound=FrameLike)


class Attributor:
    """The rule bound to one recording's executable, each distinct frame judged once
    (a profile repeats the same few frames across many stacks: binary-trees has 131 k
    stacks over a dozen functions)."""

    def __init__(self, executable: Executable = None) -> None:
        self.executable = executable
        self._kinds: dict[tuple[str, str | None, str], int] = {}

    def _kind(self, f: FrameLike) -> int:
        key = (f.function, f.file, f.module)
        kind = self._kinds.get(key)
        if kind is None:
            if is_rsprof_code(*key):
                kind = _PASS_THROUGH if is_pass_through(*key) else _RSPROF
            elif is_internal(*key, self.executable):
                kind = _INTERNAL
            else:
                kind = _USER
            self._kinds[key] = kind
        return kind

    def _walk(self, frames: Iterable[_F]) -> tuple[int, _F | None, int, _F | None, _F | None]:
        """One pass from the innermost frame out to the first of the user's code:
        (index and frame of rsprof's own time, or -1/None; index and frame of the first
        user frame, or -1/None; the innermost frame, None for no frames). rsprof's time
        is a frame of its code met before any user frame and before a pass-through
        hook above the leaf (under a hook, the real allocator is the program's)."""
        first: _F | None = None
        r, r_frame, possible = -1, None, True
        for i, f in enumerate(frames):
            if first is None:
                first = f
            kind = self._kind(f)
            if possible and r < 0 and (kind == _RSPROF or (kind == _PASS_THROUGH and i == 0)):
                r, r_frame = i, f
            elif kind == _PASS_THROUGH:
                possible = False
            if kind == _USER:
                return r, r_frame, i, f, first
        return r, r_frame, -1, None, first

    def rsprof_index(self, frames: Sequence[FrameLike]) -> int:
        """When the sample was spent in rsprof's own code, the index (innermost = 0) of
        its first frame of rsprof's; otherwise -1."""
        return self._walk(frames)[0]

    def charged_index(self, frames: Sequence[FrameLike], include_internal: bool = False) -> int:
        """Index (innermost = 0) of the first frame of the user's own code (the innermost
        when there is none, or with include_internal); -1 for no frames. A sample of
        rsprof's own time is charged to `[rsprof]` instead, in both: see charged_frame."""
        if not frames:
            return -1
        if include_internal:
            return 0
        return max(self._walk(frames)[2], 0)

    def stack_frames(self, addresses: Sequence[int],
                     frames_of: Mapping[int, Sequence[Frame]]) -> tuple[Frame, Frame] | None:
        """(charged_frame(logical, True), charged_frame(logical)) of the stack whose
        logical frames are frames_of[a] for each address a, innermost first, without
        building that list (the recorder stores 131 k heap stacks of binary-trees at
        once). None for no frames."""
        _, r_frame, _, user, first = self._walk(
            itertools.chain.from_iterable(frames_of[a] for a in addresses))
        if first is None:
            return None
        if r_frame is not None:
            charged = rsprof_frame(r_frame.module)
            return charged, charged
        return first, user or first

    def charged_frame(self, frames: Sequence[Frame], include_internal: bool = False) -> Frame:
        """The frame a stack (non-empty) is charged to: `[rsprof]` for rsprof's own time
        (with include_internal too: rsprof's functions are never shown), else
        frames[charged_index(...)]."""
        _, r_frame, _, user, _ = self._walk(frames)
        if r_frame is not None:
            return rsprof_frame(r_frame.module)
        return frames[0] if include_internal else user or frames[0]


def rsprof_index(frames: Sequence[FrameLike], executable: Executable = None) -> int:
    """Attributor.rsprof_index for one stack."""
    return Attributor(executable).rsprof_index(frames)


def charged_index(frames: Sequence[FrameLike], include_internal: bool = False,
                  executable: Executable = None) -> int:
    """Attributor.charged_index for one stack."""
    return Attributor(executable).charged_index(frames, include_internal)


def charged_frame(frames: Sequence[Frame], include_internal: bool = False,
                  executable: Executable = None) -> Frame:
    """Attributor.charged_frame for one stack."""
    return Attributor(executable).charged_frame(frames, include_internal)
