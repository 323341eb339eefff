"""A pure-Python decoder of perf ring records: the reference `_ring.pyx` is tested against.

Slow and simple on purpose. It decodes the same ring bytes into the same
aggregates as `_ring.PerfDecoder`: counts per (interval, tid, stack), stacks
in first-seen order, and the lost/truncated/malformed counters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from rsprof import _ring

_HEADER = struct.Struct("<IHH")


@dataclass
class ReferenceResult:
    counts: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (iv, tid, sid)
    stacks: list[tuple[int, ...]] = field(default_factory=list)
    events: list[tuple[str, int, int, int, str]] = field(default_factory=list)
    samples: int = 0
    lost: int = 0
    truncated: int = 0
    throttled: int = 0
    malformed: int = 0
    other_process_samples: int = 0
    broken_chains: int = 0


def _read(data: bytes, pos: int, n: int) -> bytes:
    size = len(data)
    off = pos % size
    if off + n <= size:
        return data[off : off + n]
    return data[off:] + data[: n - (size - off)]


def decode_ring(data: bytes, tail: int, head: int, target_pid: int, start_ns: int,
                interval_ns: int) -> ReferenceResult:
    res = ReferenceResult()
    stack_ids: dict[tuple[int, ...], int] = {}
    size = len(data)
    if size == 0 or size & (size - 1) or head - tail > size:
        res.malformed += 1
        return res
    pos = tail
    while head - pos >= _HEADER.size:
        rtype, _misc, rsize = _HEADER.unpack(_read(data, pos, _HEADER.size))
        if rsize < _HEADER.size or rsize > head - pos:
            res.malformed += 1
            return res
        rec = _read(data, pos, rsize)
        pos += rsize
        if rtype == _ring.RECORD_SAMPLE:
            if rsize < 40:
                res.malformed += 1
                continue
            ip, pid, tid, t, nr = struct.unpack_from("<QIIQQ", rec, 8)
            if nr > (rsize - 40) // 8:
                res.malformed += 1
                continue
            if pid != target_pid:
                res.other_process_samples += 1
                continue
            frames: list[int] = []
            in_user = True
            for (entry,) in struct.iter_unpack("<Q", rec[40 : 40 + 8 * nr]):
                if entry >= _ring.CONTEXT_MAX:
                    in_user = entry == _ring.CONTEXT_USER
                    continue
                if in_user:
                    if frames and not (_ring.MIN_RETURN_ADDRESS <= entry
                                       <= _ring.MAX_RETURN_ADDRESS):
                        res.broken_chains += 1
                        break
                    frames.append(entry if not frames else entry - 1)
            if not frames:
                frames = [ip]
            if len(frames) >= _ring.MAX_STACK:
                res.truncated += 1
            key = tuple(frames)
            if key not in stack_ids:
                stack_ids[key] = len(res.stacks)
                res.stacks.append(key)
            interval = max(0, t - start_ns) // interval_ns
            ckey = (interval, tid, stack_ids[key])
            res.counts[ckey] = res.counts.get(ckey, 0) + 1
            res.samples += 1
        elif rtype == _ring.RECORD_LOST:
            if rsize >= 24:
                res.lost += struct.unpack_from("<Q", rec, 16)[0]
            else:
                res.malformed += 1
        elif rtype == _ring.RECORD_COMM:
            if rsize >= 17:
                pid, tid = struct.unpack_from("<II", rec, 8)
                name = rec[16:].split(b"\0", 1)[0].decode("utf-8", "replace")
                res.events.append(("comm", pid, tid, 0, name))
            else:
                res.malformed += 1
        elif rtype in (_ring.RECORD_FORK, _ring.RECORD_EXIT):
            if rsize >= 32:
                pid, _ppid, tid, _ptid, t = struct.unpack_from("<IIIIQ", rec, 8)
                kind = "fork" if rtype == _ring.RECORD_FORK else "exit"
                res.events.append((kind, pid, tid, t, ""))
            else:
                res.malformed += 1
        elif rtype == _ring.RECORD_THROTTLE:
            res.throttled += 1
    if pos != head:
        res.malformed += 1
    return res
