"""The attribution rule (rsprof/attribution.py): which frames are the user's own code."""

from __future__ import annotations

import pytest

from rsprof.attribution import charged_index, is_internal, is_system_module
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
    assert is_internal("__rust_dealloc", None, "/srv/app/bin/app")
