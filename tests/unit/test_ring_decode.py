"""_ring.PerfDecoder against the pure-Python reference decoder, on synthetic ring bytes."""

from __future__ import annotations

import random

import pytest

from rsprof import _ring, _unwind
from rsprof.ring_reference import decode_ring
from tests.unit.code_world import STACK, World, stack_words
from tests.unit.perf_records import PID, comm, fork, lost, ring_with, sample

SEC = 1_000_000_000


def decode_both(data: bytes, tail: int, head: int, start_ns: int = 0, interval_ns: int = SEC,
                code_ranges: list[tuple[int, int, bool, bytes | None]] | None = None,
                code_facts: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None):
    table = _unwind.StackTable()
    dec = _ring.PerfDecoder(table, PID, start_ns, interval_ns)
    if code_ranges:
        dec.set_code_ranges(code_ranges)
    if code_facts:
        dec.set_code_facts(*code_facts)
    new_tail = dec.decode_bytes(data, tail, head)
    taken = dec.take_counts()
    counts = {(iv, tid, sid): n for iv, tid, sid, n, _ns in taken}
    stacks = [tuple(f) for _, f in table.take_new()]
    ref = decode_ring(data, tail, head, PID, start_ns, interval_ns, code_ranges, code_facts)
    # The nanoseconds per (interval, tid, stack): the samples' periods summed.
    assert {(iv, tid, sid): ns for iv, tid, sid, _n, ns in taken} == ref.ns
    return dec, counts, stacks, ref, new_tail


def assert_agree(dec, counts, stacks, ref) -> None:
    assert counts == ref.counts
    assert stacks == ref.stacks
    assert dec.samples == ref.samples
    assert dec.lost == ref.lost
    assert dec.truncated == ref.truncated
    assert dec.malformed == ref.malformed
    assert dec.other_process_samples == ref.other_process_samples
    assert dec.broken_chains == ref.broken_chains
    assert dec.scanned_stacks == ref.scanned_stacks
    assert dec.take_events() == ref.events


def test_samples_are_counted_per_interval_thread_and_stack() -> None:
    records = [
        sample(10, 100, [0x1000, 0x2005, 0x3005]),
        sample(10, 200, [0x1000, 0x2005, 0x3005]),
        sample(11, 300, [0x1000, 0x2005, 0x3005]),
        sample(10, SEC + 5, [0x1100, 0x2005]),
    ]
    data, tail, head = ring_with(records, 4096, 0)
    dec, counts, stacks, ref, new_tail = decode_both(data, tail, head)
    assert new_tail == head
    # The leaf IP is kept as is; return addresses become address - 1.
    assert stacks == [(0x1000, 0x2004, 0x3004), (0x1100, 0x2004)]
    assert counts == {(0, 10, 0): 2, (0, 11, 0): 1, (1, 10, 1): 1}
    assert dec.samples == 4
    assert_agree(dec, counts, stacks, ref)


def test_each_sample_counts_the_nanoseconds_of_its_period() -> None:
    """A cpu-clock sample's period (PERF_SAMPLE_PERIOD) is the CPU time it stands for."""
    records = [
        sample(10, 100, [0x1000, 0x2005], period=1_000_000),
        sample(10, 200, [0x1000, 0x2005], period=4_000_000),
        sample(11, 300, [0x1000, 0x2005], period=2_500_000),
    ]
    data, tail, head = ring_with(records, 4096, 0)
    _dec, counts, _stacks, ref, _ = decode_both(data, tail, head)
    assert counts == {(0, 10, 0): 2, (0, 11, 0): 1}
    assert ref.ns == {(0, 10, 0): 5_000_000, (0, 11, 0): 2_500_000}


def test_records_wrapping_the_ring_end_decode_like_contiguous_ones() -> None:
    records = [sample(7, 1, [0xAAAA, 0xBBBB + i, 0xCCCC]) for i in range(6)] + [lost(3)]
    size = 1024
    for tail in (0, 8, 200, 1008, 1016, 1000 * size + 40):
        data, t, head = ring_with(records, size, tail)
        dec, counts, stacks, ref, new_tail = decode_both(data, t, head)
        assert new_tail == head
        assert dec.samples == 6 and dec.lost == 3
        assert len(stacks) == 6
        assert_agree(dec, counts, stacks, ref)


def test_lost_records_accumulate() -> None:
    data, tail, head = ring_with([lost(5), sample(1, 0, [1, 2]), lost(7)], 1024, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head)
    assert dec.lost == 12
    assert_agree(dec, counts, stacks, ref)


def test_kernel_part_of_callchain_is_dropped_and_truncation_counted() -> None:
    deep = list(range(0x10000, 0x10000 + _ring.MAX_STACK))
    data, tail, head = ring_with(
        [sample(1, 0, [0x5000, 0x6001], kernel=[0xFFFFFFFF81000000]), sample(1, 0, deep)],
        4096, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head)
    assert stacks[0] == (0x5000, 0x6000)
    assert dec.truncated == 1
    assert len(stacks[1]) == _ring.MAX_STACK
    assert_agree(dec, counts, stacks, ref)


def test_samples_of_other_processes_are_counted_not_charged() -> None:
    data, tail, head = ring_with([sample(99, 0, [1], pid=PID + 1), sample(5, 0, [1])], 1024, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head)
    assert dec.other_process_samples == 1 and dec.samples == 1
    assert_agree(dec, counts, stacks, ref)


def test_comm_and_fork_become_events() -> None:
    data, tail, head = ring_with([comm(12, "worker-1"), fork(13, 77)], 1024, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head)
    assert ref.events == [("comm", PID, 12, 0, "worker-1"), ("fork", PID, 13, 77, "")]
    assert_agree(dec, counts, stacks, ref)


def test_empty_callchain_keeps_the_ip() -> None:
    data, tail, head = ring_with([sample(1, 0, [0x1234], user_marker=False)], 1024, 0)
    _, _, stacks, _, _ = decode_both(data, tail, head)
    assert stacks == [(0x1234,)]


@pytest.mark.parametrize("bad_size", [0, 4, 5000])
def test_bad_record_size_is_counted_and_skipped(bad_size: int) -> None:
    import struct

    good = sample(1, 0, [1, 2])
    bad = struct.pack("<IHH", _ring.RECORD_SAMPLE, 0, bad_size) + b"\0" * 8
    data, tail, head = ring_with([good, bad], 1024, 0)
    dec, counts, stacks, ref, new_tail = decode_both(data, tail, head)
    assert new_tail == head  # garbage is skipped, never looped on
    assert dec.samples == 1 and dec.malformed == 1
    assert_agree(dec, counts, stacks, ref)


def test_head_beyond_ring_size_is_malformed() -> None:
    dec, _counts, _stacks, _ref, new_tail = decode_both(bytes(256), 0, 10_000)
    assert new_tail == 10_000 and dec.malformed == 1 and dec.samples == 0


def test_random_bytes_never_crash_and_agree_with_reference() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        size = 1 << rng.randint(6, 12)
        data = bytes(rng.getrandbits(8) for _ in range(size))
        tail = rng.randrange(0, 1 << 20)
        head = tail + rng.randrange(0, size + 1)
        dec, counts, stacks, ref, new_tail = decode_both(data, tail, head)
        assert new_tail == head
        assert_agree(dec, counts, stacks, ref)


def test_random_valid_streams_agree_with_reference() -> None:
    rng = random.Random(99)
    for _ in range(100):
        records = []
        for _ in range(rng.randint(1, 30)):
            kind = rng.random()
            if kind < 0.8:
                depth = rng.randint(1, 12)
                ips = [rng.choice([0x10, 0x2000, 0x3000, 0x4000]) for _ in range(depth)]
                records.append(sample(rng.randint(1, 4), rng.randint(0, 5 * SEC), ips))
            elif kind < 0.9:
                records.append(lost(rng.randint(1, 100)))
            else:
                records.append(comm(rng.randint(1, 4), f"t{rng.randint(0, 9)}"))
        stream_len = sum(len(r) for r in records)
        size = 1 << max(8, stream_len.bit_length())
        data, tail, head = ring_with(records, size, rng.randrange(0, 4 * size))
        dec, counts, stacks, ref, _ = decode_both(data, tail, head)
        assert_agree(dec, counts, stacks, ref)


def test_chain_stops_at_an_impossible_return_address() -> None:
    records = [sample(1, 0, [0x5000, 0x6001, 0, 0x7001]),
               sample(1, 0, [0x5000, 0x6001, 2**63 + 5]),
               sample(1, 0, [0x5000, 0x6001, 0x7001])]
    data, tail, head = ring_with(records, 4096, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head)
    assert stacks == [(0x5000, 0x6000), (0x5000, 0x6000, 0x7000)]
    assert dec.broken_chains == 2
    assert_agree(dec, counts, stacks, ref)


# --- Stacks of leaves in code without frame pointers (docs/attribution.md) --------
# W is a small synthetic process (tests/unit/code_world.py): a libc without frame
# pointers, a program with them, real call instructions, a GOT, thunks.

W = World()
S = STACK


def scan(records: list[bytes], facts: bool = True):
    data, tail, head = ring_with(records, 1 << sum(len(r) for r in records).bit_length(), 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head, code_ranges=W.code_ranges,
                                              code_facts=W.code_facts if facts else None)
    assert_agree(dec, counts, stacks, ref)
    return dec, stacks


def test_stale_return_address_is_not_taken_as_the_caller() -> None:
    """The leaf (_int_malloc) uses rbp as a register: the kernel's chain is garbage
    and the caller must come from the copied stack, which holds a stale return
    address into create_left (from an earlier, deeper call of create) below the
    live ones. create_left's call goes to create, not to _int_malloc: not a caller.
    The live chain is malloc <- create <- create_left <- create <- main."""
    create_frame_at = 32 + 8 + W.create_frame  # create's frame record, by its prologue
    left_frame_at = create_frame_at + 16 + W.create_left_frame
    create2_frame_at = left_frame_at + 16 + W.create_frame
    words = {
        0: W.ret_left_create,  # stale
        16: W.ret_malloc,  # live: malloc called _int_malloc
        24: W.ret_left_create,  # stale
        32: W.ret_create_alloc,  # live: create called __rust_alloc (-> malloc)
        48: W.ret_main_create,  # stale, inside create's frame (a call to create, too)
        create_frame_at: S + left_frame_at, create_frame_at + 8: W.ret_left_create,
        left_frame_at: S + create2_frame_at, left_frame_at + 8: W.ret_create_left,
        create2_frame_at: 0, create2_frame_at + 8: W.ret_main_create,
    }
    rec = sample(1, 0, [W.int_malloc + 0x100, 0x4141414141], regs=(0x1234, S),
                 stack=stack_words(words))
    dec, stacks = scan([rec])
    assert stacks == [(W.int_malloc + 0x100, W.ret_malloc - 1, W.ret_create_alloc - 1,
                       W.ret_left_create - 1, W.ret_create_left - 1,
                       W.ret_main_create - 1)]
    # The chain ends where the copy does: a broken stack, recovered by scanning.
    assert dec.broken_chains == 1 and dec.scanned_stacks == 1


def test_stale_caller_of_the_same_function_is_not_taken_when_rbp_pins_the_live_one() -> None:
    """plant also calls malloc (through __rust_alloc), so its stale return address
    passes the call check. But rbp still holds create's frame pointer: by create's
    prologue its return address is exactly 48 + 8 bytes below it, and that word is
    the caller; the kernel's chain (from rbp) goes on above it."""
    bp = S + 32 + 8 + W.create_frame
    words = {0: W.ret_plant_alloc, 16: W.ret_malloc, 24: W.ret_plant_alloc,
             32: W.ret_create_alloc}
    rec = sample(1, 0, [W.int_malloc + 0x100, W.ret_left_create, W.ret_create_left],
                 regs=(bp, S), stack=stack_words(words))
    dec, stacks = scan([rec])
    # The frames found between the leaf and the anchor do not lead up to create
    # (the stale plant in between): they are left out, never guessed.
    assert stacks == [(W.int_malloc + 0x100, W.ret_create_alloc - 1, W.ret_left_create - 1,
                       W.ret_create_left - 1)]
    assert dec.broken_chains == 0 and dec.scanned_stacks == 1
    # Without the stale word the libc frames chain up to the anchor and are kept.
    words[24] = 0
    rec = sample(1, 0, [W.int_malloc + 0x100, W.ret_left_create], regs=(bp, S),
                 stack=stack_words(words))
    _dec, stacks = scan([rec])
    assert stacks == [(W.int_malloc + 0x100, W.ret_malloc - 1, W.ret_create_alloc - 1,
                       W.ret_left_create - 1)]


def test_the_old_scan_took_the_first_user_word_after_a_call() -> None:
    """The two stale words above, which the first-word-after-a-call scan took: now
    no sample is charged to create_left or plant, which were not calling."""
    rec = sample(1, 0, [W.int_malloc + 0x100], regs=(0x1234, S),
                 stack=stack_words({0: W.ret_left_create, 16: W.ret_malloc,
                                    32: W.ret_create_alloc}))
    _dec, stacks = scan([rec])
    assert stacks[0][1:3] == (W.ret_malloc - 1, W.ret_create_alloc - 1)
    assert W.ret_left_create - 1 not in stacks[0]


def test_garbage_words_of_a_broken_chain_are_cut_and_counted_not_stored() -> None:
    """A frame-pointer chain that ran into garbage: a word that is no code address
    (a stack or heap pointer, inside user space so not impossible) or is code
    but does not follow a call. It is cut there (broken_chains), never stored as
    an unresolvable address."""
    leaf = W.create + 0x50  # create keeps its frame at bp: the chain is its own
    bp = S + W.create_frame
    stack_addr = 0x7FFD00002000
    recs = [sample(1, 0, [leaf, W.ret_left_create, stack_addr, W.ret_main_create],
                   regs=(bp, S), stack=[0] * 8),
            sample(1, 0, [leaf, W.ret_left_create, W.create_left + 5], regs=(bp, S),
                   stack=[0] * 8),
            sample(1, 0, [leaf, W.ret_left_create, W.ret_main_create], regs=(bp, S),
                   stack=[0] * 8)]
    dec, stacks = scan(recs)
    assert stacks == [(leaf, W.ret_left_create - 1),
                      (leaf, W.ret_left_create - 1, W.ret_main_create - 1)]
    assert dec.broken_chains == 2 and dec.scanned_stacks == 0


def test_a_leaf_keeping_its_frame_pointer_keeps_the_kernel_chain() -> None:
    leaf = W.create + 0x50
    chain = [leaf, W.ret_left_create, W.ret_create_left, W.ret_main_create]
    ok = sample(1, 0, chain, regs=(S + W.create_frame, S), stack=stack_words({}))
    # In create's prologue (rbp not yet its own): the caller's return address is
    # at sp and rbp is the caller's frame; the kernel's chain skipped create_left.
    entry = sample(1, 0, [W.create, W.ret_create_left, W.ret_main_create],
                   regs=(S + 8 + W.create_left_frame, S),
                   stack=stack_words({0: W.ret_left_create}))
    dec, stacks = scan([ok, entry])
    assert stacks == [tuple([leaf] + [a - 1 for a in chain[1:]]),
                      (W.create, W.ret_left_create - 1, W.ret_create_left - 1,
                       W.ret_main_create - 1)]
    assert dec.broken_chains == 0 and dec.scanned_stacks == 1


def test_calls_through_the_plt_and_into_a_frame_pointer_callee() -> None:
    """via_plt calls malloc through its PLT stub (jmp *GOT); the leaf is malloc
    itself and rbp is via_plt's frame: anchored, the kernel's chain follows."""
    bp = S + 8 + 16
    rec = sample(1, 0, [W.malloc + 0x50, W.ret_main_indirect], regs=(bp, S),
                 stack=stack_words({0: W.ret_via_plt}))
    # libc_fp keeps a frame pointer and calls _int_free through a register: the call
    # cannot be checked, but rbp is libc_fp's frame, 32 + 8 bytes above the word.
    fp = sample(1, 0, [W.int_free + 0x20, W.ret_create_fp, W.ret_main_create],
                regs=(S + 8 + 8 + 32, S), stack=stack_words({8: W.ret_libc_fp}))
    # The same with rbp clobbered: nothing can vouch for the word.
    lost_fp = sample(1, 0, [W.int_free + 0x20], regs=(77, S),
                     stack=stack_words({8: W.ret_libc_fp}))
    dec, stacks = scan([rec, fp, lost_fp])
    assert stacks == [(W.malloc + 0x50, W.ret_via_plt - 1, W.ret_main_indirect - 1),
                      (W.int_free + 0x20, W.ret_libc_fp - 1, W.ret_create_fp - 1,
                       W.ret_main_create - 1),
                      (W.int_free + 0x20,)]
    assert dec.broken_chains == 1 and dec.scanned_stacks == 2


def test_frame_record_at_bp_of_a_shrink_wrapped_leaf() -> None:
    """shrunk sets up its frame after an early test, so its prologue is not at its
    start; rbp is its frame, and the word at rbp + 8 returns into create from a call
    to shrunk: the kernel's chain is right, nothing is added twice."""
    bp = S + 16
    rec = sample(1, 0, [W.shrunk + 0x30, W.ret_create_shrunk, W.ret_left_create],
                 regs=(bp, S), stack=stack_words({0: W.ret_plant_alloc, 24: W.ret_create_shrunk}))
    dec, stacks = scan([rec])
    assert stacks == [(W.shrunk + 0x30, W.ret_create_shrunk - 1, W.ret_left_create - 1)]
    assert dec.broken_chains == 0


def test_without_function_bounds_a_system_leaf_keeps_only_itself() -> None:
    """Nothing can be checked: the leaf in libc stays, its unverifiable callers go
    (broken); a leaf in the program keeps the kernel's chain."""
    recs = [sample(1, 0, [W.int_malloc + 0x10, W.ret_main_create], regs=(0x1234, S),
                   stack=stack_words({0: W.ret_create_alloc})),
            sample(1, 0, [W.create + 0x50, W.ret_main_create], regs=(S + 48, S),
                   stack=stack_words({}))]
    dec, stacks = scan(recs, facts=False)
    assert stacks == [(W.int_malloc + 0x10,), (W.create + 0x50, W.ret_main_create - 1)]
    assert dec.broken_chains == 1 and dec.scanned_stacks == 0


def test_random_samples_with_stacks_agree_with_reference() -> None:
    rng = random.Random(7)
    returns = [W.ret_malloc, W.ret_free, W.ret_libc_fp, W.ret_create_alloc, W.ret_create_left,
               W.ret_create_free, W.ret_create_shrunk, W.ret_create_fp, W.ret_left_create,
               W.ret_plant_alloc, W.ret_main_create, W.ret_main_indirect, W.ret_via_plt]
    leaves = [f + d for f, _ in W.functions for d in (0, 1, 4, 9, 0x30)]
    junk = [0, 5, 0x4141, W.create + 3, W.malloc, 2**63, S + 64]
    records = []
    for _ in range(400):
        chain = [rng.choice(leaves)] + [rng.choice(returns + junk[:2])
                                        for _ in range(rng.randint(0, 5))]
        words = {8 * i: rng.choice(returns + junk) for i in range(rng.randint(0, 24))
                 if rng.random() < 0.6}
        sp = rng.choice([S, S - 8, 2**64 - 64])
        bp = rng.choice([(sp + 8 * rng.randint(0, 30)) % 2**64, 0x1234, 0, 2**64 - 8])
        if words and rng.random() < 0.5:
            # Often make rbp vouch for one of the words: the frame record of the
            # function below it (bp + 8), or the frame of the function it returns
            # into (frames of 16, 32 or 48 bytes).
            off = rng.choice(sorted(words))
            if rng.random() < 0.5:
                bp = (sp + off - 8) % 2**64
                chain[1:2] = [words[off]]
            else:
                bp = (sp + off + 8 + rng.choice([16, 32, 48])) % 2**64
        records.append(sample(rng.randint(1, 3), 0, chain,
                              regs=None if rng.random() < 0.1 else (bp, sp),
                              stack=stack_words(words, 8 * rng.randint(0, 32)),
                              stack_room=rng.choice([0, 16])))
    dec, _stacks = scan(records)
    assert dec.scanned_stacks > 20 and dec.broken_chains > 20
    # Without function bounds nothing is recovered; the reference agrees there too.
    dec2, _ = scan(records, facts=False)
    assert dec2.scanned_stacks == 0


def test_hostile_code_is_checked_in_bounded_time() -> None:
    """The code bytes are the target's: 64 functions of 256 bytes that are nothing
    but tail jumps to each other. Every check of a call into them stops after a
    bounded amount of work; the decoder and the reference still agree."""
    import struct
    import time

    base, n, size = 0x600000000000, 64, 256
    code = bytearray()
    rng = random.Random(3)
    for i in range(n):
        body = bytearray(b"\x90")  # not a thunk: the whole body is searched
        while len(body) + 5 <= size:
            target = base + size * rng.randrange(n)
            body += b"\xe9" + struct.pack("<i", target - (base + i * size + len(body) + 5))
        code += body + b"\xcc" * (size - len(body))
    # Call sites: call rel32 into each function, right after one another.
    calls = bytearray()
    callers = base + n * size
    for i in range(n):
        calls += b"\xe8" + struct.pack("<i", base + i * size - (callers + len(calls) + 5))
    code += calls + b"\xcc" * 64
    rets = [callers + 5 * (i + 1) for i in range(n)]
    ranges = [(base, base + len(code), False, bytes(code))]
    facts = ([(base + i * size, base + (i + 1) * size) for i in range(n)]
             + [(callers, callers + len(calls))], [])
    records = [sample(1, 0, [base + 7 + size * rng.randrange(n)], regs=(1, S),
                      stack=[rng.choice(rets) for _ in range(64)]) for _ in range(3)]
    data, tail, head = ring_with(records, 1 << 16, 0)
    started = time.perf_counter()
    dec, counts, stacks, ref, _ = decode_both(data, tail, head, code_ranges=ranges,
                                              code_facts=facts)
    assert_agree(dec, counts, stacks, ref)
    assert dec.samples == 3
    assert time.perf_counter() - started < 30  # the reference dominates; unbounded: hours
