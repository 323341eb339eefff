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
    scanned_stacks: int = 0


def _read(data: bytes, pos: int, n: int) -> bytes:
    size = len(data)
    off = pos % size
    if off + n <= size:
        return data[off : off + n]
    return data[off:] + data[: n - (size - off)]


CodeRange = tuple[int, int, bool, bytes | None]


def _code_range(code_ranges: list[CodeRange], addr: int) -> CodeRange | None:
    best = None
    for r in sorted(code_ranges, key=lambda r: r[0]):
        if r[0] <= addr:
            best = r
    return best if best is not None and addr < best[1] else None


def _code_kind(code_ranges: list[CodeRange], addr: int) -> int:
    r = _code_range(code_ranges, addr)
    return 0 if r is None else (1 if r[2] else 2)


def _follows_call(r: CodeRange, addr: int) -> bool:
    """Mirror of PerfDecoder._follows_call: is the instruction before addr a call?"""
    code = r[3]
    o = addr - r[0]
    if not code or o > len(code):
        return True
    def at(k: int) -> int:
        return code[o - k]
    def reg2(m: int) -> bool:
        return (m & 0x38) == 0x10
    if o >= 5 and at(5) == 0xE8:
        return True
    if o >= 2 and at(2) == 0xFF:
        m = at(1)
        if reg2(m) and (m & 0xC0) == 0xC0:
            return True
        if reg2(m) and (m & 0xC0) == 0 and (m & 7) not in (4, 5):
            return True
    if o >= 3 and at(3) == 0xFF:
        m = at(2)
        if reg2(m) and (((m & 0xC0) == 0x40 and (m & 7) != 4) or
                        ((m & 0xC0) == 0 and (m & 7) == 4)):
            return True
    if o >= 4 and at(4) == 0xFF:
        m = at(3)
        if reg2(m) and (m & 0xC0) == 0x40 and (m & 7) == 4:
            return True
    if o >= 6 and at(6) == 0xFF:
        m = at(5)
        if reg2(m) and (m == 0x15 or ((m & 0xC0) == 0x80 and (m & 7) != 4)):
            return True
    if o >= 7 and at(7) == 0xFF:
        m = at(6)
        if reg2(m) and (m & 0xC0) == 0x80 and (m & 7) == 4:
            return True
    return False


def _scan_caller(frames: list[int], bp: int, sp: int, stack: bytes,
                 code_ranges: list[CodeRange], res: ReferenceResult) -> list[int]:
    """Mirror of PerfDecoder._scan_caller (see its docstring)."""
    if not frames or not code_ranges or len(stack) < 8:
        return frames
    if _code_kind(code_ranges, frames[0]) != 1:
        return frames
    found: list[int] = []
    slot = None
    keep = False
    for off in range(0, len(stack) - 7, 8):
        if len(found) >= _ring.MAX_SCANNED_FRAMES:
            break
        (word,) = struct.unpack_from("<Q", stack, off)
        r = _code_range(code_ranges, word)
        kind = 0 if r is None else (1 if r[2] else 2)
        if r is not None and word > _ring.MIN_RETURN_ADDRESS and _follows_call(r, word):
            found.append(word - 1)
            if kind == 2 and slot is None:
                slot = sp + off
                keep = len(frames) > 1 and bp > slot and bp - sp < (1 << 20)
                if keep:
                    break
    if slot is None:
        return frames
    res.scanned_stacks += 1
    if len(frames) > 1 and not keep:
        res.broken_chains += 1
    rest: list[int] = []
    if keep:
        rest = frames[2:] if frames[1] == found[-1] else frames[1:]
    out = [frames[0], *found, *rest]
    return out[: _ring.MAX_STACK + _ring.MAX_SCANNED_FRAMES]


def _decode_sample(res: ReferenceResult, rec: bytes, rsize: int, target_pid: int,
                   start_ns: int, interval_ns: int, stack_ids: dict[tuple[int, ...], int],
                   code_ranges: list[CodeRange]) -> None:
    if rsize < 40:
        res.malformed += 1
        return
    ip, pid, tid, t, nr = struct.unpack_from("<QIIQQ", rec, 8)
    if nr > (rsize - 40) // 8:
        res.malformed += 1
        return
    pos = 40 + 8 * nr
    if pos + 8 > rsize:
        res.malformed += 1
        return
    (abi,) = struct.unpack_from("<Q", rec, pos)
    pos += 8
    bp = sp = 0
    if abi:
        if pos + 8 * _ring.NREGS > rsize:
            res.malformed += 1
            return
        if _ring.NREGS == 2:
            bp, sp = struct.unpack_from("<QQ", rec, pos)
        pos += 8 * _ring.NREGS
    if pos + 8 > rsize:
        res.malformed += 1
        return
    (stack_size,) = struct.unpack_from("<Q", rec, pos)
    pos += 8
    stack = b""
    if stack_size:
        if stack_size > rsize - pos or rsize - pos - stack_size < 8:
            res.malformed += 1
            return
        (dyn_size,) = struct.unpack_from("<Q", rec, pos + stack_size)
        stack = rec[pos : pos + min(dyn_size, stack_size)]
    if pid != target_pid:
        res.other_process_samples += 1
        return
    frames: list[int] = []
    in_user = True
    for (entry,) in struct.iter_unpack("<Q", rec[40 : 40 + 8 * nr]):
        if entry >= _ring.CONTEXT_MAX:
            in_user = entry == _ring.CONTEXT_USER
            continue
        if in_user:
            if frames and not (_ring.MIN_RETURN_ADDRESS <= entry <= _ring.MAX_RETURN_ADDRESS):
                res.broken_chains += 1
                break
            frames.append(entry if not frames else entry - 1)
    if not frames:
        frames = [ip]
    if len(frames) >= _ring.MAX_STACK:
        res.truncated += 1
    if abi and stack_size:
        frames = _scan_caller(frames, bp, sp, stack, code_ranges, res)
    key = tuple(frames)
    if key not in stack_ids:
        stack_ids[key] = len(res.stacks)
        res.stacks.append(key)
    interval = max(0, t - start_ns) // interval_ns
    ckey = (interval, tid, stack_ids[key])
    res.counts[ckey] = res.counts.get(ckey, 0) + 1
    res.samples += 1


def decode_ring(data: bytes, tail: int, head: int, target_pid: int, start_ns: int,
                interval_ns: int,
                code_ranges: list[CodeRange] | None = None) -> ReferenceResult:
    code_ranges = code_ranges or []
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
            _decode_sample(res, rec, rsize, target_pid, start_ns, interval_ns, stack_ids,
                           code_ranges)
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
