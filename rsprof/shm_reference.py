"""A pure-Python reader of the shim's shared-memory region (csrc/rsprof_shm.h).

Slow and simple on purpose: the reference the Cython reader (`_ring.ShmRing`,
`_ring.HeapDecoder`) is cross-checked against, and the reader the shim's own
tests drain with. It can create a region for `rsprof run`, attach to one a
process made for itself, drain it into decoded records, detach and unlink.

Memory ordering: the writers use acquire/release atomics. Here every shared
header field is read and written through `memoryview.cast("Q"/"I")` items,
which CPython copies with one naturally aligned 4- or 8-byte load or store
(a fixed-size memcpy), so no value is ever torn. On x86-64 (TSO) plain loads
have acquire and plain stores release semantics, and loads are not reordered
with other loads nor stores with other stores, which is all the protocol
needs: load a record's header word, then its body; zero consumed bytes, then
store `tail`. This module is not meant for weakly ordered CPUs.

It also writes and reads the unwind table file the reader publishes for the shim
(`pack_unwind_file`, `unpack_unwind_file`; rsprof_shm.h, "The unwind table"), and
publishes one (`ShmReader.publish_unwind`).

Everything in the region is untrusted: a bad header is refused with
`RegionError`, a bad record is counted in `malformed` and skipped, and
`drain()` always ends (it never reads more than one ring's worth of bytes).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsprof import _ring
from rsprof.errors import RsprofError

SHM_DIR = Path("/dev/shm")
NAME_PREFIX = "rsprof-"
ENV = "RSPROF_SHM"
MAGIC = _ring.SHM_MAGIC
VERSION = _ring.SHM_VERSION
HEADER_BYTES = _ring.SHM_HEADER_BYTES
DEFAULT_RING = 16 << 20
MAX_FRAMES = _ring.SHM_MAX_FRAMES
READER_TIMEOUT_NS = 1_000_000_000

STATE_IDLE = _ring.STATE_IDLE
STATE_RECORDING = _ring.STATE_RECORDING
STATE_STOPPED = _ring.STATE_STOPPED

# Record types come from the C header (through _ring), never retyped here.
REC_PAD = _ring.REC_PAD
REC_STACK = _ring.REC_STACK
REC_ALLOC = _ring.REC_ALLOC
REC_FREE = _ring.REC_FREE
REC_ALLOC_RAW = _ring.REC_ALLOC_RAW
REC_SAMPLE = _ring.REC_SAMPLE
REC_THREAD = _ring.REC_THREAD
REC_ALLOC_BIG = _ring.REC_ALLOC_BIG
REC_NODE = _ring.REC_NODE
REC_SAMPLE_REGS = _ring.REC_SAMPLE_REGS
SAMPLER_MAX_STACK_BYTES = _ring.SAMPLER_MAX_STACK_BYTES
_TYPE_SHIFT = _ring.REC_TYPE_SHIFT
_SIZE_BITS = _ring.ALLOC_SIZE_BITS

# Header field -> index in the u64 view / u32 view (offsets of rsprof_shm_header).
_Q = {"magic": 0, "ring_size": 2, "reserve": 4, "dropped": 5, "waits": 6, "interned": 7,
      "raw_stacks": 8, "truncated": 9, "tail": 10, "heartbeat_ns": 11,
      "unwind_generation": 16}
_I = {"version": 2, "header_bytes": 3, "pid": 6, "max_frames": 7, "reader_pid": 24,
      "state": 25, "session": 26, "reserved0": 27, "sampler_ready": 28,
      "start_gate": 29, "sampler_stack_bytes": 30}
UNWIND_NAME_OFFSET = 136  # char unwind_name[UNWIND_NAME_BYTES], NUL-terminated
UNWIND_NAME_BYTES = _ring.UNWIND_NAME_BYTES
HEADER_SIZE = 200

# The unwind table file (rsprof_shm.h): magic, version, row_bytes, n_rows, reserved;
# then n_rows rows of (start, cfa_off, bp_off, ra_off, kind).
UNWIND_MAGIC = _ring.UNWIND_MAGIC
UNWIND_FILE_HEADER = struct.Struct("<QIIQQ")
UNWIND_ROW = struct.Struct("<QihbB")
# Row kinds by the names _unwind.CfiTable.rows() gives them.
UNWIND_KINDS = {"none": _ring.UNWIND_NONE, "sp": _ring.UNWIND_SP, "bp": _ring.UNWIND_BP,
                "plt11": _ring.UNWIND_PLT11, "plt10": _ring.UNWIND_PLT10,
                "outermost": _ring.UNWIND_OUTERMOST, "unsupported": _ring.UNWIND_UNSUPPORTED}
UnwindRow = tuple[int, int, int, int, int]  # start, kind, cfa_off, bp_off, ra_off
# Largest depth accepted in SAMPLE records (frames[0] is the interrupted IP).
_MAX_SAMPLE_FRAMES = 1024

_RAW = struct.Struct("<QQII")  # ptr, size, depth, reserved
_BIG = struct.Struct("<IIQQ")  # stack_id, reserved, ptr, size
_STACK = struct.Struct("<II")  # stack_id, depth
_NODE = struct.Struct("<IIQ")  # node_id, parent_id, ret
_THREAD = struct.Struct("<II16s")  # tid, reserved, name
_SAMPLE = struct.Struct("<IIQQ")  # tid, depth, time_ns, period_ns
# tid, depth, time_ns, period_ns, ip, sp, fp, stack_bytes (then frames, then the stack area)
_SAMPLE_REGS = struct.Struct("<IIQQQQQQ")


class RegionError(RsprofError):
    """The region is missing or is not a valid rsprof shim region."""


def pack_unwind_file(rows: Sequence[tuple[int, int, int, int | None, int]]) -> bytes:
    """An unwind table file of `rows` (start, kind, cfa_off, bp_off, ra_off), runtime
    addresses; bp_off None (or _ring.UNWIND_BP_SAME) when rbp is unchanged. Rows
    must be sorted by start, strictly increasing (rsprof_shm.h)."""
    out = bytearray(UNWIND_FILE_HEADER.pack(UNWIND_MAGIC, VERSION, UNWIND_ROW.size,
                                            len(rows), 0))
    prev = -1
    for start, kind, cfa_off, bp_off, ra_off in rows:
        if start <= prev:
            raise ValueError(f"unwind rows out of order at {start:#x}")
        prev = start
        out += UNWIND_ROW.pack(start, cfa_off, _ring.UNWIND_BP_SAME if bp_off is None
                               else bp_off, ra_off, kind)
    return bytes(out)


def unpack_unwind_file(data: bytes) -> list[UnwindRow]:
    """The rows of an unwind table file, refused (RegionError) where the shim refuses
    it: bad magic, version or row size, no rows, rows past the end, out of order,
    a file larger than UNWIND_MAX_FILE_BYTES."""
    if not UNWIND_FILE_HEADER.size <= len(data) <= _ring.UNWIND_MAX_FILE_BYTES:
        raise RegionError(f"bad unwind table size {len(data)}")
    magic, version, row_bytes, n, _ = UNWIND_FILE_HEADER.unpack_from(data)
    if magic != UNWIND_MAGIC or version != VERSION or row_bytes != UNWIND_ROW.size:
        raise RegionError("not an unwind table of this layout")
    if n == 0 or n > (len(data) - UNWIND_FILE_HEADER.size) // UNWIND_ROW.size:
        raise RegionError(f"bad row count {n}")
    rows: list[UnwindRow] = []
    for k in range(n):
        start, cfa_off, bp_off, ra_off, kind = UNWIND_ROW.unpack_from(
            data, UNWIND_FILE_HEADER.size + k * UNWIND_ROW.size)
        if rows and start <= rows[-1][0]:
            raise RegionError(f"unwind rows out of order at row {k}")
        rows.append((start, kind, cfa_off, bp_off, ra_off))
    return rows


@dataclass(frozen=True)
class StackRecord:
    """A STACK record, or a NODE record with the frames of its whole stack."""

    stack_id: int
    frames: tuple[int, ...]


@dataclass(frozen=True)
class AllocRecord:
    ptr: int
    size: int
    stack_id: int


@dataclass(frozen=True)
class AllocRawRecord:
    ptr: int
    size: int
    frames: tuple[int, ...]


@dataclass(frozen=True)
class FreeRecord:
    ptr: int


@dataclass(frozen=True)
class SampleRecord:
    tid: int
    time_ns: int
    frames: tuple[int, ...]
    period_ns: int = 0  # the thread CPU time it stands for (interval * (1 + overruns))


@dataclass(frozen=True)
class SampleRegsRecord:
    """A SAMPLE_REGS record: a self-sample with the interrupted registers and the
    bytes of the thread's stack from sp on (as many as were readable)."""

    tid: int
    time_ns: int
    period_ns: int
    frames: tuple[int, ...]  # the frame-pointer walk, frames[0] the interrupted ip
    ip: int
    sp: int
    fp: int
    stack: bytes  # the stack_bytes copied from [sp, sp + len(stack))


@dataclass(frozen=True)
class ThreadRecord:
    tid: int
    name: str


Record = (StackRecord | AllocRecord | AllocRawRecord | FreeRecord | SampleRecord
          | SampleRegsRecord | ThreadRecord)


@dataclass
class Counters:
    """What the reader saw (its own counts, not the shim's)."""

    records: int = 0
    pads: int = 0
    malformed: int = 0
    bytes_consumed: int = 0
    by_type: dict[int, int] = field(default_factory=dict)


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def region_path(name: str) -> Path:
    base = name[1:] if name.startswith("/") else name
    if not base or "/" in base or base in (".", ".."):
        raise RegionError(f"bad shared memory name {name!r}")
    return SHM_DIR / base


class ShmReader:
    """The reader side of one region held in a writable buffer (an mmap, or a
    bytearray in tests). Use `create`, `attach` or `from_buffer`."""

    def __init__(self, buf: mmap.mmap | bytearray, name: str | None = None,
                 expected_pid: int | None = None) -> None:
        self.name = name
        self._buf = buf
        self._view = memoryview(buf)
        if len(self._view) < HEADER_BYTES + 4096:
            self._release()
            raise RegionError("region smaller than a header and a minimal ring")
        self._q = self._view[:HEADER_SIZE].cast("Q")
        self._i = self._view[:HEADER_SIZE].cast("I")
        try:
            self._validate(expected_pid)
        except RegionError:
            self._release()
            raise
        self.ring_size = self._q[_Q["ring_size"]]
        self.mask = self.ring_size - 1
        self.max_frames = self._i[_I["max_frames"]]
        self._data = self._view[HEADER_BYTES:HEADER_BYTES + self.ring_size]
        self._data_q = self._data.cast("Q")
        self.counters = Counters()
        # The stacks of the stack-trie nodes seen (NODE records); 0 is the root.
        self.nodes: dict[int, tuple[int, ...]] = {0: ()}

    # -- construction ----------------------------------------------------------

    @classmethod
    def create(cls, pid: int = 0, ring_size: int = DEFAULT_RING, *,
               state: int = STATE_RECORDING, name: str | None = None) -> ShmReader:
        """A new region for a target about to start (`rsprof run`): header filled,
        this process its reader, heartbeat now, session 1. pid 0 lets the first
        process that maps it claim it."""
        if ring_size < 4096 or ring_size & (ring_size - 1):
            raise RegionError("ring size must be a power of two of at least 4096")
        if name is None:
            name = f"{NAME_PREFIX}{pid or os.getpid()}-{secrets.token_hex(8)}"
        path = region_path(name)
        length = HEADER_BYTES + ring_size
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RegionError(f"cannot create {path}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, length)
            mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.unlink(path)
            raise RegionError(f"cannot set up {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        q = memoryview(mm)[:HEADER_SIZE].cast("Q")
        i = memoryview(mm)[:HEADER_SIZE].cast("I")
        i[_I["version"]] = VERSION
        i[_I["header_bytes"]] = HEADER_BYTES
        q[_Q["ring_size"]] = ring_size
        i[_I["pid"]] = pid
        i[_I["max_frames"]] = MAX_FRAMES
        q[_Q["heartbeat_ns"]] = _monotonic_ns()
        i[_I["reader_pid"]] = os.getpid() if state == STATE_RECORDING else 0
        i[_I["session"]] = 1 if state == STATE_RECORDING else 0
        i[_I["state"]] = state
        q[_Q["magic"]] = MAGIC  # last: a writer that sees the magic sees the rest
        q.release()
        i.release()
        return cls(mm, name)

    @classmethod
    def open(cls, name: str, expected_pid: int | None = None) -> ShmReader:
        """Map an existing region without becoming its reader."""
        path = region_path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise RegionError(f"cannot open {path}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES + 4096 or size > 1 << 40:
                raise RegionError(f"{path}: bad size {size}")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(mm, name.lstrip("/"), expected_pid)

    @classmethod
    def attach(cls, name: str, expected_pid: int | None = None) -> ShmReader:
        """Become the reader of an existing region: new session, heartbeat,
        reader pid, then RECORDING."""
        reader = cls.open(name, expected_pid)
        reader.start()
        return reader

    @classmethod
    def from_buffer(cls, buf: bytearray) -> ShmReader:
        """A reader over region bytes in memory (tests, fuzzing)."""
        return cls(buf)

    @staticmethod
    def find(pid: int) -> list[str]:
        """Names of the regions published by process `pid`."""
        try:
            names = sorted(os.listdir(SHM_DIR))
        except OSError:
            return []
        return [n for n in names if n.startswith(f"{NAME_PREFIX}{pid}-")]

    def _validate(self, expected_pid: int | None) -> None:
        q, i = self._q, self._i
        if q[_Q["magic"]] != MAGIC:
            raise RegionError("not an rsprof region (bad magic)")
        if i[_I["version"]] != VERSION:
            raise RegionError(f"region layout version {i[_I['version']]}, expected {VERSION}")
        if i[_I["header_bytes"]] != HEADER_BYTES:
            raise RegionError("bad header size")
        ring = q[_Q["ring_size"]]
        if ring < 4096 or ring & (ring - 1) or ring > len(self._view) - HEADER_BYTES:
            raise RegionError(f"bad ring size {ring}")
        if i[_I["max_frames"]] > _MAX_SAMPLE_FRAMES:
            raise RegionError("bad frame limit")
        if expected_pid is not None and i[_I["pid"]] != expected_pid:
            raise RegionError(f"region belongs to pid {i[_I['pid']]}, not {expected_pid}")

    # -- header access -------------------------------------------------------

    def header(self) -> dict[str, int]:
        out = {k: int(self._q[v]) for k, v in _Q.items()}
        out.update({k: int(self._i[v]) for k, v in _I.items()})
        return out

    @property
    def state(self) -> int:
        return int(self._i[_I["state"]])

    @property
    def unwind_name(self) -> str:
        """The unwind table file named in the header ("" when none)."""
        raw = bytes(self._view[UNWIND_NAME_OFFSET:UNWIND_NAME_OFFSET + UNWIND_NAME_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def publish_unwind(self, name: str) -> int:
        """As _ring.ShmRing.publish_unwind: write the name, then bump the generation."""
        raw = name.encode("utf-8")
        if not 0 < len(raw) < UNWIND_NAME_BYTES or b"/" in raw or b"\0" in raw \
                or raw in (b".", b".."):
            raise RegionError(f"bad unwind table name {name!r}")
        self._view[UNWIND_NAME_OFFSET:UNWIND_NAME_OFFSET + UNWIND_NAME_BYTES] = \
            raw.ljust(UNWIND_NAME_BYTES, b"\0")
        gen = (int(self._q[_Q["unwind_generation"]]) + 1) & 0xFFFFFFFFFFFFFFFF
        self._q[_Q["unwind_generation"]] = gen  # last: one aligned store (see above)
        return gen

    @property
    def pid(self) -> int:
        return int(self._i[_I["pid"]])

    @property
    def session(self) -> int:
        return int(self._i[_I["session"]])

    def heartbeat(self) -> None:
        self._q[_Q["heartbeat_ns"]] = _monotonic_ns()

    def start(self) -> None:
        """Become the reader: bump the session, heartbeat, reader pid, RECORDING."""
        self._i[_I["session"]] = (self._i[_I["session"]] + 1) & 0xFFFFFFFF
        self.heartbeat()
        self._i[_I["reader_pid"]] = os.getpid()
        self._i[_I["state"]] = STATE_RECORDING

    def detach(self) -> None:
        """Stop the target recording (IDLE) and give up the reader role."""
        self._i[_I["state"]] = STATE_IDLE
        self._i[_I["reader_pid"]] = 0

    # -- draining ------------------------------------------------------------

    def _read(self, pos: int, n: int) -> bytes:
        off = pos & self.mask
        if off + n <= self.ring_size:
            return bytes(self._data[off:off + n])
        first = self.ring_size - off
        return bytes(self._data[off:]) + bytes(self._data[:n - first])

    def _zero(self, pos: int, n: int) -> None:
        n = min(n, self.ring_size)
        off = pos & self.mask
        if off + n <= self.ring_size:
            self._data[off:off + n] = bytes(n)
        else:
            first = self.ring_size - off
            self._data[off:] = bytes(first)
            self._data[:n - first] = bytes(n - first)

    def _publish(self, start: int, tail: int) -> None:
        if tail > start:
            self._zero(start, tail - start)
        self._q[_Q["tail"]] = tail
        self.heartbeat()

    def drain(self, max_records: int | None = None) -> list[Record]:
        """Decode every committed record from `tail`; zero them, advance `tail`
        (every 1024 records too, so waiting writers move on) and heartbeat."""
        out: list[Record] = []
        self.heartbeat()
        tail = int(self._q[_Q["tail"]])
        reserve = int(self._q[_Q["reserve"]])
        if tail & 7 or reserve < tail or reserve - tail > self.ring_size:
            # Garbage positions: skip all that was written, never loop on it.
            self.counters.malformed += 1
            self._zero(0, self.ring_size)
            self._q[_Q["tail"]] = reserve & ~7 if reserve >= tail else tail
            self.heartbeat()
            return out
        start = tail
        limit = tail + self.ring_size  # never read more than one ring per call
        n = 0
        while tail < limit and (max_records is None or n < max_records):
            if tail >= reserve:
                reserve = int(self._q[_Q["reserve"]])
                if tail >= reserve or reserve - tail > self.ring_size:
                    break
            word = int(self._data_q[(tail & self.mask) >> 3])
            if word == 0:
                break  # reserved, not committed yet
            rtype = word >> _TYPE_SHIFT
            if rtype == REC_FREE:
                rsize = 8
            elif rtype == REC_ALLOC:
                rsize = 16
            else:
                rsize = word & 0xFFFFFFFF if not (word >> 32) & 0x0FFFFFFF else 0
            if rsize < 8 or rsize & 7 or rsize > reserve - tail:
                # Framing lost: skip to what is reserved now.
                self.counters.malformed += 1
                tail = reserve
                break
            body = self._read(tail + 8, rsize - 8)
            rec = self._decode(rtype, word, body)
            if rec is not None:
                out.append(rec)
            self.counters.records += 1
            self.counters.by_type[rtype] = self.counters.by_type.get(rtype, 0) + 1
            tail += rsize
            n += 1
            if n % 1024 == 0:
                self._publish(start, tail)
                self.counters.bytes_consumed += tail - start
                start = tail
        self._publish(start, tail)
        self.counters.bytes_consumed += tail - start
        return out

    def _frames(self, body: bytes, offset: int, depth: int) -> tuple[int, ...]:
        return struct.unpack_from(f"<{depth}Q", body, offset)

    def _decode(self, rtype: int, word: int, body: bytes) -> Record | None:
        n = len(body) + 8
        if rtype == REC_PAD:
            self.counters.pads += 1
            return None
        if rtype == REC_ALLOC:
            size = word & ((1 << _SIZE_BITS) - 1)
            sid = (word >> _SIZE_BITS) & 0xFFFFFF
            return AllocRecord(struct.unpack_from("<Q", body)[0], size, sid)
        if rtype == REC_FREE:
            return FreeRecord(word & ((1 << _TYPE_SHIFT) - 1))
        if rtype == REC_ALLOC_BIG and n == 32:
            sid, _, ptr, size = _BIG.unpack_from(body)
            return AllocRecord(ptr, size, sid)
        if rtype == REC_NODE and n == 24:
            nid, parent, ret = _NODE.unpack_from(body)
            up = self.nodes.get(parent)
            if nid >= 1 and parent < nid and up is not None and len(up) < self.max_frames:
                frames = (ret, *up)
                self.nodes[nid] = frames
                return StackRecord(nid, frames)
        elif rtype == REC_STACK and n >= 16:
            sid, depth = _STACK.unpack_from(body)
            if depth <= self.max_frames and n == 16 + 8 * depth:
                return StackRecord(sid, self._frames(body, 8, depth))
        elif rtype == REC_ALLOC_RAW and n >= 32:
            ptr, size, depth, _ = _RAW.unpack_from(body)
            if depth <= self.max_frames and n == 32 + 8 * depth:
                return AllocRawRecord(ptr, size, self._frames(body, 24, depth))
        elif rtype == REC_SAMPLE and n >= 32:
            tid, depth, ts, period = _SAMPLE.unpack_from(body)
            if (depth <= _MAX_SAMPLE_FRAMES and n == 32 + 8 * depth
                    and period <= _ring.SHM_MAX_SAMPLE_PERIOD):
                return SampleRecord(tid, ts, self._frames(body, 24, depth), period)
        elif rtype == REC_SAMPLE_REGS and n >= 64:
            tid, depth, ts, period, ip, sp, fp, stack_bytes = _SAMPLE_REGS.unpack_from(body)
            area = n - 64 - 8 * depth  # the stack area: the bytes the shim asked for
            if (depth <= _MAX_SAMPLE_FRAMES and 0 <= area <= SAMPLER_MAX_STACK_BYTES
                    and stack_bytes <= area and period <= _ring.SHM_MAX_SAMPLE_PERIOD):
                at = 56 + 8 * depth
                return SampleRegsRecord(tid, ts, period, self._frames(body, 56, depth), ip, sp,
                                        fp, bytes(body[at:at + stack_bytes]))
        elif rtype == REC_THREAD and n == 32:
            tid, _, raw = _THREAD.unpack_from(body)
            return ThreadRecord(tid, raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
        self.counters.malformed += 1
        return None

    # -- teardown --------------------------------------------------------------

    def _release(self) -> None:
        for attr in ("_data_q", "_data", "_q", "_i", "_view"):
            v = getattr(self, attr, None)
            if v is not None:
                v.release()
                setattr(self, attr, None)

    def close(self) -> None:
        self._release()
        if isinstance(self._buf, mmap.mmap) and not self._buf.closed:
            self._buf.close()

    def unlink(self) -> None:
        if self.name is not None:
            with contextlib.suppress(OSError):
                os.unlink(region_path(self.name))

    def __enter__(self) -> ShmReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
