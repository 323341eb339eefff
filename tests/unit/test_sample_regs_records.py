"""SAMPLE_REGS records (a self-sample with the interrupted registers and a copy of
the stack, csrc/rsprof_shm.h) decoded by _ring and by rsprof.shm_reference from the
same bytes: valid ones the same way, malformed ones counted the same way."""

from __future__ import annotations

import os
import struct
import tempfile
from collections import Counter
from collections.abc import Sequence

import pytest

from rsprof import _ring, _unwind
from rsprof import shm_reference as ref
from tests.unit.heap_records import free, header, sample
from tests.unit.test_shim_reference import Writer, make_region

FIXED = 64  # header, tid, depth, time_ns, period_ns, ip, sp, fp, stack_bytes
MAX_STACK = _ring.SAMPLER_MAX_STACK_BYTES
LEAF, RET1, RET2 = 0x555500001234, 0x555500002005, 0x555500003009


def sample_regs(tid: int, t: int, frames: list[int], *, ip: int | None = None,
                sp: int = 0x7FFC00001000, fp: int = 0x7FFC00001040, stack: bytes = b"",
                asked: int | None = None, period: int = 1_001_000,
                depth: int | None = None, stack_bytes: int | None = None,
                size: int | None = None) -> bytes:
    """The record as the shim writes it: fixed part, frames, then a stack area of
    `asked` bytes (default: len(stack) rounded up to 8) whose first len(stack) bytes
    are `stack`. depth / stack_bytes / size override the true values (malformed)."""
    if asked is None:
        asked = (len(stack) + 7) & ~7
    body = (struct.pack("<IIQQQQQQ", tid, len(frames) if depth is None else depth, t, period,
                        frames[0] if ip is None and frames else (ip or 0), sp, fp,
                        len(stack) if stack_bytes is None else stack_bytes)
            + b"".join(struct.pack("<Q", f) for f in frames)
            + stack.ljust(asked, b"\0"))
    rsize = 8 + len(body) if size is None else size
    return (header(_ring.REC_SAMPLE_REGS, rsize) + body)[:max(rsize, 8)].ljust(rsize, b"\0")


def stack_bytes_for(sp: int, fp: int, ret: int, n: int = 256) -> bytes:
    """n bytes of a stack at sp holding the frame record (saved fp, ret) at fp."""
    buf = bytearray(os.urandom(n))
    struct.pack_into("<QQ", buf, fp - sp, fp + 0x100, ret)
    return bytes(buf)


def decoders() -> tuple[_ring.HeapDecoder, _ring.PerfDecoder, _unwind.StackTable]:
    table = _unwind.StackTable()
    heap = _ring.HeapDecoder(table)
    cpu = _ring.PerfDecoder(table, 1234, 0, 1_000_000_000)
    heap.cpu = cpu
    return heap, cpu, table


def reference_records(stream: bytes) -> tuple[list[ref.Record], ref.ShmReader]:
    ring = 1 << 18
    buf = make_region(ring)
    w = Writer(buf, ring=ring, start=ring - 40)  # the first record wraps the ring's end
    w.raw(stream)
    reader = ref.ShmReader.from_buffer(buf)
    return reader.drain(), reader


def counted(cpu: _ring.PerfDecoder, table: _unwind.StackTable) -> Counter[tuple[object, ...]]:
    """(tid, frames) -> (samples, ns) as the PerfDecoder counted them."""
    frames = dict(table.take_new())
    out: Counter[tuple[object, ...]] = Counter()
    for _, tid, sid, n, ns in cpu.take_counts():
        out[(tid, tuple(frames[sid]))] += n
        out[("ns", tid)] += ns
    return out


def fp_stack(frames: tuple[int, ...]) -> tuple[int, ...]:
    """What a sample's FP frames count as: the IP, then each return address - 1, up
    to the first impossible return address (the chain is cut there)."""
    kept = list(frames[:1])
    for f in frames[1:]:
        if f < 4096 or f > 0x00FFFFFFFFFFFFFF:
            break
        kept.append(f - 1)
    return tuple(kept)


def expected(records: Sequence[ref.Record]) -> Counter[tuple[object, ...]]:
    """(tid, frames) -> samples, ("ns", tid) -> ns, as _self_sample counts them."""
    out: Counter[tuple[object, ...]] = Counter()
    for r in records:
        if isinstance(r, (ref.SampleRegsRecord, ref.SampleRecord)) and r.frames:
            out[(r.tid, fp_stack(r.frames))] += 1
            out[("ns", r.tid)] += r.period_ns
    return out


def test_reference_decodes_every_field_across_the_wrap() -> None:
    sp, fp = 0x7FFC00001000, 0x7FFC00001040
    stack = stack_bytes_for(sp, fp, RET1, 200)
    rec = sample_regs(7, 1_500, [LEAF, RET1, RET2], sp=sp, fp=fp, stack=stack, asked=4096,
                      period=4_004_000)
    assert len(rec) == FIXED + 8 * 3 + 4096
    got, reader = reference_records(rec + free(0x10))
    assert got == [ref.SampleRegsRecord(7, 1_500, 4_004_000, (LEAF, RET1, RET2), LEAF, sp, fp,
                                        stack), ref.FreeRecord(0x10)]
    assert reader.counters.malformed == 0
    # What the integration test checks on real records: the return address is in the copy.
    r = got[0]
    assert isinstance(r, ref.SampleRegsRecord)
    assert struct.unpack_from("<Q", r.stack, r.fp - r.sp + 8)[0] == r.frames[1]


def test_ring_counts_sample_regs_from_their_frame_pointer_frames() -> None:
    heap, cpu, table = decoders()
    stream = (sample_regs(7, 1_500_000_000, [LEAF, RET1], stack=bytes(range(64)), asked=128)
              + sample_regs(7, 1_600_000_000, [LEAF, RET1], period=3_003_000)
              + sample_regs(8, 2_500_000_000, [LEAF], stack=b"\x01" * 24)
              + sample(8, 2_600_000_000, [LEAF, RET2]))  # plain SAMPLEs still count
    assert heap.feed_bytes(stream) == len(stream)
    assert heap.self_samples == 4 and heap.malformed == 0
    assert cpu.samples == 4 and cpu.malformed == 0
    got = counted(cpu, table)
    assert got == Counter({(7, (LEAF, RET1 - 1)): 2, (8, (LEAF,)): 1, (8, (LEAF, RET2 - 1)): 1,
                           ("ns", 7): 4_004_000, ("ns", 8): 5_005_000})
    refs, _ = reference_records(stream)
    assert got == expected(refs)


def test_a_sample_without_frames_counts_as_the_plain_sample_does() -> None:
    heap, cpu, _ = decoders()
    heap.feed_bytes(sample_regs(7, 1, [], ip=LEAF, stack=b"\x02" * 8))
    assert heap.self_samples == 1 and heap.malformed == 0
    assert cpu.samples == 0 and cpu.malformed == 1  # as _self_sample does for a SAMPLE


def test_without_a_cpu_decoder_they_are_only_counted() -> None:
    heap = _ring.HeapDecoder(_unwind.StackTable())
    heap.feed_bytes(sample_regs(7, 1, [LEAF], stack=b"\x03" * 16))
    assert heap.self_samples == 1 and heap.malformed == 0


def test_largest_record_is_accepted_and_one_byte_more_of_stack_is_not() -> None:
    biggest = sample_regs(9, 5, [LEAF] * 1024, stack=b"\x04" * MAX_STACK)
    assert len(biggest) == FIXED + 8 * 1024 + MAX_STACK
    too_big = sample_regs(9, 6, [LEAF], stack=b"\x05" * 16, asked=MAX_STACK + 8)
    for stream, ok in ((biggest, 1), (too_big, 0)):
        heap, cpu, _ = decoders()
        assert heap.feed_bytes(stream) == len(stream)
        assert (heap.self_samples, heap.malformed) == (ok, 1 - ok)
        assert cpu.samples == ok
        refs, reader = reference_records(stream)
        assert len(refs) == ok and reader.counters.malformed == 1 - ok
    refs, _ = reference_records(biggest)
    r = refs[0]
    assert isinstance(r, ref.SampleRegsRecord) and r.stack == b"\x04" * MAX_STACK


MALFORMED = {
    "shorter than the fixed part": sample_regs(7, 1, [LEAF], size=56),
    "depth past the record": sample_regs(7, 1, [LEAF, RET1], depth=3),
    "depth past the area too": sample_regs(7, 1, [LEAF], stack=b"\x06" * 64, depth=20),
    "depth above 1024": sample_regs(7, 1, [LEAF] * 1025, stack=b"\x07" * 8),
    "huge depth": sample_regs(7, 1, [LEAF], depth=0xFFFFFFFF),
    "more stack than the area": sample_regs(7, 1, [LEAF], stack=b"\x08" * 16, stack_bytes=24),
    "stack bytes wrapping": sample_regs(7, 1, [LEAF], stack=b"\x09" * 16,
                                        stack_bytes=(1 << 64) - 8),
    "period above a minute": sample_regs(7, 1, [LEAF], stack=b"\x0a" * 8,
                                         period=_ring.SHM_MAX_SAMPLE_PERIOD + 1),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_records_are_counted_alike_and_skipped(name: str) -> None:
    bad = MALFORMED[name]
    good = sample_regs(11, 2, [LEAF, RET2], stack=b"\x0b" * 32)
    stream = good + bad + good
    heap, cpu, table = decoders()
    assert heap.feed_bytes(stream) == len(stream)  # the bad record only, never the framing
    assert heap.malformed == 1 and heap.self_samples == 2
    refs, reader = reference_records(stream)
    assert reader.counters.malformed == 1
    assert [type(r) for r in refs] == [ref.SampleRegsRecord] * 2
    assert counted(cpu, table) == expected(refs)


def test_random_fields_decode_alike() -> None:
    """Records with random depth/stack_bytes/period around the limits: both readers
    take the same ones, and count the same stacks from them."""
    import random

    rng = random.Random(5)
    stream = b""
    for i in range(300):
        frames = [rng.choice([LEAF, RET1, RET2, 5, 1 << 60]) for _ in range(rng.randrange(0, 6))]
        stack = rng.randbytes(rng.choice([0, 8, 13, 40]))
        stream += sample_regs(
            100 + i % 3, i, frames, stack=stack, asked=rng.choice([None, 64, 72]),
            depth=rng.choice([None, None, len(frames) + 1, max(len(frames) - 1, 0)]),
            stack_bytes=rng.choice([None, None, 64, 65, 72, 80]),
            period=rng.choice([1, 1_001_000, _ring.SHM_MAX_SAMPLE_PERIOD,
                               _ring.SHM_MAX_SAMPLE_PERIOD + 1]))
    heap, cpu, table = decoders()
    assert heap.feed_bytes(stream) == len(stream)
    refs, reader = reference_records(stream)
    assert heap.malformed == reader.counters.malformed > 0
    assert heap.self_samples == len(refs) > 0
    # _self_sample cuts a chain at an impossible return address (5, 1 << 60): so does
    # expected(), while the reference keeps the raw frames.
    assert any(fp_stack(r.frames) != tuple(r.frames[:1]) + tuple(f - 1 for f in r.frames[1:])
               for r in refs if isinstance(r, ref.SampleRegsRecord))
    assert counted(cpu, table) == expected(refs)


def test_ring_drains_a_wrapped_sample_regs_bigger_than_any_older_record() -> None:
    ring_size = 1 << 17
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        length = _ring.init_region(fd, ring_size, os.getpid(), _ring.STATE_IDLE, 99, False,
                                   16384)
        ring = _ring.ShmRing(fd, length)
        assert ring.sampler_stack_bytes == 16384
        ring.attach(os.getpid(), 99, 32768)
        assert ring.sampler_stack_bytes == 32768
        rec = sample_regs(7, 1, [LEAF, RET1], stack=os.urandom(30000), asked=32768)
        start = ring_size - 1000  # wraps the end: decoded from the scratch copy
        os.pwrite(fd, struct.pack("<Q", start), 80)  # tail
        data = rec + free(0x10)
        first = ring_size - start
        os.pwrite(fd, data[:first], _ring.SHM_HEADER_BYTES + start)
        os.pwrite(fd, data[first:], _ring.SHM_HEADER_BYTES)
        os.pwrite(fd, struct.pack("<Q", start + len(data)), 32)  # reserve
        heap, cpu, table = decoders()
        assert ring.drain(heap) == len(data)
        assert ring.malformed == 0 and heap.malformed == 0
        assert heap.self_samples == 1 and heap.unknown_frees == 1
        assert counted(cpu, table) == Counter({(7, (LEAF, RET1 - 1)): 1, ("ns", 7): 1_001_000})
        ring.detach()
        assert ring.sampler_stack_bytes == 0
        ring.close()
    finally:
        os.close(fd)


def test_header_field_is_where_both_readers_put_it() -> None:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        length = _ring.init_region(fd, 4096, 77, _ring.STATE_IDLE, sampler_stack_bytes=8192)
        raw = os.pread(fd, ref.HEADER_SIZE, 0)
        assert struct.unpack_from("<I", raw, 120)[0] == 8192  # its offset in rsprof_shm.h
        buf = bytearray(os.pread(fd, length, 0))
        reader = ref.ShmReader.from_buffer(buf)
        assert reader.header()["sampler_stack_bytes"] == 8192
        assert reader.header()["start_gate"] == 0 and reader.header()["reserved0"] == 0
    finally:
        os.close(fd)
    assert ref.VERSION == _ring.SHM_VERSION == 6
    assert ref.HEADER_SIZE == 200
