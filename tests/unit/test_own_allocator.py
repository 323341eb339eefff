"""The "heap not seen: own allocator" rule (rsprof/recording/own_allocator.py) on
evidence made up for each case; tests/integration/test_own_allocator.py runs it
on real programs."""

from __future__ import annotations

from dataclasses import replace

from rsprof.recording.own_allocator import MIN_CPU_S, HeapEvidence, verdict
from rsprof.symbols.elf import AllocatorSymbols

RUST_OWN = AllocatorSymbols(defines_malloc=(), has_symtab=True, rust_alloc_shim=True,
                            rust_default_alloc=False)
RUST_DEFAULT = replace(RUST_OWN, rust_default_alloc=True)
STRIPPED = AllocatorSymbols(defines_malloc=(), has_symtab=False, rust_alloc_shim=False,
                            rust_default_alloc=False)
JEMALLOC_EXE = replace(STRIPPED, defines_malloc=("malloc", "free", "calloc", "realloc"))
C_PROGRAM = replace(STRIPPED, has_symtab=True)

BASE = HeapEvidence(program="app", allocs=7, own_allocs=0, own_cpu_s=1.4, whole_run=True,
                    symbols=RUST_OWN)


def test_an_allocation_from_the_programs_code_means_the_heap_is_seen() -> None:
    # rsprof-trace's wrapper, counting allocators over System: a global allocator
    # whose allocations reach malloc from the executable's code.
    for symbols in (RUST_OWN, RUST_DEFAULT, STRIPPED, JEMALLOC_EXE, C_PROGRAM, None):
        assert verdict(replace(BASE, own_allocs=1, symbols=symbols)) == ""


def test_a_global_allocator_that_never_reaches_malloc() -> None:
    text = verdict(BASE)
    assert text.startswith("app uses its own allocator: its #[global_allocator] does not call "
                           "malloc, and 0 allocations from its own code reached malloc in 1.4s "
                           "of CPU (the 7 recorded came from libraries it calls)")
    assert "rsprof-trace" in text and "README" in text
    # Certain from the symbols: also when attached late, or after little CPU.
    assert verdict(replace(BASE, whole_run=False, own_cpu_s=0.0, allocs=0)).startswith(
        "app uses its own allocator")


def test_an_executable_that_defines_malloc() -> None:
    text = verdict(replace(BASE, symbols=JEMALLOC_EXE, own_cpu_s=0.0, allocs=0))
    assert text.startswith("app uses its own allocator: it defines malloc, free, calloc and "
                           "realloc itself, in place of libc's and rsprof's hooks, and 0 "
                           "allocations from its own code reached malloc.")
    assert "rsprof-trace" in text


def test_stds_default_allocator_is_never_doubted() -> None:
    # A Rust program on malloc that did not allocate (yet) while recorded.
    assert verdict(replace(BASE, symbols=RUST_DEFAULT)) == ""


def test_without_symbols_only_the_runtime_evidence_speaks_and_says_so() -> None:
    text = verdict(replace(BASE, symbols=STRIPPED))
    assert text.startswith("app probably uses its own allocator (its symbols are stripped, so "
                           "rsprof cannot tell for sure): 0 allocations from its own code")
    assert "probably" in verdict(replace(BASE, symbols=C_PROGRAM))
    assert "could not be read" in verdict(replace(BASE, symbols=None))
    # Not enough evidence: little CPU in its code, or not recorded from its start.
    assert verdict(replace(BASE, symbols=STRIPPED, own_cpu_s=MIN_CPU_S / 2)) == ""
    assert verdict(replace(BASE, symbols=STRIPPED, whole_run=False)) == ""
