"""_ring.HeapDecoder and _ring.ShmRing on synthetic records and regions."""

from __future__ import annotations

import os
import random
import struct
import tempfile

from rsprof import _ring, _unwind
from tests.unit.heap_records import alloc, alloc_big, alloc_raw, free, node, pad, stack, thread

A = [0x555500001005, 0x555500002009]  # return addresses of site A
B = [0x555500003011, 0x555500002009]


def decoder() -> tuple[_ring.HeapDecoder, _unwind.StackTable]:
    table = _unwind.StackTable()
    return _ring.HeapDecoder(table), table


def sites(dec: _ring.HeapDecoder) -> dict[int, tuple[int, ...]]:
    return {row[0]: row[1:] for row in dec.take_changed()}


def test_exact_accounting_per_site() -> None:
    dec, table = decoder()
    stream = (stack(0, A) + stack(1, B)
              + alloc(0x1000, 100, 0) + alloc(0x2000, 50, 0) + alloc(0x3000, 7, 1)
              + free(0x1000) + free(0x3000) + alloc(0x1000, 30, 1) + pad(24))
    assert dec.feed_bytes(stream) == len(stream)
    got = sites(dec)
    new = dict(table.take_new())
    # Stacks are stored as lookup addresses: return address minus one.
    assert new == {0: [a - 1 for a in A], 1: [b - 1 for b in B]}
    # (allocs, alloc_bytes, frees, free_bytes, live_bytes, peak_live_bytes)
    assert got[0] == (2, 150, 1, 100, 50, 150)
    assert got[1] == (2, 37, 1, 7, 30, 30)
    assert dec.total_live_bytes == 80
    assert dec.peak_total_live_bytes == 157
    assert dec.live_allocations == 2
    assert dec.unknown_frees == 0 and dec.malformed == 0
    assert dec.take_changed() == []  # only changes since the last call
    dec.feed_bytes(free(0x2000))
    assert sites(dec) == {0: (2, 150, 2, 150, 0, 150)}


def test_stack_ids_stay_mapped_when_the_id_table_grows() -> None:
    # The shim numbers its stacks 1, 2, 3, ...; the decoder's id table starts small
    # and grows. Growing once zeroed every mapping made before it: all later
    # allocations of those stacks were charged to the reader's stack 0.
    dec, table = decoder()
    n = 5000  # several doublings of the table
    stream = b"".join(stack(i, [0x555500001005 + 16 * i, 0x555500002009])
                      for i in range(1, n + 1))
    stream += b"".join(alloc(0x10000 + 64 * i, 8 + i % 7, i) for i in range(1, n + 1))
    dec.feed_bytes(stream)
    new = dict(table.take_new())
    got = sites(dec)
    assert dec.unknown_stack_allocs == 0
    assert len(got) == n  # one site per stack, none merged
    for sid, totals in got.items():
        shim_id = (new[sid][0] + 1 - 0x555500001005) // 16
        assert totals[:2] == (1, 8 + shim_id % 7), (sid, shim_id, totals)


def test_free_of_a_block_from_before_recording_is_counted_apart() -> None:
    dec, _ = decoder()
    dec.feed_bytes(stack(0, A) + free(0xDEAD0) + alloc(0x10, 8, 0))
    assert dec.unknown_frees == 1
    assert sites(dec) == {0: (1, 8, 0, 0, 8, 8)}


def test_alloc_of_a_live_pointer_settles_the_missed_free() -> None:
    dec, _ = decoder()
    dec.feed_bytes(stack(0, A) + alloc(0x10, 8, 0) + alloc(0x10, 16, 0))
    assert dec.replaced_live == 1
    assert sites(dec) == {0: (2, 24, 1, 8, 16, 16)}


def test_raw_stack_allocations_and_unknown_stack_ids() -> None:
    dec, table = decoder()
    dec.feed_bytes(alloc_raw(0x10, 8, A) + stack(0, A) + alloc(0x20, 4, 0) + alloc(0x30, 2, 9))
    got = sites(dec)
    ids = dict(table.take_new())
    site_a = next(k for k, v in ids.items() if v == [a - 1 for a in A])
    assert got[site_a] == (2, 12, 0, 0, 12, 12)
    assert dec.unknown_stack_allocs == 1
    empty = next(k for k, v in ids.items() if v == [])
    assert got[empty] == (1, 2, 0, 0, 2, 2)


def test_thread_names() -> None:
    dec, _ = decoder()
    dec.feed_bytes(thread(42, "worker-1"))
    assert dec.take_threads() == [(42, "worker-1")]


def test_many_allocations_and_frees_stay_exact() -> None:
    rng = random.Random(3)
    dec, _ = decoder()
    live: dict[int, tuple[int, int]] = {}
    expected_live = {0: 0, 1: 0}
    chunks = [stack(0, A), stack(1, B)]
    next_ptr = 0x10000
    for _ in range(50000):
        if live and rng.random() < 0.45:
            ptr = rng.choice(list(live)) if len(live) < 64 else next(iter(live))
            size, site = live.pop(ptr)
            expected_live[site] -= size
            chunks.append(free(ptr))
        else:
            size, site = rng.randint(0, 4096), rng.randint(0, 1)
            live[next_ptr] = (size, site)
            expected_live[site] += size
            chunks.append(alloc(next_ptr, size, site))
            next_ptr += 16
    dec.feed_bytes(b"".join(chunks))
    got = sites(dec)
    assert got[0][4] == expected_live[0] and got[1][4] == expected_live[1]
    assert dec.live_allocations == len(live)


def test_malformed_records_are_counted() -> None:
    dec, _ = decoder()
    shift = _ring.REC_TYPE_SHIFT
    bad_big = struct.pack("<Q", (_ring.REC_ALLOC_BIG << shift) | 48) + bytes(40)
    too_deep = struct.pack("<QII", (_ring.REC_STACK << shift) | 16, 0, 5000)
    unknown = struct.pack("<Q", (13 << shift) | 16) + bytes(8)
    dec.feed_bytes(bad_big + too_deep + unknown)
    assert dec.malformed == 3
    # A variable-size record with bits between type and size set is not a record.
    assert _ring.record_size((_ring.REC_STACK << shift) | (1 << 40) | 16) == 0
    assert dec.feed_bytes(struct.pack("<Q", (_ring.REC_STACK << shift) | (1 << 40) | 16)) == 0
    assert dec.malformed == 4


def test_record_sizes_follow_the_c_header() -> None:
    assert _ring.record_size(struct.unpack("<Q", free(0x1234))[0]) == 8
    assert _ring.record_size(struct.unpack("<Q", alloc(0x10, 5, 1)[:8])[0]) == 16
    assert _ring.record_size(struct.unpack("<Q", alloc_big(0x10, 5, 1)[:8])[0]) == 32


def test_big_allocations_use_the_long_record() -> None:
    dec, _ = decoder()
    dec.feed_bytes(stack(0, A) + alloc_big(0x10, 1 << 40, 0) + free(0x10))
    assert sites(dec) == {0: (1, 1 << 40, 1, 1 << 40, 0, 1 << 40)}


def _region(ring_size: int = 1 << 16) -> tuple[int, int]:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    length = _ring.init_region(fd, ring_size, os.getpid(), _ring.STATE_IDLE)
    return fd, length


def _write(fd: int, pos: int, data: bytes, ring_size: int) -> None:
    for i, b in enumerate(data):
        os.pwrite(fd, bytes([b]), _ring.SHM_HEADER_BYTES + (pos + i) % ring_size)


RESERVE_OFFSET, TAIL_OFFSET = 32, 80


def test_ring_drain_wraps_and_zeroes_what_it_read() -> None:
    ring_size = 4096
    fd, length = _region(ring_size)
    ring = _ring.ShmRing(fd, length)
    ring.attach(os.getpid())
    assert ring.state == _ring.STATE_RECORDING and ring.reader_pid == os.getpid()
    start = 4096 * 3 + 4000  # so the stream wraps around the end of the ring
    stream = stack(0, A) + alloc(0x10, 8, 0) + free(0x10)
    os.pwrite(fd, struct.pack("<Q", start), TAIL_OFFSET)
    _write(fd, start, stream, ring_size)
    os.pwrite(fd, struct.pack("<Q", start + len(stream)), RESERVE_OFFSET)
    dec, _ = decoder()
    assert ring.drain(dec) == len(stream)
    assert sites(dec) == {0: (1, 8, 1, 8, 0, 8)}
    data = os.pread(fd, ring_size, _ring.SHM_HEADER_BYTES)
    assert data == bytes(ring_size)  # consumed records are zeroed for the next lap
    assert struct.unpack("<Q", os.pread(fd, 8, TAIL_OFFSET))[0] == start + len(stream)
    ring.detach()
    assert ring.state == _ring.STATE_IDLE
    os.close(fd)


def test_uncommitted_record_stops_the_drain() -> None:
    fd, length = _region()
    ring = _ring.ShmRing(fd, length)
    stream = stack(0, A) + alloc(0x10, 8, 0)
    _write(fd, 0, stream, 1 << 16)
    os.pwrite(fd, struct.pack("<Q", len(stream) + 16), RESERVE_OFFSET)  # 16 bytes reserved
    dec, _ = decoder()
    assert ring.drain(dec) == len(stream)
    assert ring.drain(dec) == 0
    os.close(fd)


def test_bad_regions_are_refused() -> None:
    fd, length = _region()
    os.pwrite(fd, b"XXXXXXXX", 0)
    try:
        _ring.ShmRing(fd, length)
    except ValueError as exc:
        assert "magic" in str(exc)
    else:
        raise AssertionError("bad magic accepted")
    os.close(fd)
    fd, length = _region()
    os.pwrite(fd, struct.pack("<I", 99), 8)
    try:
        _ring.ShmRing(fd, length)
    except ValueError as exc:
        assert "version" in str(exc)
    else:
        raise AssertionError("bad version accepted")
    os.close(fd)


def test_random_region_contents_never_crash_or_hang() -> None:
    rng = random.Random(11)
    ring_size = 4096
    for _ in range(300):
        fd, length = _region(ring_size)
        ring = _ring.ShmRing(fd, length)
        body = bytes(rng.getrandbits(8) for _ in range(ring_size))
        if rng.random() < 0.5:  # plausible headers among the noise
            records = stack(0, A) + alloc(0x10, 8, 0) + free(0x20)
            body = records + body[len(records):]
        os.pwrite(fd, body, _ring.SHM_HEADER_BYTES)
        os.pwrite(fd, struct.pack("<QQ", rng.getrandbits(64) & ~7, 0), RESERVE_OFFSET)
        os.pwrite(fd, struct.pack("<Q", rng.choice([0, rng.getrandbits(64) & ~7])), TAIL_OFFSET)
        dec, _ = decoder()
        for _ in range(3):
            ring.drain(dec)
        ring.close()
        os.close(fd)


def test_self_sampled_cpu_samples_are_counted_like_perf_samples() -> None:
    from tests.unit.heap_records import sample

    table = _unwind.StackTable()
    heap = _ring.HeapDecoder(table)
    cpu = _ring.PerfDecoder(table, 1234, 1_000_000_000, 1_000_000_000)
    heap.cpu = cpu
    leaf, ret = 0x555500001234, 0x555500002005
    stream = (sample(7, 1_500_000_000, [leaf, ret], 1_001_000)
              + sample(7, 1_600_000_000, [leaf, ret], 4_004_000)
              + sample(8, 2_500_000_000, [leaf]) + sample(8, 2_600_000_000, [])
              # A period longer than a minute is garbage: the record is malformed.
              + sample(8, 2_700_000_000, [leaf], _ring.SHM_MAX_SAMPLE_PERIOD + 1))
    heap.feed_bytes(stream)
    assert heap.self_samples == 4 and heap.malformed == 1
    assert cpu.samples == 3 and cpu.malformed == 1  # a sample without frames
    stacks = dict(table.take_new())
    both = next(k for k, v in stacks.items() if v == [leaf, ret - 1])
    only = next(k for k, v in stacks.items() if v == [leaf])
    # Each sample stands for its own period: the timer's interval times (1 + overruns).
    assert sorted(cpu.take_counts()) == sorted([(0, 7, both, 2, 5_005_000),
                                                (1, 8, only, 1, 4_004_000)])


def test_samples_without_a_cpu_decoder_are_only_counted() -> None:
    from tests.unit.heap_records import sample

    heap, _ = decoder()
    heap.feed_bytes(sample(7, 1, [0x555500001234]))
    assert heap.self_samples == 1 and heap.malformed == 0


def _frames_by_site(dec: _ring.HeapDecoder, table: _unwind.StackTable
                    ) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Site totals keyed by the site's frames (ids differ between decoders)."""
    return {tuple(table.frames_of(sid)): totals for sid, totals in sites(dec).items()}


def test_node_records_decode_like_whole_stacks() -> None:
    # A and B share their outer frame: one node for it, one for each inner frame.
    c = [0x555500004021, *A]  # a stack through A's node
    nodes = (node(1, 0, A[1]) + node(2, 1, A[0]) + node(3, 1, B[0]) + node(4, 2, c[0]))
    allocs = (alloc(0x10, 100, 2) + alloc(0x20, 50, 3) + alloc_big(0x30, 1 << 40, 4)
              + free(0x10) + alloc(0x40, 7, 2) + alloc(0x50, 9, 1))
    by_node, table = decoder()
    by_node.feed_bytes(nodes + allocs)
    by_stack, flat = decoder()
    by_stack.feed_bytes(stack(1, A[1:]) + stack(2, A) + stack(3, B) + stack(4, c) + allocs)
    got = _frames_by_site(by_node, table)
    assert got == _frames_by_site(by_stack, flat)
    assert got[tuple(a - 1 for a in A)] == (2, 107, 1, 100, 7, 100)
    assert set(got) == {tuple(f - 1 for f in s) for s in (A, B, c, A[1:])}
    assert by_node.malformed == 0 and by_node.unknown_stack_allocs == 0
    assert table.node_count == 5  # the root and one per NODE record


def test_nodes_become_stacks_only_when_charged() -> None:
    dec, table = decoder()
    dec.feed_bytes(node(1, 0, A[1]) + node(2, 1, A[0]) + node(3, 1, B[0]))
    assert len(table) == 0  # nothing charged yet: no stack ids
    dec.feed_bytes(alloc(0x10, 8, 3) + alloc(0x20, 8, 3))
    assert table.take_new() == [(0, [b - 1 for b in B])]


def test_a_node_with_an_impossible_return_address_cuts_the_stack() -> None:
    # Like a whole stack with that address: it and every frame outside it are dropped.
    inner, bad, outer = 0x555500001005, 0x10, 0x555500002009
    dec, table = decoder()
    dec.feed_bytes(node(1, 0, outer) + node(2, 1, bad) + node(3, 2, inner)
                   + node(4, 0, 1 << 60) + node(5, 4, inner)
                   + alloc(0x10, 8, 3) + alloc(0x20, 4, 2) + alloc(0x30, 2, 5))
    flat_dec, flat = decoder()
    flat_dec.feed_bytes(stack(3, [inner, bad, outer]) + stack(2, [bad, outer])
                        + stack(5, [inner, 1 << 60]) + alloc(0x10, 8, 3) + alloc(0x20, 4, 2)
                        + alloc(0x30, 2, 5))
    got = _frames_by_site(dec, table)
    assert got == _frames_by_site(flat_dec, flat)
    assert got == {(inner - 1,): (2, 10, 0, 0, 10, 10), (): (1, 4, 0, 0, 4, 4)}
    assert dec.malformed == 0 and dec.unknown_stack_allocs == 0


def test_alloc_naming_the_root_is_the_empty_stack() -> None:
    dec, table = decoder()
    dec.feed_bytes(alloc(0x10, 8, 0))  # the shim's id of an empty stack
    assert dec.unknown_stack_allocs == 0
    assert _frames_by_site(dec, table) == {(): (1, 8, 0, 0, 8, 8)}


def test_malformed_nodes_are_counted_and_ignored() -> None:
    dec, table = decoder()
    deep = b"".join(node(10 + i, 10 + i - 1 if i else 0, 0x555500010005 + 16 * i)
                    for i in range(_ring.SHM_MAX_FRAMES + 1))  # one frame too deep
    bad = (node(2, 1, A[0])                  # parent 1 never announced
           + node(3, 3, A[0])                # its own parent
           + node(4, 5, A[0])                # parent after it
           + node(0, 0, A[0])                # id 0 is the root
           + node(6, 0, A[0], size=32)       # wrong size
           + node(7, 0, A[0], size=16)       # too short
           + node(1 << 31, 0, A[0])          # id out of range
           + node(9, 0, B[0]) + node(8, 9, A[0])  # a known parent after it
           + node(9, 9, A[0]))               # a known node its own parent
    dec.feed_bytes(bad + deep)
    assert dec.malformed == 10
    dec.feed_bytes(node(1, 0, A[1]) + b"".join(alloc(0x100 * i, 8, i) for i in range(1, 8))
                   + alloc(0x1000, 8, 10 + _ring.SHM_MAX_FRAMES))
    assert dec.unknown_stack_allocs == 6 + 1  # all but id 1: never validly announced
    got = _frames_by_site(dec, table)
    assert got[(A[1] - 1,)] == (1, 8, 0, 0, 8, 8) and got[()][0] == 7
    dec.feed_bytes(alloc(0x3000, 8, 9))  # node 9 keeps its first, valid announcement
    assert _frames_by_site(dec, table)[(B[0] - 1,)][0] == 1
    deepest = 10 + _ring.SHM_MAX_FRAMES - 1
    dec.feed_bytes(alloc(0x2000, 8, deepest))
    assert max(len(f) for f in _frames_by_site(dec, table)) == _ring.SHM_MAX_FRAMES


def test_node_ids_stay_mapped_when_the_id_table_grows() -> None:
    # Node ids far past the decoder's first id table: mappings (and stack ids
    # already charged) made before each growth must survive it.
    dec, table = decoder()
    n = 5000
    stream = node(1, 0, 0x555500002009) + node(2, 1, 0x555500001005) + alloc(0x10, 3, 2)
    stream += b"".join(node(i, 1, 0x555500001005 + 16 * i) for i in range(3, n + 1))
    stream += alloc(0x20, 3, 2)
    stream += b"".join(alloc(0x10000 + 64 * i, 8 + i % 7, i) for i in range(3, n + 1))
    dec.feed_bytes(stream)
    assert dec.unknown_stack_allocs == 0 and dec.malformed == 0
    got = _frames_by_site(dec, table)
    assert len(got) == n - 1  # one site per leaf node, none merged
    assert got[(0x555500001004, 0x555500002008)][:2] == (2, 6)
    for i in range(3, n + 1):
        assert got[(0x555500001004 + 16 * i, 0x555500002008)][:2] == (1, 8 + i % 7), i


def test_reference_reader_decodes_nodes_into_whole_stacks() -> None:
    from rsprof import shm_reference as ref

    stream = (node(1, 0, A[1]) + node(2, 1, A[0]) + node(3, 1, B[0])
              + node(5, 4, A[0])                   # unknown parent: malformed
              + node(7, 0, B[1]) + node(6, 7, A[0])  # parent not before it: malformed
              + node(8, 0, A[0], size=32)          # wrong size: malformed
              + alloc(0x10, 8, 3))
    deepest = 20 + _ring.SHM_MAX_FRAMES  # one frame deeper than the region allows
    stream += b"".join(node(i, i - 1 if i > 20 else 0, 0x555500010005 + 16 * i)
                       for i in range(20, deepest + 1))
    fd, length = _region()
    os.pwrite(fd, stream, _ring.SHM_HEADER_BYTES)
    os.pwrite(fd, struct.pack("<Q", len(stream)), RESERVE_OFFSET)
    reader = ref.ShmReader.from_buffer(bytearray(os.pread(fd, length, 0)))
    got = reader.drain()
    assert got[:5] == [ref.StackRecord(1, (A[1],)), ref.StackRecord(2, tuple(A)),
                       ref.StackRecord(3, tuple(B)), ref.StackRecord(7, (B[1],)),
                       ref.AllocRecord(0x10, 8, 3)]
    chain = [0x555500010005 + 16 * i for i in range(deepest - 1, 19, -1)]
    assert got[5:] == [ref.StackRecord(i, tuple(chain[deepest - 1 - i:]))
                       for i in range(20, deepest)]
    assert reader.counters.malformed == 4
    ring = _ring.ShmRing(fd, length)
    dec, table = decoder()
    ring.drain(dec)
    assert dec.malformed == 4
    assert _frames_by_site(dec, table) == {tuple(b - 1 for b in B): (1, 8, 0, 0, 8, 8)}
    ring.close()
    os.close(fd)


def test_changed_sites_taken_in_chunks_each_once() -> None:
    # The recorder takes changed sites a chunk at a time (rsprof/recording/recorder.py,
    # HEAP_ROWS_CHUNK): each changed site comes out exactly once, with its totals, and a
    # site changed again after it was taken comes out again.
    dec, _table = decoder()
    stream = b"".join(node(i + 1, 0, 0x555500001000 + 16 * i) for i in range(10))
    stream += b"".join(alloc(0x10000 + 64 * i, 8 + i, i + 1) for i in range(10))
    dec.feed_bytes(stream)
    assert dec.pending_sites == 10
    first = dec.take_changed(4)
    assert len(first) == 4 and dec.pending_sites == 6
    rest = dec.take_changed(4) + dec.take_changed(4)
    assert dec.pending_sites == 0 and dec.take_changed(4) == []
    rows = first + rest
    assert sorted(r[0] for r in rows) == list(range(10))  # every site once
    assert sorted(r[2] for r in rows) == [8 + i for i in range(10)]  # its bytes
    dec.feed_bytes(free(0x10000))
    assert dec.pending_sites == 1 and dec.take_changed(4)[0][1:] == (1, 8, 1, 8, 0, 8)
