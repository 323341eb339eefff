"""Demangler vectors: Rust legacy, Rust v0 (RFC 2603 / rustc-demangle "{:#}" form), C++."""

from __future__ import annotations

import random

import pytest

from rsprof.symbols.demangle import demangle, demangle_cpp, demangle_rust_legacy
from rsprof.symbols.demangle_v0 import V0Error, demangle_v0

LEGACY = [
    ("_ZN9symtarget10outer_work17ha7ce757554f9f255E", "symtarget::outer_work"),
    ("_ZN4core3fmt9Formatter9write_str17h1234567890abcdefE", "core::fmt::Formatter::write_str"),
    (
        "_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17hc1801f0c25e58526E",
        "std::rt::lang_start::{{closure}}",
    ),
    (
        "_ZN42_$LT$$RF$T$u20$as$u20$core..fmt..Debug$GT$3fmt17ha7f07267f30a0c54E",
        "<&T as core::fmt::Debug>::fmt",
    ),
    (
        "_ZN65_$LT$alloc..vec..Vec$LT$T$C$A$GT$$u20$as$u20$core..fmt..Debug$GT$3fmt"
        "17h179c9132ba6c30ddE",
        "<alloc::vec::Vec<T,A> as core::fmt::Debug>::fmt",
    ),
    (
        "_ZN4core3ops8function6FnOnce40call_once$u7b$$u7b$vtable.shim$u7d$$u7d$"
        "17he26cf375e45373d1E",
        "core::ops::function::FnOnce::call_once{{vtable.shim}}",
    ),
    (
        "_ZN4core3ptr35drop_in_place$LT$std..env..Args$GT$17h587becc4525a3954E",
        "core::ptr::drop_in_place<std::env::Args>",
    ),
    (
        "_ZN5alloc5boxed25Box$LT$$BP$mut$u20$u8$GT$3new17h0123456789abcdefE",
        "alloc::boxed::Box<*mut u8>::new",
    ),
    ("_ZN3foo3bar17h05af221e174051e9E.llvm.1234567", "foo::bar"),
    ("_ZN3foo17h05af221e174051e9E", "foo"),
]

# Real symbols from a rustc 1.95 binary built with -C symbol-mangling-version=v0,
# cross-checked against binutils' c++filt with the [crate-hash] parts removed.
V0_REAL = [
    ("_RNvCs45Afnzu571x_9symtarget10outer_work", "symtarget::outer_work"),
    (
        "_RNvMCs45Afnzu571x_9symtargetINtB2_7WrapperINtNtCslNYArtu3iFV_5alloc3vec3VeclEE4showB2_",
        "<symtarget::Wrapper<alloc::vec::Vec<i32>>>::show",
    ),
    (
        "_RNvYNvNtNtNtCsjrHSEGnQ3l9_3std3sys2fs4unix4statINtNtNtCsgEmfK2I1SDS_4core3ops8function"
        "2FnTRNtNtNtBQ_3ffi5c_str4CStrEE4callBa_",
        "<std::sys::fs::unix::stat as core::ops::function::Fn<(&core::ffi::c_str::CStr,)>>::call",
    ),
    (
        "_RNCINvNtCsjrHSEGnQ3l9_3std2rt10lang_startuE0Cs45Afnzu571x_9symtarget",
        "std::rt::lang_start::<()>::{closure#0}",
    ),
    (
        "_RINvNtCsgEmfK2I1SDS_4core3ptr13drop_in_placeNtNtCsjrHSEGnQ3l9_3std3env4ArgsE"
        "Cs45Afnzu571x_9symtarget",
        "core::ptr::drop_in_place::<std::env::Args>",
    ),
    (
        "_RINvMs6_NtCsgvbsrvnw3yD_9hashbrown3rawINtB6_8RawTableTyyEE14reserve_rehashNCINvNtB8_3map"
        "11make_hasheryyNtNtNtCsjrHSEGnQ3l9_3std4hash6random11RandomStateE0E"
        "Cs45Afnzu571x_9symtarget.llvm.16923202928895020791",
        "<hashbrown::raw::RawTable<(u64, u64)>>::reserve_rehash::<hashbrown::map::make_hasher"
        "<u64, u64, std::hash::random::RandomState>::{closure#0}>",
    ),
    (
        "_RNSNvYNCINvNtCsjrHSEGnQ3l9_3std2rt10lang_startuE0INtNtNtCsgEmfK2I1SDS_4core3ops8function"
        "6FnOnceuE9call_once6vtableCs45Afnzu571x_9symtarget",
        "<std::rt::lang_start<()>::{closure#0} as core::ops::function::FnOnce<()>>"
        "::call_once::{shim:vtable#0}",
    ),
    (
        "_RINvNtCsgEmfK2I1SDS_4core6escape14escape_unicodeKja_ECsgY6Mt91CT9J_14rustc_demangle",
        "core::escape::escape_unicode::<10>",
    ),
]

# Vectors from RFC 2603 / the rustc-demangle test-suite ("{:#}" = without crate hashes).
V0_SPEC = [
    ("_RNvC6_123foo3bar", "123foo::bar"),
    ("_RC4f128", "f128"),
    ("_RNvC9backtrace3foo.llvm.A5310EB9", "backtrace::foo"),
    ("_RC3foo.llvm.9D1C9369@@16", "foo"),
    (
        "_RNqCs4fqI2P2rA04_11utf8_identsu30____7hkackfecea1cbdathfdh9hlq6y",
        "utf8_idents::საჭმელად_გემრიელი_სადილი",
    ),
    ("_RNCNCNgCs6DXkGYLi8lr_2cc5spawn00B5_", "cc::spawn::{closure#0}::{closure#0}"),
    (
        "_RNCINkXs25_NgCsbmNqQUJIY6D_4core5sliceINyB9_4IterhENuNgNoBb_4iter8iterator8Iterator"
        "9rpositionNCNgNpB9_6memchr7memrchrs_0E0Bb_",
        "<core::slice::Iter<u8> as core::iter::iterator::Iterator>::rposition::"
        "<core::slice::memchr::memrchr::{closure#1}>::{closure#0}",
    ),
    (
        "_RINbNbCskIICzLVDPPb_5alloc5alloc8box_freeDINbNiB4_5boxed5FnBoxuEp6OutputuEL_E"
        "Cs1iopQbuBiw2_3std",
        "alloc::alloc::box_free::<dyn alloc::boxed::FnBox<(), Output = ()>>",
    ),
    ("_RMC0INtC8arrayvec8ArrayVechKj7b_E", "<arrayvec::ArrayVec<u8, 123>>"),
    (
        "_RNvNtNtNtNtCs92dm3009vxr_4rand4rngs7adapter9reseeding4fork23FORK_HANDLER_REGISTERED.0.0",
        "rand::rngs::adapter::reseeding::fork::FORK_HANDLER_REGISTERED.0.0",
    ),
    # types
    ("_RMC0Rc", "<&char>"),
    ("_RMC0QRe", "<&mut &str>"),
    ("_RMC0PSh", "<*const [u8]>"),
    ("_RMC0OAhj4_", "<*mut [u8; 4]>"),
    ("_RMC0TuE", "<((),)>"),
    ("_RMC0TlxE", "<(i32, i64)>"),
    ("_RMC0FEu", "<fn()>"),
    ("_RMC0FUKCjEz", '<unsafe extern "C" fn(usize) -> !>'),
    ("_RMC0FG_RL0_hEu", "<for<'a> fn(&'a u8)>"),
    ("_RMC0DNtC3std5DebugEL_", "<dyn std::Debug>"),
    # consts
    ("_RIC0KpE", "::<_>"),
    ("_RIC0Khb_E", "::<11>"),
    ("_RIC0Koff00ff00ff00ff00ff_E", "::<0xff00ff00ff00ff00ff>"),
    ("_RIC0Ks98_E", "::<152>"),
    ("_RIC0Kanb_E", "::<-11>"),
    ("_RIC0Kb0_E", "::<false>"),
    ("_RIC0Kb1_E", "::<true>"),
    ("_RIC0Kc76_E", "::<'v'>"),
    ("_RIC0Kca_E", "::<'\\n'>"),
    ("_RIC0Kc2202_E", "::<'∂'>"),
    ("_RIC0Ke616263_E", '::<{*"abc"}>'),
    ("_RIC0KRe616263_E", '::<"abc">'),
    ("_RIC0KRpE", "::<{&_}>"),
    ("_RIC0KRRRh0_E", "::<{&&&0}>"),
    ("_RIC0KQAEE", "::<{&mut []}>"),
    ("_RIC0KAh1_h2_h3_EE", "::<{[1, 2, 3]}>"),
    ("_RIC0KTj0_EE", "::<{(0,)}>"),
    ("_RIC0KTh1_b0_EE", "::<{(1, false)}>"),
    (
        "_RIC0KVNvINtNtC4core6option6OptionjE4NoneUE",
        "::<{core::option::Option::<usize>::None}>",
    ),
    (
        "_RIC0KVNvINtNtC4core6option6OptionjE4SomeTj0_EE",
        "::<{core::option::Option::<usize>::Some(0)}>",
    ),
    (
        "_RIC0KVNtC3foo3BarS1sRe616263_2chc78_5sliceRAh1_h2_h3_EEE",
        "::<{foo::Bar { s: \"abc\", ch: 'x', slice: &[1, 2, 3] }}>",
    ),
]

CPP = [
    ("_Z3fooi", "foo(int)"),
    (
        "_ZNSt6vectorIiSaIiEE9push_backERKi",
        "std::vector<int, std::allocator<int> >::push_back(int const&)",
    ),
    (
        "_ZN9__gnu_cxx13new_allocatorIcE8allocateEmPKv",
        "__gnu_cxx::new_allocator<char>::allocate(unsigned long, void const*)",
    ),
]


@pytest.mark.parametrize(("mangled", "expected"), LEGACY)
def test_rust_legacy(mangled: str, expected: str) -> None:
    assert demangle(mangled) == expected
    assert demangle_rust_legacy(mangled) == expected


@pytest.mark.parametrize(("mangled", "expected"), V0_REAL + V0_SPEC)
def test_rust_v0(mangled: str, expected: str) -> None:
    assert demangle(mangled) == expected


@pytest.mark.parametrize(("mangled", "expected"), CPP)
def test_cpp(mangled: str, expected: str) -> None:
    if demangle_cpp("_Z3fooi") is None:
        pytest.skip("no C++ runtime with __cxa_demangle")
    assert demangle(mangled) == expected


def test_legacy_is_not_sent_to_cpp() -> None:
    # c++filt would keep "::h0123..." for this; we drop the hash.
    assert demangle("_ZN3std2io5stdio6_print17h0123456789abcdefE") == "std::io::stdio::_print"


@pytest.mark.parametrize(
    "name",
    [
        "main",
        "",
        "_R",
        "_ZN",
        "_Z",
        "_Zfoo",
        "_RNv",
        "_RB_",
        "_RNvC3foo",
        "_RXC3foo",
        "memcpy",
        "_RIC0KAh1_",
        "_R1C3foo",
    ],
)
def test_invalid_returned_unchanged(name: str) -> None:
    assert demangle(name) == name


def test_v0_error_type() -> None:
    with pytest.raises(V0Error):
        demangle_v0("_RNvC3foo")


def test_backref_explosion_is_bounded() -> None:
    # 6 nested backrefs -> 64 copies; fine. Thousands would be exponential: bail out.
    small = demangle("_RMC0TTTTTTpB8_EB7_EB6_EB5_EB4_EB3_E")
    assert small.count("_") == 64
    sym = "_RMC0" + "T" * 40 + "p" + "".join(f"B{i}_E" for i in range(43, 2, -1))
    assert demangle(sym) == sym  # gives up instead of producing 2**40 characters


def test_deep_recursion_is_bounded() -> None:
    sym = "_RIC" + "R" * 100_000 + "pE"
    assert demangle(sym) == sym


def test_never_raises_on_garbage() -> None:
    rnd = random.Random(1234)
    alphabet = "_RZNCIEBKLMXYSTUuvs0123456789abcdefghijklmnopqrstuvwxyz$.@"
    for _ in range(3000):
        prefix = rnd.choice(["_R", "_ZN", "_Z", "__R", ""])
        s = prefix + "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(40)))
        assert isinstance(demangle(s), str)
