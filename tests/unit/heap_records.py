"""Builders of shim records (csrc/rsprof_shm.h layouts) for the heap decoder tests."""

from __future__ import annotations

import struct

from rsprof import _ring


def header(rtype: int, size: int) -> bytes:
    return struct.pack("<Q", (rtype << _ring.REC_TYPE_SHIFT) | size)


def stack(shim_id: int, frames: list[int]) -> bytes:
    size = 16 + 8 * len(frames)
    return (header(_ring.REC_STACK, size) + struct.pack("<II", shim_id, len(frames))
            + b"".join(struct.pack("<Q", f) for f in frames))


def node(node_id: int, parent_id: int, ret: int, size: int = 24) -> bytes:
    """A stack-trie node: the stack [ret] + the stack of parent_id (0: the root).
    `size` other than 24 makes a malformed record of that size."""
    return (header(_ring.REC_NODE, size) + struct.pack("<IIQ", node_id, parent_id, ret)
            + bytes(max(size - 24, 0)))[:max(size, 8)]


def alloc(ptr: int, size: int, shim_id: int) -> bytes:
    """The compact 16-byte ALLOC: type, stack id and size in one word, then ptr."""
    word = ((_ring.REC_ALLOC << _ring.REC_TYPE_SHIFT) | (shim_id << _ring.ALLOC_SIZE_BITS)
            | size)
    return struct.pack("<QQ", word, ptr)


def alloc_big(ptr: int, size: int, shim_id: int) -> bytes:
    return header(_ring.REC_ALLOC_BIG, 32) + struct.pack("<IIQQ", shim_id, 0, ptr, size)


def alloc_raw(ptr: int, size: int, frames: list[int]) -> bytes:
    rsize = 32 + 8 * len(frames)
    return (header(_ring.REC_ALLOC_RAW, rsize) + struct.pack("<QQII", ptr, size, len(frames), 0)
            + b"".join(struct.pack("<Q", f) for f in frames))


def free(ptr: int) -> bytes:
    """The one-word FREE."""
    return struct.pack("<Q", (_ring.REC_FREE << _ring.REC_TYPE_SHIFT) | ptr)


def pad(size: int) -> bytes:
    return header(_ring.REC_PAD, size) + bytes(size - 8)


def thread(tid: int, name: str) -> bytes:
    raw = name.encode()[:15].ljust(16, b"\0")
    return header(_ring.REC_THREAD, 32) + struct.pack("<II", tid, 0) + raw


def sample(tid: int, t: int, frames: list[int], period: int = 4_004_000) -> bytes:
    """A CPU sample from the shim's self-sampler (frames[0] is the interrupted IP)
    standing for `period` ns of CPU (default: a 1001 us timer with 3 overruns)."""
    size = 32 + 8 * len(frames)
    return (header(_ring.REC_SAMPLE, size) + struct.pack("<IIQQ", tid, len(frames), t, period)
            + b"".join(struct.pack("<Q", f) for f in frames))
