"""Stack interning and interval lookup in _unwind.pyx."""

from __future__ import annotations

import bisect
import random

from rsprof import _unwind


def test_equal_stacks_share_an_id_and_different_ones_do_not() -> None:
    table = _unwind.StackTable()
    a = table.intern_list([1, 2, 3])
    b = table.intern_list([1, 2, 4])
    c = table.intern_list([1, 2, 3])
    d = table.intern_list([1, 2])
    e = table.intern_list([])
    assert a == c
    assert len({a, b, d, e}) == 4
    assert table.frames_of(b) == [1, 2, 4]
    assert table.take_new() == [(0, [1, 2, 3]), (1, [1, 2, 4]), (2, [1, 2]), (3, [])]
    assert table.take_new() == []
    assert table.intern_list([9]) == 4
    assert table.take_new() == [(4, [9])]


def test_many_stacks_survive_table_growth() -> None:
    rng = random.Random(5)
    table = _unwind.StackTable(16)
    stacks = {tuple(rng.randrange(1 << 48) for _ in range(rng.randint(1, 40)))
              for _ in range(20000)}
    ids = {s: table.intern_list(s) for s in stacks}
    assert len(set(ids.values())) == len(stacks)
    for s, sid in ids.items():
        assert table.intern_list(s) == sid
        assert tuple(table.frames_of(sid)) == s


def test_hash_collisions_never_merge_stacks() -> None:
    # Same hash is impossible to force cheaply, so check the table compares fully:
    # stacks that differ only in their last frame get different ids.
    table = _unwind.StackTable()
    base = list(range(100))
    ids = {table.intern_list([*base, i]) for i in range(1000)}
    assert len(ids) == 1000
    assert _unwind.hash_stack([1, 2]) != _unwind.hash_stack([2, 1])


def test_interval_lookup_matches_a_linear_scan() -> None:
    rng = random.Random(8)
    starts, ends = [], []
    pos = 0x1000
    for _ in range(500):
        pos += rng.randint(0, 64)
        size = rng.randint(1, 256)
        starts.append(pos)
        ends.append(pos + size)
        pos += size
    order = list(range(len(starts)))
    rng.shuffle(order)
    imap = _unwind.IntervalMap([starts[i] for i in order], [ends[i] for i in order])
    for addr in range(0xF00, pos + 100, 7):
        expected = -1
        k = bisect.bisect_right(starts, addr) - 1
        if k >= 0 and addr < ends[k]:
            expected = order.index(k)
        assert imap.lookup(addr) == expected


def test_interval_end_is_exclusive_and_gaps_miss() -> None:
    imap = _unwind.IntervalMap([100, 300], [200, 400])
    assert imap.lookup(99) == -1
    assert imap.lookup(100) == 0
    assert imap.lookup(199) == 0
    assert imap.lookup(200) == -1  # past the end of the first: not that interval
    assert imap.lookup(300) == 1
    assert imap.lookup_many([150, 250, 399, 400]) == [0, -1, 1, -1]


def test_pack_u32_is_little_endian() -> None:
    assert _unwind.pack_u32([1, 0x01020304]) == b"\x01\0\0\0\x04\x03\x02\x01"
