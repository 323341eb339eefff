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
    assert table.intern_list([1, 2]) != table.intern_list([2, 1])


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


def test_trie_ids_and_frames_match_a_flat_table() -> None:
    # Shared outer frames, a stack that is a suffix of another, the empty stack,
    # repeats: ids are dense in first-intern order and frames come back exactly.
    rng = random.Random(21)
    outer = [0x7000 + i for i in range(10)]
    stacks: list[list[int]] = [[], [1], [1, 2], [2, 1], outer, [5, *outer], [6, *outer],
                               [5, 6, *outer], outer[3:], []]
    stacks += [[rng.randrange(1, 8) for _ in range(rng.randint(0, 4))] + outer[rng.randint(0, 9):]
               for _ in range(300)]
    stacks += stacks[:50]  # equal stacks again
    table = _unwind.StackTable(16)
    flat: dict[tuple[int, ...], int] = {}
    for s in stacks:
        assert table.intern_list(s) == flat.setdefault(tuple(s), len(flat))
    assert len(table) == len(flat)
    for s, sid in flat.items():
        assert tuple(table.frames_of(sid)) == s
    # One node per distinct stack suffix read from the outside in, plus the root.
    suffixes = {tuple(s[i:]) for s in flat for i in range(len(s))}
    assert table.node_count == len(suffixes) + 1


def test_take_new_hands_out_stacks_in_id_order_up_to_a_limit() -> None:
    table = _unwind.StackTable()
    stacks = [[i, 100, 200] for i in range(10)]
    for s in stacks:
        table.intern_list(s)
    assert table.take_new(4) == [(i, stacks[i]) for i in range(4)]
    table.intern_list([100, 200])  # new: a stack ending at an inner node of the others
    assert table.take_new(5) == [(i, stacks[i]) for i in range(4, 9)]
    assert table.take_new() == [(9, stacks[9]), (10, [100, 200])]
    assert table.take_new() == []


def test_a_node_becomes_a_stack_only_when_asked() -> None:
    table = _unwind.StackTable()
    a = table.add_child(0, 0x500)  # the stack [0x500]
    b = table.add_child(a, 0x400)  # [0x400, 0x500]
    assert table.add_child(0, 0x500) == a and a not in (0, b)
    assert len(table) == 0 and table.node_count == 3
    assert table.stack_of(b) == 0 and table.stack_of(b) == 0
    assert table.intern_list([0x500]) == 1 and table.stack_of(a) == 1
    assert table.stack_of(0) == 2 and table.frames_of(2) == []  # the root: the empty stack
    assert table.take_new() == [(0, [0x400, 0x500]), (1, [0x500]), (2, [])]
    for bad in (lambda: table.add_child(3, 1), lambda: table.stack_of(3),
                lambda: table.frames_of(3)):
        try:
            bad()
        except IndexError:
            pass
        else:
            raise AssertionError("an unknown node or stack was accepted")


def test_stacks_sharing_outer_frames_share_memory() -> None:
    # 100k stacks of 30 frames, the outer 28 shared: a flat table holds every
    # frame of every stack (100k * 30 * 8 bytes = 24 MB at least); the trie holds
    # a node per distinct suffix (about 100k) and a node and depth per stack.
    n, depth = 100_000, 30
    prefix = [0x555500100000 + 0x40 * i for i in range(depth - 2)]
    table = _unwind.StackTable()
    for k in range(n):
        table.intern_list([0x555500900000 + k, 0x555500A00000 + k // 1000, *prefix])
    assert len(table) == n
    assert table.node_count == 1 + len(prefix) + 100 + n
    assert table.frames_of(n - 1)[2:] == prefix
    flat_bound = n * depth * 8
    assert table.memory_bytes < flat_bound // 4, table.memory_bytes
