"""A pure-Python decoder of perf ring records: the reference `_ring.pyx` is tested against.

Slow and simple on purpose. It decodes the same ring bytes into the same
aggregates as `_ring.PerfDecoder`: counts per (interval, tid, stack), stacks
in first-seen order, and the lost/truncated/malformed counters.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from rsprof import _ring

_HEADER = struct.Struct("<IHH")


@dataclass
class ReferenceResult:
    counts: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (iv, tid, sid)
    ns: dict[tuple[int, int, int], int] = field(default_factory=dict)  # their periods summed
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


CodeFacts = tuple[list[tuple[int, int]], list[tuple[int, int]]]  # functions, call slots

_MASK = (1 << 64) - 1
REACH_NOT_CALL, REACH_NO, REACH_YES, REACH_UNKNOWN = -1, 0, 1, 2


def _s32(b: bytes, pos: int) -> int:
    return int(struct.unpack_from("<i", b, pos)[0])


class _Code:
    """Mirror of PerfDecoder's code tables: mappings with their bytes, function
    bounds, call slots; and of the checks made with them."""

    def __init__(self, code_ranges: list[CodeRange], facts: CodeFacts | None) -> None:
        self.ranges = sorted(code_ranges, key=lambda r: r[0])
        self._starts = [r[0] for r in self.ranges]
        functions, slots = facts or ([], [])
        self.functions = sorted(functions)
        self._fstarts = [f[0] for f in self.functions]
        self.budget = 0  # functions call_reaches may still look into
        self.slots: dict[int, list[int]] = {}
        for slot, target in sorted(slots):
            self.slots.setdefault(slot, []).append(target)

    def range(self, addr: int) -> CodeRange | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        return self.ranges[i] if i >= 0 and addr < self.ranges[i][1] else None

    def kind(self, addr: int) -> int:
        r = self.range(addr)
        return 0 if r is None else (1 if r[2] else 2)

    def function(self, addr: int) -> int | None:
        """Start of the function holding addr."""
        i = bisect.bisect_right(self._fstarts, addr) - 1
        return self.functions[i][0] if i >= 0 and addr < self.functions[i][1] else None

    def function_end(self, start: int) -> int | None:
        i = bisect.bisect_right(self._fstarts, start) - 1
        if i < 0 or start >= self.functions[i][1] or self.functions[i][0] != start:
            return None
        return self.functions[i][1]

    def code_from(self, addr: int) -> bytes | None:
        """The mapped code bytes from addr to the end of what is known."""
        r = self.range(addr)
        if r is None or not r[3] or addr - r[0] >= len(r[3]):
            return None
        return bytes(r[3][addr - r[0]:])

    def fp_frame(self, fstart: int) -> tuple[int, int]:
        """Mirror of PerfDecoder._fp_frame: (frame size or -1, prologue length)."""
        c = self.code_from(fstart)
        if c is None or len(c) < 48:
            return -1, 0
        p = 4 if c[:4] == b"\xf3\x0f\x1e\xfa" else 0
        if c[p] != 0x55:
            return -1, 0
        if c[p + 1 : p + 4] not in (b"\x48\x89\xe5", b"\x48\x8b\xec"):
            return -1, 0
        p += 4
        size = 0
        while p + 2 < len(c) and size < 64:
            if 0x50 <= c[p] <= 0x57 and c[p] != 0x54:
                size += 8
                p += 1
            elif c[p] == 0x41 and 0x50 <= c[p + 1] <= 0x57:
                size += 8
                p += 2
            else:
                break
        if p + 7 > 24:
            return -1, 0
        if c[p : p + 3] == b"\x48\x83\xec":
            if c[p + 3] >= 0x80:
                return -1, 0
            size += c[p + 3]
            p += 4
        elif c[p : p + 3] == b"\x48\x81\xec":
            imm = _s32(c, p + 3)
            if imm < 0 or imm >= 0x1000:
                return -1, 0
            size += imm
            p += 7
        if c[p] == 0x48 and c[p + 1] in (0x83, 0x81) and c[p + 2] in (0xE4, 0xEC):
            return -1, 0
        if c[p] in (0x48, 0x4C) and c[p + 1] == 0x29 and (c[p + 2] & 0xC7) == 0xC4:
            return -1, 0
        if c[p : p + 3] == b"\x49\x89\xe3" or c[p : p + 4] == b"\x4c\x8d\x9c\x24":
            return -1, 0
        return size, p

    def slot_reaches(self, slot: int, callee: int, depth: int) -> int:
        targets = self.slots.get(slot)
        if targets is None:
            return REACH_UNKNOWN
        return REACH_YES if any(self.reaches(t, callee, depth) for t in targets) else REACH_NO

    def reaches(self, target: int, callee: int, depth: int) -> bool:
        """Mirror of PerfDecoder._reaches."""
        if target == callee:
            return True
        if depth >= _ring.THUNK_DEPTH or self.budget <= 0:
            return False
        self.budget -= 1
        c = self.code_from(target)
        if c is None or len(c) < 16:
            return False
        p = 4 if c[:4] == b"\xf3\x0f\x1e\xfa" else 0
        if c[p : p + 5] == b"\x55\x48\x89\xe5\x5d":
            p += 5
        if c[p] == 0xE9:
            return self.reaches((target + p + 5 + _s32(c, p + 1)) & _MASK, callee, depth + 1)
        if c[p] == 0xEB:
            rel8 = c[p + 1] - 256 if c[p + 1] >= 128 else c[p + 1]
            return self.reaches((target + p + 2 + rel8) & _MASK, callee, depth + 1)
        if c[p : p + 3] == b"\xf2\xff\x25":
            p += 1
        if c[p] == 0xFF and c[p + 1] == 0x25:
            slot = (target + p + 6 + _s32(c, p + 2)) & _MASK
            return self.slot_reaches(slot, callee, depth + 1) == REACH_YES
        end = self.function_end(target)
        if end is None:
            return False
        size = end - target
        if size > _ring.TAIL_SEARCH_MAX or size > len(c):
            return False
        for q in range(size):
            if q + 5 <= size and c[q] == 0xE9:
                dest = (target + q + 5 + _s32(c, q + 1)) & _MASK
            elif q + 6 <= size and c[q] == 0x0F and (c[q + 1] & 0xF0) == 0x80:
                dest = (target + q + 6 + _s32(c, q + 2)) & _MASK
            elif q + 6 <= size and c[q] == 0xFF and c[q + 1] == 0x25:
                slot = (target + q + 6 + _s32(c, q + 2)) & _MASK
                if self.slot_reaches(slot, callee, depth + 1) == REACH_YES:
                    return True
                continue
            else:
                continue
            if dest == callee:
                return True
            if target <= dest < target + size:
                continue
            if self.function_end(dest) is not None and self.reaches(dest, callee, depth + 1):
                return True
        return False

    def call_reaches(self, ret: int, callee: int) -> int:
        """Mirror of PerfDecoder._call_reaches."""
        self.budget = _ring.REACH_WORK
        if ret <= _ring.MIN_RETURN_ADDRESS or ret > _ring.MAX_RETURN_ADDRESS:
            return REACH_NOT_CALL
        r = self.range(ret - 1)
        if r is None or not r[3]:
            return REACH_NOT_CALL
        code = bytes(r[3])
        o = ret - r[0]
        if o > len(code):
            return REACH_NOT_CALL
        result = REACH_NOT_CALL
        if o >= 5 and code[o - 5] == 0xE8:
            if self.reaches((ret + _s32(code, o - 4)) & _MASK, callee, 0):
                return REACH_YES
            result = REACH_NO
        if o >= 6 and code[o - 6] == 0xFF and code[o - 5] == 0x15:
            got = self.slot_reaches((ret + _s32(code, o - 4)) & _MASK, callee, 0)
            if got == REACH_YES:
                return REACH_YES
            if got == REACH_UNKNOWN or result == REACH_NOT_CALL:
                result = got
        if _indirect_call_before(code, o):
            result = REACH_UNKNOWN
        return result

    def return_into(self, w: int) -> int | None:
        """Mirror of PerfDecoder._return_into: the function w returns into, if w can
        be a return address."""
        if w <= _ring.MIN_RETURN_ADDRESS or w > _ring.MAX_RETURN_ADDRESS:
            return None
        r = self.range(w - 1)
        if r is None or not r[3] or w - r[0] > len(r[3]) or not _follows_call(r, w):
            return None
        return self.function(w - 1)


def _indirect_call_before(code: bytes, o: int) -> bool:
    """Mirror of PerfDecoder._indirect_call_before."""
    def reg2(m: int) -> bool:
        return (m & 0x38) == 0x10
    if o >= 2 and code[o - 2] == 0xFF:
        m = code[o - 1]
        if reg2(m) and ((m & 0xC0) == 0xC0 or ((m & 0xC0) == 0 and (m & 7) not in (4, 5))):
            return True
    if o >= 3 and code[o - 3] == 0xFF:
        m = code[o - 2]
        if reg2(m) and (((m & 0xC0) == 0x40 and (m & 7) != 4) or
                        ((m & 0xC0) == 0 and (m & 7) == 4)):
            return True
    if o >= 4 and code[o - 4] == 0xFF:
        m = code[o - 3]
        if reg2(m) and (m & 0xC0) == 0x40 and (m & 7) == 4:
            return True
    if o >= 6 and code[o - 6] == 0xFF:
        m = code[o - 5]
        if reg2(m) and (m & 0xC0) == 0x80 and (m & 7) != 4:
            return True
    if o >= 7 and code[o - 7] == 0xFF:
        m = code[o - 6]
        if reg2(m) and (m & 0xC0) == 0x80 and (m & 7) == 4:
            return True
    return False


def _word(stack: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", stack, off)[0])


def _scan_caller(frames: list[int], has_regs: bool, bp: int, sp: int, stack: bytes,
                 code: _Code, res: ReferenceResult) -> tuple[list[int], bool]:
    """Mirror of PerfDecoder._scan_caller (see its docstring): (frames, cut)."""
    leaf = frames[0]
    n = len(frames)
    fn = code.function(leaf) if code.ranges else None
    if fn is None:
        if code.kind(leaf) == 1:
            return frames[:1], True
        return frames, False
    callee = fn
    frame, plen = code.fp_frame(fn)
    if has_regs and frame >= 0 and leaf >= fn + plen and (sp + frame) & _MASK == bp:
        return frames, False
    if not has_regs or len(stack) < 8:
        return frames[:1], True
    anchor = 0
    off = 0
    while off + 8 <= len(stack):
        w = _word(stack, off)
        s = (sp + off) & _MASK
        g = code.return_into(w) if n > 1 else None
        if g is not None:
            if (s == (bp + 8) & _MASK and frames[1] == w - 1
                    and _anchor_a(code, w, callee, stack, off)):
                anchor = 1
                break
            gframe, _ = code.fp_frame(g)
            if (gframe >= 0 and (s + 8 + gframe) & _MASK == bp
                    and code.call_reaches(frames[1] + 1, g) != REACH_NO):
                anchor = 2
                break
        off += 8
    found: list[int] = []
    if anchor:
        anchor_off = off
        off = 0
        while off < anchor_off and len(found) < _ring.MAX_SCANNED_FRAMES - 1:
            w = _word(stack, off)
            g = code.return_into(w)
            if g is not None and code.call_reaches(w, callee) == REACH_YES:
                found.append(w - 1)
                callee = g
            off += 8
        w = _word(stack, anchor_off)
        if found and code.call_reaches(w, callee) != REACH_YES:
            found = []
        found.append(w - 1)
        keep_from = 2 if anchor == 1 else 1
        out = [leaf, *found, *frames[keep_from:]]
        res.scanned_stacks += 1
        return out[: _ring.MAX_STACK + _ring.MAX_SCANNED_FRAMES], False
    off = 0
    fallback = 0
    pinned = False
    while off + 8 <= len(stack) and len(found) < _ring.MAX_SCANNED_FRAMES:
        w = _word(stack, off)
        g = code.return_into(w)
        if g is not None and code.call_reaches(w, callee) == REACH_YES:
            found.append(w - 1)
            callee = g
            pinned = False
            gframe, _ = code.fp_frame(g)
            if gframe >= 0:
                v = (sp + off + 8 + gframe) & _MASK
                if (v + 16) & _MASK <= (sp + len(stack)) & _MASK:
                    fallback = off + 8
                    off = (v + 8 - sp) & _MASK
                    pinned = True
                    continue
            off += 8
            continue
        if pinned:
            pinned = False
            off = fallback
            continue
        off += 8
    if found:
        res.scanned_stacks += 1
    return [leaf, *found], True


def _anchor_a(code: _Code, w: int, leaf_fn: int, stack: bytes, off: int) -> bool:
    """Mirror of PerfDecoder._anchor_a."""
    if code.call_reaches(w, leaf_fn) != REACH_NO:
        return True
    for o in range(0, off, 8):
        g = code.return_into(_word(stack, o))
        if g is not None and code.call_reaches(w, g) != REACH_NO:
            return True
    return False


def _decode_sample(res: ReferenceResult, rec: bytes, rsize: int, target_pid: int,
                   start_ns: int, interval_ns: int, stack_ids: dict[tuple[int, ...], int],
                   code: _Code) -> None:
    if rsize < 48:
        res.malformed += 1
        return
    ip, pid, tid, t, period, nr = struct.unpack_from("<QIIQQQ", rec, 8)
    if nr > (rsize - 48) // 8:
        res.malformed += 1
        return
    pos = 48 + 8 * nr
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
        if _ring.NREGS >= 2:  # bp, sp (then ip)
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
    cut = False
    for (entry,) in struct.iter_unpack("<Q", rec[48 : 48 + 8 * nr]):
        if entry >= _ring.CONTEXT_MAX:
            in_user = entry == _ring.CONTEXT_USER
            continue
        if in_user:
            if frames and not (_ring.MIN_RETURN_ADDRESS <= entry <= _ring.MAX_RETURN_ADDRESS):
                cut = True
                break
            frames.append(entry if not frames else entry - 1)
    if not frames:
        frames = [ip]
    if len(frames) >= _ring.MAX_STACK:
        res.truncated += 1
    if code.ranges:
        for k in range(1, len(frames)):
            r = code.range(frames[k])
            if r is None or not _follows_call(r, frames[k] + 1):
                frames = frames[:k]
                cut = True
                break
    frames, scan_cut = _scan_caller(frames, bool(abi), bp, sp, stack, code, res)
    if cut or scan_cut:
        res.broken_chains += 1
    key = tuple(frames)
    if key not in stack_ids:
        stack_ids[key] = len(res.stacks)
        res.stacks.append(key)
    interval = max(0, t - start_ns) // interval_ns
    ckey = (interval, tid, stack_ids[key])
    res.counts[ckey] = res.counts.get(ckey, 0) + 1
    res.ns[ckey] = res.ns.get(ckey, 0) + period
    res.samples += 1


def decode_ring(data: bytes, tail: int, head: int, target_pid: int, start_ns: int,
                interval_ns: int, code_ranges: list[CodeRange] | None = None,
                code_facts: CodeFacts | None = None) -> ReferenceResult:
    code = _Code(code_ranges or [], code_facts)
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
                           code)
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
