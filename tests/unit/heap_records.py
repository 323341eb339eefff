"""Builders of shim records (csrc/rsprof_shm.h layouts) for the heap decoder tests."""

from __future__ import annotations

import struct

from rsprof import _ring


def header(rtype: int, size: int) -> bytes:
    return struct.pack("<Q", (rtype << 32) | size)


def stack(shim_id: int, frames: list[int]) -> bytes:
    size = 16 + 8 * len(frames)
    return (header(_ring.REC_STACK, size) + struct.pack("<II", shim_id, len(frames))
            + b"".join(struct.pack("<Q", f) for f in frames))


def alloc(ptr: int, size: int, shim_id: int, tid: int = 1, t: int = 0) -> bytes:
    return header(_ring.REC_ALLOC, 40) + struct.pack("<QQIIQ", ptr, size, shim_id, tid, t)


def alloc_raw(ptr: int, size: int, frames: list[int], tid: int = 1) -> bytes:
    rsize = 40 + 8 * len(frames)
    return (header(_ring.REC_ALLOC_RAW, rsize) + struct.pack("<QQIIQ", ptr, size, len(frames),
                                                             tid, 0)
            + b"".join(struct.pack("<Q", f) for f in frames))


def free(ptr: int) -> bytes:
    return header(_ring.REC_FREE, 16) + struct.pack("<Q", ptr)


def pad(size: int) -> bytes:
    return header(_ring.REC_PAD, size) + bytes(size - 8)


def thread(tid: int, name: str) -> bytes:
    raw = name.encode()[:15].ljust(16, b"\0")
    return header(_ring.REC_THREAD, 32) + struct.pack("<II", tid, 0) + raw
