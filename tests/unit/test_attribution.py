"""The attribution rule (rsprof/attribution.py): which frames are the user's own code."""

from __future__ import annotations

import pytest

from rsprof.attribution import (
    RSPROF_FUNCTION,
    charged_frame,
    charged_index,
    is_internal,
    is_pass_through,
    is_rsprof_code,
    is_system_module,
    is_user_frame,
    rsprof_index,
)
from rsprof.symbols.model import Frame

APP = "/home/dev/myapp/target/release/myapp"
USER_FILE = "/home/dev/myapp/src/lib.rs"
STD_HASH = "/rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf"


def frame(function: str, file: str | None = None, module: str = APP) -> Frame:
    return Frame(function, file, 10 if file else None, module, False)


# -- user code whose names look like library words --------------------------------------

@pytest.mark.parametrize(
    ("function", "file"),
    [
        ("myapp::utils::free_list_walk", USER_FILE),
        ("myapp::utils::free_list_walk", None),
        ("myapp::init", USER_FILE),
        ("myapp::init", None),
        ("alloc_pool::Pool::get", "/home/dev/myapp/alloc_pool/src/pool.rs"),
        ("alloc_pool::Pool::get", None),
        ("std_ext::helpers::run", None),
        ("corelib::Engine::step", None),
        ("init", None),
        ("free_list", None),
        ("utils::x", None),
        ("myapp::main", None),
        ("myapp::main", "/home/dev/myapp/src/main.rs"),
        ("<myapp::Foo as core::fmt::Display>::fmt", None),
        ("<myapp::Foo as core::fmt::Display>::fmt", USER_FILE),
        ("<&myapp::Foo as core::fmt::Debug>::fmt", None),
        ("myapp::rustc::parse", "/home/dev/myapp/src/rustc/parse.rs"),
        ("myapp::cargo::run", "/home/dev/myapp/src/cargo/registry.rs"),
    ],
)
def test_user_code_is_not_internal(function: str, file: str | None) -> None:
    assert not is_internal(function, file, APP)


# -- library source files ---------------------------------------------------------------

@pytest.mark.parametrize(
    "file",
    [
        f"{STD_HASH}/library/alloc/src/vec/mod.rs",
        f"{STD_HASH}/library/core/src/iter/range.rs",
        f"{STD_HASH}/library/std/src/thread/mod.rs",
        "/rust/deps/hashbrown-0.16.1/src/raw/mod.rs",
        "/rust/deps/memchr-2.7.4/src/memchr.rs",
        "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/"
        "library/core/src/ptr/mod.rs",
        "/home/dev/.cargo/registry/src/index.crates.io-6f17d22bba15001f/serde-1.0.200/src/de.rs",
        "~/.cargo/registry/src/index.crates.io-6f17d22bba15001f/rand-0.8.5/src/rng.rs",
        "/home/dev/.cargo/git/checkouts/mycrate-0123456789abcdef/1a2b3c4/src/lib.rs",
    ],
)
def test_library_files_are_internal(file: str) -> None:
    # Even a name that looks like user code is internal when its source is a library.
    assert is_internal("myapp::work", file, APP)
    assert is_internal("hashbrown::raw::RawTable<T,A>::find", file, APP)


def test_file_prefix_must_be_whole() -> None:
    # "/rustc/" only as a prefix, not any path that merely contains "rustc".
    assert not is_internal("myapp::f", "/home/dev/rustc-tools/src/lib.rs", APP)
    assert not is_internal("myapp::f", "/srv/rust/depsx/lib.rs", APP)
    assert not is_internal("myapp::f", "/home/dev/cargo/registry/src/x.rs", APP)


# -- system modules ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "module",
    [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/ld-linux-x86-64.so.2",
        "/opt/glibc/lib/ld-linux-x86-64.so.2",
        "/opt/custom/libgcc_s.so.1",
        "/usr/local/lib/libfoo.so",
        "[vdso]",
        "[vsyscall]",
        "[unknown]",
        "/tmp/rsprof-xyz/librsprof_shim.so",
        "/home/dev/.cache/rsprof/librsprof_shim.so",
        "librsprof_shim.so",
    ],
)
def test_system_modules_are_internal(module: str) -> None:
    assert is_system_module(module)
    # Whatever the frame claims about itself, a system module is never user code.
    assert is_internal("myapp::work", USER_FILE, module)
    assert is_internal("myapp::work", None, module)


@pytest.mark.parametrize(
    "module",
    [
        APP,
        "/home/dev/myapp/target/release/libmyapp.so",
        "/opt/app/libcrypto_helpers.so",
        "/opt/app/libmath.so",
        "/srv/libcore/bin/app",
    ],
)
def test_user_modules_are_not_system(module: str) -> None:
    assert not is_system_module(module)
    assert not is_internal("myapp::work", None, module)


# -- frames without debug info: judged by name ------------------------------------------

@pytest.mark.parametrize(
    "function",
    [
        "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop",
        "core::ptr::drop_in_place<alloc::vec::Vec<u8>>",
        "core::ptr::drop_in_place<myapp::Foo>",
        "std::thread::sleep",
        "std::rt::lang_start_internal",
        "alloc::raw_vec::RawVec<T,A>::grow_one",
        "<dyn core::any::Any>::type_id",
        "rsprof_trace::record_alloc",
        "proc_macro::bridge::client::run",
        "__rust_alloc",
        "__rust_dealloc",
        "__rust_start_panic",
        "rust_begin_unwind",
        "_start",
        "__libc_start_main",
        "__libc_start_call_main",
        "main",
    ],
)
def test_runtime_names_without_file_are_internal(function: str) -> None:
    assert is_internal(function, None, APP)


# -- charged_index -------------------------------------------------------------------

def test_charged_index_picks_first_user_frame() -> None:
    frames = [
        frame("core::ptr::write", f"{STD_HASH}/library/core/src/ptr/mod.rs"),
        frame("alloc::vec::Vec<T,A>::push", f"{STD_HASH}/library/alloc/src/vec/mod.rs"),
        frame("myapp::utils::free_list_walk", USER_FILE),
        frame("myapp::main", "/home/dev/myapp/src/main.rs"),
    ]
    assert charged_index(frames) == 2
    assert charged_index(frames, include_internal=True) == 0


def test_charged_index_skips_system_and_dependency_frames() -> None:
    frames = [
        frame("__memmove_avx_unaligned_erms", None, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        frame("serde_json::de::parse", "/home/dev/.cargo/registry/src/x/serde_json/src/de.rs"),
        frame("__rust_alloc"),
        frame("<myapp::Foo as core::fmt::Display>::fmt"),
        frame("myapp::main"),
    ]
    assert charged_index(frames) == 3


def test_charged_index_user_leaf_is_zero() -> None:
    frames = [frame("myapp::init", USER_FILE), frame("std::rt::lang_start")]
    assert charged_index(frames) == 0


def test_charged_index_all_internal_falls_back_to_innermost() -> None:
    frames = [
        frame("std::thread::sleep"),
        frame("nanosleep", None, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        frame("_start"),
    ]
    assert charged_index(frames) == 0
    assert charged_index(frames, include_internal=True) == 0


def test_charged_index_include_internal_always_innermost() -> None:
    frames = [frame("std::thread::sleep"), frame("myapp::main")]
    assert charged_index(frames) == 1
    assert charged_index(frames, include_internal=True) == 0


def test_charged_index_empty_is_minus_one() -> None:
    assert charged_index([]) == -1
    assert charged_index([], include_internal=True) == -1


@pytest.mark.parametrize("name", [
    "<u64 as core::fmt::Display>::fmt",
    "<&str as core::fmt::Debug>::fmt",
    "<[u8] as core::hash::Hash>::hash",
    "<usize as core::iter::range::Step>::forward_unchecked",
])
def test_impls_on_primitive_types_without_a_file_are_internal(name: str) -> None:
    assert is_internal(name, None, "/srv/app/bin/app")


def test_user_type_implementing_a_std_trait_without_a_file_is_user_code() -> None:
    assert not is_internal("<myapp::Money as core::fmt::Display>::fmt", None, "/srv/app/bin/app")


def test_rust_allocator_shims_are_internal() -> None:
    assert is_internal("__rustc::__rust_alloc", None, "/srv/app/bin/app")
    # The shims rustc generates for a #[global_allocator] of the program's own carry
    # the file and line of that declaration: still not the user's code.
    for shim in ("__rust_alloc", "__rust_realloc", "__rust_dealloc", "__rust_alloc_zeroed"):
        assert is_internal(shim, USER_FILE, "/srv/app/bin/app")
    assert not is_internal("__rust_alloc_pool", USER_FILE, "/srv/app/bin/app")
    assert is_internal("__rust_dealloc", None, "/srv/app/bin/app")


# -- the profiled executable, wherever it is installed (issue 12) ------------------------

@pytest.mark.parametrize("exe", [
    "/usr/local/lib/cpu-mix/cpu_mix",
    "/usr/lib/myapp/bin/myapp",
    "/lib/x86_64-linux-gnu/myapp/myapp",
    "/usr/lib64/myapp",
])
def test_executable_in_a_system_location_is_the_users(exe: str) -> None:
    # Without knowing the executable, a module there is taken for a system library ...
    assert is_system_module(exe)
    assert is_internal("cpu_mix::hot", USER_FILE, exe)
    # ... as the profiled executable it is the user's, as a path or a set of paths.
    for executable in (exe, {exe}, frozenset({exe, "/proc/self/exe"})):
        assert not is_system_module(exe, executable)
        assert not is_internal("cpu_mix::hot", USER_FILE, exe, executable)
        assert not is_internal("cpu_mix::hot", None, exe, executable)
        assert is_user_frame("cpu_mix::hot", USER_FILE, exe, executable)
    # A binary replaced on disk: /proc/PID/exe reads "<path> (deleted)".
    assert not is_internal("cpu_mix::hot", USER_FILE, exe, exe + " (deleted)")


def test_executable_in_a_system_location_keeps_its_library_frames_internal() -> None:
    exe = "/usr/local/lib/cpu-mix/cpu_mix"
    assert is_internal("alloc::vec::Vec<T,A>::push", f"{STD_HASH}/library/alloc/src/vec/mod.rs",
                       exe, exe)
    assert is_internal("core::ptr::drop_in_place<u8>", None, exe, exe)
    assert is_internal("main", None, exe, exe)


@pytest.mark.parametrize("name", ["alloc_pool::Pool::get", "free_list", "cpu_mix::free_list",
                                  "alloc_pool"])
def test_user_names_like_library_words_in_an_installed_executable(name: str) -> None:
    exe = "/usr/local/lib/cpu-mix/cpu_mix"
    assert not is_internal(name, None, exe, exe)
    assert not is_internal(name, "/build/cpu-mix/src/pool.rs", exe, exe)


def test_only_the_executable_is_exempt_from_the_system_locations() -> None:
    exe = "/usr/local/lib/cpu-mix/cpu_mix"
    for module in ("/usr/local/lib/libfoo.so", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                   "/usr/local/lib/cpu-mix/libhelper.so", "/lib64/ld-linux-x86-64.so.2"):
        assert is_system_module(module, exe)
        assert is_internal("cpu_mix::hot", USER_FILE, module, exe)
    assert is_system_module("[vdso]", "[vdso]")
    # rsprof's shim is never the user's, even if it were "the executable".
    shim = "/root/.cache/rsprof/shim/0123/librsprof_shim.so"
    assert is_internal("malloc", None, shim, shim)


def test_charged_index_with_an_installed_executable() -> None:
    exe = "/usr/local/lib/rsprof-test-x/cpu_split"
    frames = [
        frame("<u64 as core::cmp::PartialOrd>::lt", f"{STD_HASH}/library/core/src/cmp.rs", exe),
        frame("cpu_split::work_fifty", "/work/tests/targets/src/bin/cpu_split.rs", exe),
        frame("cpu_split::worker", "/work/tests/targets/src/bin/cpu_split.rs", exe),
    ]
    assert charged_index(frames, executable=exe) == 1
    assert charged_index(frames) == 0  # unknown executable: all "system", innermost


# -- registry and git dependencies under any cargo home -----------------------------

@pytest.mark.parametrize("file", [
    "/usr/local/cargo/registry/src/index.crates.io-1949cf8c6b5b557f/foo-1.0.0/src/lib.rs",
    "/usr/local/cargo/registry/src/index.crates.io-6f17d22bba15001f/serde_json-1.0.120/src/de.rs",
    "/opt/cargo/registry/src/github.com-1ecc6299db9ec823/rand-0.8.5/src/rng.rs",
    "/srv/ci/cargo-home/registry/src/my-registry-0123456789abcdef/internal-crate-2.1.0-beta.1/"
    "src/lib.rs",
    "/usr/local/cargo/git/checkouts/mycrate-0123456789abcdef/1a2b3c4/src/lib.rs",
    "/opt/cargo/git/checkouts/tokio-fedcba9876543210/a1b2c3d/tokio/src/runtime/mod.rs",
    "/home/dev/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/foo-1.0.0/src/lib.rs",
    "/home/dev/.cargo/git/checkouts/mycrate-0123456789abcdef/1a2b3c4/src/lib.rs",
])
def test_dependencies_under_any_cargo_home_are_internal(file: str) -> None:
    exe = "/usr/local/lib/app/app"
    assert is_internal("foo::parse", file, APP)
    assert is_internal("foo::parse", file, exe, exe)
    assert is_internal("myapp::work", file, APP, APP)


@pytest.mark.parametrize("file", [
    "/usr/local/rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/"
    "library/core/src/iter/range.rs",
    "/opt/rust/lib/rustlib/src/rust/library/alloc/src/vec/mod.rs",
    f"{STD_HASH}/library/std/src/io/mod.rs",
])
def test_rust_sources_are_internal_wherever_the_toolchain_is(file: str) -> None:
    assert is_internal("myapp::work", file, APP, APP)


@pytest.mark.parametrize("file", [
    "/srv/registry/src/app/src/main.rs",           # a project that happens to be called so
    "/home/dev/registry/src/parser/src/lib.rs",
    "/home/dev/git/checkouts/src/main.rs",
    "/home/dev/proj/registry/src/index-abc/foo-1.0/src/lib.rs",  # no 16-hex index hash
    "/home/dev/myapp/src/cargo/registry.rs",
])
def test_user_paths_that_look_like_cargo_homes_are_the_users(file: str) -> None:
    assert not is_internal("myapp::work", file, APP, APP)


# -- rsprof's own time: [rsprof] ----------------------------------------------------

SHIM = "/root/.cache/rsprof/shim/0123456789abcdef/librsprof_shim.so"
SHIM_C = "/work/main/csrc/rsprof_shim.c"
PRELOAD_C = "/work/main/csrc/rsprof_preload.c"
TRACE_C = "/home/dev/.cargo/git/checkouts/rsprof-0123456789abcdef/abc1234/rsprof-trace/../csrc/" \
    "rsprof_shim.c"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
TRACED_ALLOC = ("<rsprof_trace::Traced<std::alloc::System> as"
                " core::alloc::global::GlobalAlloc>::alloc")
TRACED_DEALLOC = "<rsprof_trace::Traced<A> as core::alloc::global::GlobalAlloc>::dealloc"


@pytest.mark.parametrize(("function", "file", "module"), [
    ("ring_try_reserve", SHIM_C, SHIM),
    ("whatever", None, SHIM),
    ("malloc", PRELOAD_C, SHIM),
    ("rsprof__realloc_begin", None, APP),
    ("rsprof_shim_record_alloc", None, APP),
    ("walk_stack.constprop.0", TRACE_C, APP),
    ("on_sigprof", "/work/main/rsprof-trace/../csrc/rsprof_sampler.c", APP),
    ("rsprof__on", "/work/main/csrc/rsprof_shim_internal.h", APP),
    (TRACED_ALLOC, "/work/main/rsprof-trace/src/lib.rs", APP),
    ("rsprof_trace::init", None, APP),
    ("[rsprof]", None, APP),
])
def test_rsprof_code(function: str, file: str | None, module: str) -> None:
    assert is_rsprof_code(function, file, module)
    assert is_internal(function, file, module, APP)


@pytest.mark.parametrize(("function", "file", "module"), [
    ("myapp::rsprof_shim_record", USER_FILE, APP),
    ("rsprof_helpers::run", None, APP),
    ("myapp::walk_stack", "/home/dev/myapp/src/rsprof_shim.c", APP),  # not csrc/
    ("myapp::walk_stack", "/home/dev/csrc/shim.c", APP),
    ("malloc", None, LIBC),
])
def test_not_rsprof_code(function: str, file: str | None, module: str) -> None:
    assert not is_rsprof_code(function, file, module)


def test_pass_through_entry_points() -> None:
    for name in ("malloc", "calloc", "realloc", "reallocarray", "posix_memalign",
                 "aligned_alloc", "memalign", "valloc", "pvalloc", "free", "pthread_create",
                 "start_trampoline"):
        assert is_pass_through(name, PRELOAD_C, SHIM)
    assert is_pass_through(TRACED_ALLOC, None, APP)
    assert is_pass_through(TRACED_DEALLOC, "/x/rsprof-trace/src/lib.rs", APP)
    assert is_pass_through(
        "<rsprof_trace::DynAlloc as core::alloc::global::GlobalAlloc>::realloc", None, APP)
    for name, file, module in (("rsprof__alloc", SHIM_C, SHIM), ("record_alloc", SHIM_C, SHIM),
                               ("rsprof_shim_record_free", None, APP),
                               ("malloc", None, LIBC), ("malloc", None, APP),
                               ("rsprof_trace::init", None, APP)):
        assert not is_pass_through(name, file, module)


def _shim(function: str, file: str | None = SHIM_C) -> Frame:
    return frame(function, file, SHIM)


def test_leaf_in_rsprof_recording_is_rsprofs() -> None:
    frames = [_shim("ring_try_reserve"), _shim("ring_reserve"), _shim("record_alloc"),
              _shim("rsprof__alloc"), _shim("malloc", PRELOAD_C),
              frame("alloc::alloc::alloc", f"{STD_HASH}/library/alloc/src/alloc.rs"),
              frame("myapp::make", USER_FILE), frame("myapp::main", USER_FILE)]
    assert rsprof_index(frames, APP) == 0
    charged = charged_frame(frames, executable=APP)
    assert (charged.function, charged.file, charged.module) == (RSPROF_FUNCTION, None, SHIM)
    # --include-internal charges the true leaf, but rsprof's time stays [rsprof].
    assert charged_frame(frames, include_internal=True, executable=APP) == charged
    assert charged_index(frames, include_internal=True, executable=APP) == 0
    # Without the [rsprof] rule the user's frame would have been charged.
    assert charged_index(frames, executable=APP) == 6


def test_leaf_in_the_hook_itself_is_rsprofs() -> None:
    frames = [_shim("malloc", PRELOAD_C), frame("myapp::make", USER_FILE)]
    assert rsprof_index(frames, APP) == 0


def test_libc_called_by_rsprof_recording_is_rsprofs() -> None:
    frames = [frame("__vdso_clock_gettime", None, "[vdso]"), frame("clock_gettime", None, LIBC),
              _shim("rsprof__alloc"), _shim("malloc", PRELOAD_C), frame("myapp::make", USER_FILE)]
    assert rsprof_index(frames, APP) == 2
    assert charged_frame(frames, executable=APP).function == RSPROF_FUNCTION


def test_real_allocator_under_a_hook_is_the_programs() -> None:
    frames = [frame("_int_malloc", None, LIBC), frame("__GI___libc_malloc", None, LIBC),
              _shim("malloc", PRELOAD_C),
              frame("alloc::alloc::alloc", f"{STD_HASH}/library/alloc/src/alloc.rs"),
              frame("myapp::make", USER_FILE)]
    assert rsprof_index(frames, APP) == -1
    assert charged_frame(frames, executable=APP) is frames[4]
    # The same under rsprof-trace: System::alloc inlined into the wrapper, libc below.
    trace = [frame("__GI___libc_malloc", None, LIBC),
             frame("<std::alloc::System as core::alloc::global::GlobalAlloc>::alloc",
                   f"{STD_HASH}/library/std/src/sys/alloc/unix.rs"),
             frame(TRACED_ALLOC, "/work/main/rsprof-trace/src/lib.rs"),
             frame("__rustc::__rust_alloc"), frame("myapp::make", USER_FILE)]
    assert rsprof_index(trace, APP) == -1
    assert charged_frame(trace, executable=APP) is trace[4]


def test_rsprof_trace_recording_is_rsprofs() -> None:
    frames = [frame("walk_stack.constprop.0", TRACE_C), frame("record_alloc", TRACE_C),
              frame("rsprof_shim_record_alloc", TRACE_C),
              frame(TRACED_ALLOC, "/work/main/rsprof-trace/src/lib.rs"),
              frame("__rustc::__rust_alloc"), frame("myapp::make", USER_FILE)]
    assert rsprof_index(frames, APP) == 0
    charged = charged_frame(frames, executable=APP)
    assert (charged.function, charged.module) == (RSPROF_FUNCTION, APP)
    # Stripped of debug info, the exported C functions still say whose they are.
    bare = [frame("rsprof_shim_record_free"), frame(TRACED_DEALLOC), frame("myapp::drop_it")]
    assert rsprof_index(bare, APP) == 0


def test_user_code_called_by_the_wrapper_is_the_users() -> None:
    # rsprof-trace wrapping the program's own allocator: its code is the user's.
    frames = [frame("myapp::pool::Pool::alloc", USER_FILE),
              frame(TRACED_ALLOC, "/work/main/rsprof-trace/src/lib.rs"),
              frame("myapp::make", USER_FILE)]
    assert rsprof_index(frames, APP) == -1
    assert charged_frame(frames, executable=APP) is frames[0]


def test_thread_started_through_the_trampoline_is_the_programs() -> None:
    frames = [frame("__futex_abstimed_wait_common", None, LIBC),
              frame("std::sys::pal::unix::thread::Thread::new::thread_start"),
              _shim("start_trampoline", PRELOAD_C), frame("start_thread", None, LIBC)]
    assert rsprof_index(frames, APP) == -1
    assert charged_frame(frames, executable=APP) is frames[0]
    arming = [_shim("rsprof__sampler_thread_start", "/work/main/csrc/rsprof_sampler.c"),
              _shim("start_trampoline", PRELOAD_C), frame("start_thread", None, LIBC)]
    assert charged_frame(arming, executable=APP).function == RSPROF_FUNCTION


def test_user_frame_before_rsprof_code_is_charged() -> None:
    # A user callback below rsprof's frame (never happens, but the rule is ordered).
    frames = [frame("myapp::work", USER_FILE), _shim("rsprof__alloc")]
    assert rsprof_index(frames, APP) == -1
    assert charged_frame(frames, executable=APP) is frames[0]
