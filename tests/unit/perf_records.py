"""Builders of synthetic perf ring bytes for the decoder tests."""

from __future__ import annotations

import struct

from rsprof import _ring

PID = 4242
PERIOD = 1_001_001  # ns per sample (cpu-clock at 999 Hz)


def sample(tid: int, t: int, ips: list[int], pid: int = PID, user_marker: bool = True,
           kernel: list[int] | None = None, regs: tuple[int, int] | None = (0, 0),
           stack: list[int] | None = None, stack_room: int = 0,
           period: int = PERIOD) -> bytes:
    """A PERF_RECORD_SAMPLE; regs=(bp, sp) or None for "no registers" (abi 0);
    stack: the 64-bit words at sp (the kernel-reported dynamic size); stack_room:
    extra copied-but-unused bytes beyond them; period: the nanoseconds it stands for."""
    chain: list[int] = []
    if kernel:
        chain.append(2**64 - 128)  # PERF_CONTEXT_KERNEL
        chain.extend(kernel)
    if user_marker:
        chain.append(_ring.CONTEXT_USER)
    chain.extend(ips)
    body = struct.pack("<QIIQQQ", ips[0] if ips else 0, pid, tid, t, period, len(chain))
    body += b"".join(struct.pack("<Q", a) for a in chain)
    if regs is None:
        body += struct.pack("<Q", 0)
    else:
        # bp, sp and ip, in perf's register-bit order (_ring.NREGS of them)
        body += struct.pack("<Q", 2) + struct.pack("<QQQ", *regs, ips[0] if ips else 0)[
            : 8 * _ring.NREGS]
    words = stack or []
    data = b"".join(struct.pack("<Q", w) for w in words)
    if data or stack_room:
        body += struct.pack("<Q", len(data) + stack_room) + data + bytes(stack_room)
        body += struct.pack("<Q", len(data))
    else:
        body += struct.pack("<Q", 0)
    return struct.pack("<IHH", _ring.RECORD_SAMPLE, 2, 8 + len(body)) + body


def lost(n: int) -> bytes:
    return struct.pack("<IHHQQ", _ring.RECORD_LOST, 0, 24, 7, n)


def comm(tid: int, name: str, pid: int = PID) -> bytes:
    raw = name.encode() + b"\0"
    raw += b"\0" * (-len(raw) % 8)
    body = struct.pack("<II", pid, tid) + raw
    return struct.pack("<IHH", _ring.RECORD_COMM, 0, 8 + len(body)) + body


def fork(tid: int, t: int, pid: int = PID) -> bytes:
    body = struct.pack("<IIIIQ", pid, pid, tid, pid, t)
    return struct.pack("<IHH", _ring.RECORD_FORK, 0, 8 + len(body)) + body


def ring_with(records: list[bytes], size: int, tail: int) -> tuple[bytes, int, int]:
    """Lay records into a ring of `size` bytes starting at position `tail` (wrapping)."""
    data = bytearray(size)
    stream = b"".join(records)
    assert len(stream) <= size
    for i, b in enumerate(stream):
        data[(tail + i) % size] = b
    return bytes(data), tail, tail + len(stream)
