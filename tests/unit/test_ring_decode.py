"""_ring.PerfDecoder against the pure-Python reference decoder, on synthetic ring bytes."""

from __future__ import annotations

import random

import pytest

from rsprof import _ring, _unwind
from rsprof.ring_reference import decode_ring
from tests.unit.perf_records import PID, comm, fork, lost, ring_with, sample

SEC = 1_000_000_000


# Executable mappings for the stack-scanning tests: a "libc" and a user binary.
LIBC = (0x7F0000000000, 0x7F0000100000, True, None)
APP = (0x555500000000, 0x555500100000, False, None)
CODE_RANGES = [LIBC, APP]


def decode_both(data: bytes, tail: int, head: int, start_ns: int = 0, interval_ns: int = SEC,
                code_ranges: list[tuple[int, int, bool, bytes | None]] | None = None):
    table = _unwind.StackTable()
    dec = _ring.PerfDecoder(table, PID, start_ns, interval_ns)
    if code_ranges:
        dec.set_code_ranges(code_ranges)
    new_tail = dec.decode_bytes(data, tail, head)
    counts = {(iv, tid, sid): n for iv, tid, sid, n in dec.take_counts()}
    stacks = [tuple(f) for _, f in table.take_new()]
    ref = decode_ring(data, tail, head, PID, start_ns, interval_ns, code_ranges)
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


def test_caller_of_a_libc_leaf_is_recovered_from_the_stack() -> None:
    libc_leaf = LIBC[0] + 0x500
    libc_inner_ret = LIBC[0] + 0x900  # random() called random_r()
    user_ret = APP[0] + 0x1234  # call_libc_rand() called random()
    outer_ret = APP[0] + 0x2000  # main() called call_libc_rand(): the kernel chain has it
    sp = 0x7FFD00001000
    stack = [7, libc_inner_ret, 0, user_ret, 99]
    slot = sp + 8 * 3
    intact = sample(1, 0, [libc_leaf, outer_ret], regs=(slot + 64, sp), stack=stack)
    clobbered = sample(1, 0, [libc_leaf, outer_ret + 8], regs=(12345, sp), stack=stack)
    no_user = sample(1, 0, [libc_leaf, outer_ret + 16], regs=(slot + 64, sp), stack=[7, 8])
    user_leaf = sample(1, 0, [APP[0] + 0x10, outer_ret], regs=(slot + 64, sp), stack=stack)
    data, tail, head = ring_with([intact, clobbered, no_user, user_leaf], 4096, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head, code_ranges=CODE_RANGES)
    assert stacks[0] == (libc_leaf, libc_inner_ret - 1, user_ret - 1, outer_ret - 1)
    # bp no longer points into the stack: the kernel's chain beyond the leaf is dropped.
    assert stacks[1] == (libc_leaf, libc_inner_ret - 1, user_ret - 1)
    # Nothing of the user's on the copied stack: left as the kernel gave it.
    assert stacks[2] == (libc_leaf, outer_ret + 16 - 1)
    # A leaf in user code (with frame pointers) is never rewritten.
    assert stacks[3] == (APP[0] + 0x10, outer_ret - 1)
    assert dec.scanned_stacks == 2 and dec.broken_chains == 1
    assert_agree(dec, counts, stacks, ref)


def test_kernel_chain_that_already_has_the_caller_is_not_duplicated() -> None:
    libc_leaf = LIBC[0] + 0x500
    user_ret = APP[0] + 0x1234
    sp = 0x7FFD00001000
    rec = sample(1, 0, [libc_leaf, user_ret, APP[0] + 0x3000], regs=(sp + 256, sp),
                 stack=[user_ret])
    data, tail, head = ring_with([rec], 1024, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head, code_ranges=CODE_RANGES)
    assert stacks == [(libc_leaf, user_ret - 1, APP[0] + 0x3000 - 1)]
    assert_agree(dec, counts, stacks, ref)


def test_random_samples_with_stacks_agree_with_reference() -> None:
    rng = random.Random(7)
    pool = [LIBC[0] + 0x10, LIBC[0] + 0x800, APP[0] + 0x40, APP[0] + 0x900, 0x1234, 5]
    records = []
    for _ in range(200):
        ips = [rng.choice(pool[:4]) for _ in range(rng.randint(1, 6))]
        stack = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
        sp = 0x7FFD00000000
        records.append(sample(rng.randint(1, 3), 0, ips,
                              regs=None if rng.random() < 0.1
                              else (sp + rng.choice([0, 48, 4096]), sp),
                              stack=stack, stack_room=rng.choice([0, 16])))
    stream_len = sum(len(r) for r in records)
    data, tail, head = ring_with(records, 1 << stream_len.bit_length(), 77)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head, code_ranges=CODE_RANGES)
    assert dec.scanned_stacks > 0
    assert_agree(dec, counts, stacks, ref)


def test_stack_scan_takes_only_words_that_follow_a_call() -> None:
    """A stale function pointer on the stack is not a return address."""
    start = 0x555500000000
    code = bytearray(0x1000)
    code[0x100:0x105] = b"\xe8\x00\x00\x00\x00"  # call rel32; returns to +0x105
    code[0x200:0x202] = b"\xff\xd0"  # call rax; returns to +0x202
    code[0x300:0x306] = b"\xff\x15\x00\x00\x00\x00"  # call [rip+x]; returns to +0x306
    code[0x3FF] = 0xCC  # padding before a function starting at +0x400
    app = (start, start + 0x1000, False, bytes(code))
    libc_leaf = LIBC[0] + 0x500
    sp = 0x7FFD00001000
    records = [
        sample(1, 0, [libc_leaf], regs=(0, sp), stack=[start + 0x400, start + 0x105]),
        sample(1, 0, [libc_leaf], regs=(0, sp), stack=[start + 0x202]),
        sample(1, 0, [libc_leaf], regs=(0, sp), stack=[start + 0x306]),
        sample(1, 0, [libc_leaf], regs=(0, sp), stack=[start + 0x400]),
    ]
    data, tail, head = ring_with(records, 4096, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head, code_ranges=[LIBC, app])
    assert stacks == [(libc_leaf, start + 0x104), (libc_leaf, start + 0x201),
                      (libc_leaf, start + 0x305), (libc_leaf,)]
    assert_agree(dec, counts, stacks, ref)


def test_scan_goes_on_past_the_caller_when_the_frame_pointer_was_clobbered() -> None:
    libc_leaf = LIBC[0] + 0x500
    first = APP[0] + 0x1234  # __rust_alloc called malloc
    second = APP[0] + 0x2222  # the user's function called __rust_alloc
    sp = 0x7FFD00001000
    clobbered = sample(1, 0, [libc_leaf, 0x9999], regs=(1, sp), stack=[first, 3, second])
    intact = sample(1, 0, [libc_leaf, second + 0x10], regs=(sp + 4096, sp),
                    stack=[first, 3, second])
    data, tail, head = ring_with([clobbered, intact], 2048, 0)
    dec, counts, stacks, ref, _ = decode_both(data, tail, head, code_ranges=CODE_RANGES)
    assert stacks[0] == (libc_leaf, first - 1, second - 1)
    assert stacks[1] == (libc_leaf, first - 1, second + 0x10 - 1)
    assert_agree(dec, counts, stacks, ref)
