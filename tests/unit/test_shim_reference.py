"""rsprof.shm_reference on synthetic and random regions: decoding, validation,
and never crashing or hanging on adversarial bytes; rsprof.shim.shim_path."""

from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

import pytest

from rsprof import _ring, shim
from rsprof import shm_reference as ref
from rsprof.errors import RsprofError

RING = 4096


def make_region(ring: int = RING, **fields: int) -> bytearray:
    buf = bytearray(ref.HEADER_BYTES + ring)
    values = {"magic": ref.MAGIC, "version": ref.VERSION, "header_bytes": ref.HEADER_BYTES,
              "ring_size": ring, "pid": 1234, "max_frames": ref.MAX_FRAMES,
              "state": ref.STATE_RECORDING, **fields}
    for name, value in values.items():
        if name in ref._Q:
            struct.pack_into("<Q", buf, 8 * ref._Q[name], value)
        else:
            struct.pack_into("<I", buf, 4 * ref._I[name], value)
    return buf


class Writer:
    """Appends records to a region the way the shim does (wrapping at the end)."""

    def __init__(self, buf: bytearray, ring: int = RING, start: int = 0) -> None:
        self.buf, self.ring, self.pos = buf, ring, start
        struct.pack_into("<QQ", buf, 8 * ref._Q["tail"], start, 0)
        struct.pack_into("<Q", buf, 8 * ref._Q["reserve"], start)

    def put(self, rtype: int, body: bytes, size: int | None = None) -> None:
        word = (rtype << _ring.REC_TYPE_SHIFT) | (size if size is not None else len(body) + 8)
        self.raw(struct.pack("<Q", word) + body)

    def raw(self, rec: bytes) -> None:
        for i, b in enumerate(rec):
            self.buf[ref.HEADER_BYTES + (self.pos + i) % self.ring] = b
        self.pos += len(rec)
        struct.pack_into("<Q", self.buf, 8 * ref._Q["reserve"], self.pos)

    def stack(self, sid: int, frames: list[int]) -> None:
        self.put(ref.REC_STACK, struct.pack(f"<II{len(frames)}Q", sid, len(frames), *frames))

    def alloc(self, ptr: int, size: int, sid: int) -> None:
        word = ((ref.REC_ALLOC << _ring.REC_TYPE_SHIFT) | (sid << _ring.ALLOC_SIZE_BITS)
                | size)
        self.raw(struct.pack("<QQ", word, ptr))

    def free(self, ptr: int) -> None:
        self.raw(struct.pack("<Q", (ref.REC_FREE << _ring.REC_TYPE_SHIFT) | ptr))


def test_every_record_type_round_trips_across_the_wrap() -> None:
    buf = make_region()
    w = Writer(buf, start=3 * RING - 64)  # a later lap; the records straddle the ring end
    w.put(ref.REC_PAD, bytes(8))
    w.stack(3, [0x401000, 0x401100, 0x7F0000001234])
    w.alloc(0x5000, 48, 3)
    w.put(ref.REC_ALLOC_RAW, struct.pack("<QQII2Q", 0x6000, 8, 2, 0, 0x401010, 0x401020))
    w.put(ref.REC_ALLOC_BIG, struct.pack("<IIQQ", 3, 0, 0x7000, 1 << 40))
    w.free(0x5000)
    w.put(ref.REC_SAMPLE, struct.pack("<IIQQ1Q", 11, 1, 77, 4_004_000, 0x401234))
    w.put(ref.REC_THREAD, struct.pack("<II16s", 11, 0, b"worker-1"))
    reader = ref.ShmReader.from_buffer(buf)
    got = reader.drain()
    assert got == [ref.StackRecord(3, (0x401000, 0x401100, 0x7F0000001234)),
                   ref.AllocRecord(0x5000, 48, 3),
                   ref.AllocRawRecord(0x6000, 8, (0x401010, 0x401020)),
                   ref.AllocRecord(0x7000, 1 << 40, 3),
                   ref.FreeRecord(0x5000),
                   ref.SampleRecord(11, 77, (0x401234,), 4_004_000),
                   ref.ThreadRecord(11, "worker-1")]
    hdr = reader.header()
    assert hdr["tail"] == w.pos and reader.counters.pads == 1 and w.pos > 3 * RING
    assert reader.counters.malformed == 0
    assert not any(buf[ref.HEADER_BYTES:])  # consumed bytes are zeroed
    assert hdr["heartbeat_ns"] > 0
    assert reader.drain() == []


def test_uncommitted_record_stops_the_drain() -> None:
    buf = make_region()
    w = Writer(buf)
    w.free(1)
    w.free(2)
    struct.pack_into("<Q", buf, 8 * ref._Q["reserve"], w.pos + 16)  # reserved, word still 0
    reader = ref.ShmReader.from_buffer(buf)
    assert reader.drain() == [ref.FreeRecord(1), ref.FreeRecord(2)]
    assert reader.header()["tail"] == w.pos
    w.free(3)
    assert reader.drain() == [ref.FreeRecord(3)]


@pytest.mark.parametrize("size", [0, 4, 12, 8 * 1024 * 1024])
def test_bad_record_size_skips_to_reserve(size: int) -> None:
    buf = make_region()
    w = Writer(buf)
    w.free(1)
    w.put(ref.REC_STACK, struct.pack("<Q", 2), size=size)
    w.free(3)
    reader = ref.ShmReader.from_buffer(buf)
    assert reader.drain() == [ref.FreeRecord(1)]
    assert reader.counters.malformed == 1
    assert reader.header()["tail"] == w.pos
    assert not any(buf[ref.HEADER_BYTES:])


def test_bad_record_contents_skip_only_that_record() -> None:
    buf = make_region()
    w = Writer(buf)
    w.put(ref.REC_STACK, struct.pack("<II", 1, 5))  # depth 5, no frames
    w.put(ref.REC_STACK, struct.pack("<II65Q", 1, 65, *range(65)))  # deeper than max_frames
    w.put(13, bytes(8))  # unknown type
    w.put(ref.REC_ALLOC_BIG, bytes(16))  # a big alloc of the wrong size
    w.free(4)
    reader = ref.ShmReader.from_buffer(buf)
    assert reader.drain() == [ref.FreeRecord(4)]
    assert reader.counters.malformed == 4


@pytest.mark.parametrize("fields", [{"magic": 1}, {"version": 99}, {"header_bytes": 4000},
                                    {"ring_size": 3000}, {"ring_size": 8192},
                                    {"ring_size": 0}, {"max_frames": 1 << 20}])
def test_bad_headers_are_refused(fields: dict[str, int]) -> None:
    with pytest.raises(ref.RegionError):
        ref.ShmReader.from_buffer(make_region(**fields))


def test_expected_pid_is_checked() -> None:
    with pytest.raises(ref.RegionError, match="pid"):
        ref.ShmReader(make_region(), expected_pid=99)


@pytest.mark.parametrize(("tail", "reserve"), [(8, 0), (3, 16), (0, 1 << 40), (1 << 63, 5)])
def test_garbage_positions_never_loop(tail: int, reserve: int) -> None:
    buf = make_region(tail=tail, reserve=reserve)
    buf[ref.HEADER_BYTES:] = b"\x11" * RING
    reader = ref.ShmReader.from_buffer(buf)
    assert reader.drain() == []
    assert reader.counters.malformed == 1
    assert bytes(buf[ref.HEADER_BYTES:]) == bytes(RING)  # the garbage is skipped, zeroed
    if reserve < tail:
        # Nothing to resynchronize to: every drain refuses again, and terminates.
        assert reader.drain() == []
        assert reader.counters.malformed == 2
        return
    # Resynchronized at what the writer reserved: its next record is read.
    pos = reserve & ~7
    assert reader.header()["tail"] == pos
    struct.pack_into("<Q", buf, ref.HEADER_BYTES + pos % RING,
                     (ref.REC_FREE << _ring.REC_TYPE_SHIFT) | 0x1000)
    struct.pack_into("<Q", buf, 8 * ref._Q["reserve"], pos + 8)
    assert reader.drain() == [ref.FreeRecord(0x1000)]
    assert reader.counters.malformed == 1


def test_fuzz_random_regions_never_crash_or_hang() -> None:
    rng = random.Random(1234)
    types = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15]
    for _ in range(400):
        ring = rng.choice([4096, 8192])
        buf = make_region(ring, max_frames=rng.choice([0, 1, 64, 1024]))
        mode = rng.random()
        if mode < 0.3:
            buf[ref.HEADER_BYTES:] = rng.randbytes(ring)
        else:  # plausible framing with hostile sizes and contents
            pos = 0
            while pos < ring - 64:
                rtype = rng.choice(types)
                size = rng.choice([8, 16, 24, 32, 40, 48, 56, 528, rng.randrange(0, 1 << 32)])
                word = ((rtype << _ring.REC_TYPE_SHIFT) | size) & ((1 << 64) - 1)
                struct.pack_into("<Q", buf, ref.HEADER_BYTES + pos, word)
                body = rng.randbytes(min(max(size, 8), ring) - 8)
                end = min(ref.HEADER_BYTES + pos + 8 + len(body), len(buf))
                buf[ref.HEADER_BYTES + pos + 8:end] = body[:end - ref.HEADER_BYTES - pos - 8]
                pos += max(8, (size % 256) & ~7)
        tail = rng.choice([0, 8, rng.randrange(0, 1 << 64) & ~7, rng.randrange(0, 1 << 64)])
        reserve = rng.choice([tail + ring, tail + rng.randrange(0, 2 * ring), 0,
                              rng.randrange(0, 1 << 64)]) & ((1 << 64) - 1)
        struct.pack_into("<QQ", buf, 8 * ref._Q["reserve"], reserve, 0)
        struct.pack_into("<Q", buf, 8 * ref._Q["tail"], tail)
        tail0 = tail
        reader = ref.ShmReader.from_buffer(buf)
        records = reader.drain()
        assert len(records) <= ring // 8  # at most one ring per drain
        tail = reader.header()["tail"]
        if tail0 <= reserve:
            assert tail0 <= tail <= reserve or tail == reserve & ~7, (tail0, tail, reserve)
            # every byte passed over is zeroed: a zero word is what "not committed" means
            passed = min(tail - tail0, ring) if tail > tail0 else 0
            data = bytes(buf[ref.HEADER_BYTES:]) * 2
            start = tail0 % ring
            assert data[start:start + passed] == bytes(passed), (tail0, tail, reserve)
        else:
            assert tail == tail0  # garbage positions: never moved backwards or anywhere
        consumed = bytes(buf[ref.HEADER_BYTES:])
        for _ in range(2):
            # Nothing new was written: nothing is decoded again.
            assert reader.drain() == []
            if reserve & 7 == 0:  # (an odd reserve is re-refused once, then settles)
                assert reader.header()["tail"] == tail  # and nothing moves
                assert bytes(buf[ref.HEADER_BYTES:]) == consumed
        settled = reader.header()["tail"]
        assert reader.drain() == [] and reader.header()["tail"] == settled


def test_fuzz_random_headers_only_raise_region_error() -> None:
    rng = random.Random(99)
    for _ in range(500):
        buf = make_region()
        start = rng.randrange(0, ref.HEADER_SIZE)
        buf[start:start + rng.randrange(1, 16)] = rng.randbytes(16)[:1]
        if rng.random() < 0.5:
            buf[:ref.HEADER_SIZE] = rng.randbytes(ref.HEADER_SIZE)
        try:
            reader = ref.ShmReader.from_buffer(buf)
        except ref.RegionError:
            continue
        reader.drain()


def test_create_attach_detach_unlink_on_dev_shm() -> None:
    if not ref.SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    reader = ref.ShmReader.create(pid=4321, ring_size=1 << 16)
    assert reader.name is not None
    path = ref.region_path(reader.name)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        h = reader.header()
        assert h["state"] == ref.STATE_RECORDING and h["reader_pid"] == os.getpid()
        assert h["session"] == 1 and h["pid"] == 4321 and h["ring_size"] == 1 << 16
        assert reader.name in ref.ShmReader.find(4321)
        other = ref.ShmReader.attach(reader.name, expected_pid=4321)
        assert other.session == 2 and other.state == ref.STATE_RECORDING
        other.detach()
        assert reader.state == ref.STATE_IDLE and reader.header()["reader_pid"] == 0
        other.close()
        with pytest.raises(ref.RegionError):
            ref.ShmReader.attach(reader.name, expected_pid=1)
    finally:
        reader.unlink()
        reader.close()
    assert not path.exists()
    with pytest.raises(ref.RegionError):
        ref.ShmReader.open(reader.name)
    with pytest.raises(ref.RegionError):
        ref.region_path("../etc/passwd")


def test_shim_path_found_or_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shim, "__file__", str(tmp_path / "rsprof" / "shim.py"))
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)
    with pytest.raises(RsprofError, match=r"librsprof_shim\.so is missing"):
        shim.shim_path()
    bundle = tmp_path / "bundle"
    (bundle / "rsprof").mkdir(parents=True)
    (bundle / "rsprof" / shim.SHIM_NAME).write_bytes(b"\x7fELF")
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    assert shim.shim_path() == bundle / "rsprof" / shim.SHIM_NAME
    (tmp_path / "rsprof").mkdir()
    (tmp_path / "rsprof" / shim.SHIM_NAME).write_bytes(b"\x7fELF")
    assert shim.shim_path() == tmp_path / "rsprof" / shim.SHIM_NAME
