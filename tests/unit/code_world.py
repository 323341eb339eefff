"""A small synthetic process for the stack-recovery tests: a "libc" without frame
pointers and a Rust-like program with them, as real x86-64 code bytes (calls,
a GOT, a frame-pointer thunk, a tail jump, a PLT stub), with the function
bounds and call slots the recorder would hand the decoder (code_facts.py).

Offsets are from the start of each mapping; `ret_*` are return addresses (the
address after a call instruction), `at_*` addresses inside a function.
"""

from __future__ import annotations

import struct

LIBC_START = 0x7F0000000000
APP_START = 0x555500000000
GOT = APP_START + 0x20000  # the program's call slots (data, not code)
SLOT_RUST_ALLOC = GOT
SLOT_MALLOC = GOT + 8
SLOT_FREE = GOT + 16
SLOT_SHRUNK = GOT + 24
SLOT_LIBC_FP = GOT + 32
STACK = 0x7FFD00001000  # sp of every sample
CODE_SIZE = 0x8000


def _rel32(at: int, target: int) -> bytes:
    return struct.pack("<i", target - at)


class World:
    def __init__(self) -> None:
        self.libc = bytearray(b"\xcc" * CODE_SIZE)
        self.app = bytearray(b"\xcc" * CODE_SIZE)
        self.functions: list[tuple[int, int]] = []
        L, A = LIBC_START, APP_START
        # --- libc: no frame pointers (push r15 / push rbp as a plain register).
        self.malloc = self._func(self.libc, L, 0x1000, 0x100, b"\x41\x57\x55\x53")
        self.ret_malloc = self._call(self.libc, L, 0x1020, L + 0x2000)  # -> _int_malloc
        self.int_malloc = self._func(self.libc, L, 0x2000, 0x400, b"\x41\x57\x55\x53")
        self.free = self._func(self.libc, L, 0x3000, 0x100, b"\x41\x56\x53")
        self.ret_free = self._call(self.libc, L, 0x3010, L + 0x4000)  # -> _int_free
        self.int_free = self._func(self.libc, L, 0x4000, 0x400, b"\x41\x56\x55")
        # A libc function that keeps a frame pointer (like rsprof's shim): frame 32
        # bytes; it calls through a register.
        self.libc_fp = self._func(self.libc, L, 0x5000, 0x100,
                                  b"\x55\x48\x89\xe5\x53\x48\x83\xec\x18")
        self.libc[0x5030:0x5032] = b"\xff\xd0"  # call rax
        self.ret_libc_fp = L + 0x5032
        # Keeps a frame pointer, but only after an early-exit test (shrink-wrapped):
        # its prologue is not at its start.
        self.shrunk = self._func(self.libc, L, 0x6000, 0x100,
                                 b"\x48\x85\xff\x74\x10\x55\x48\x89\xe5\x53")
        # --- the program: frame pointers everywhere.
        # create: push rbp; mov rbp,rsp; push r14; push rbx; sub rsp,0x20 -> frame 48
        self.create = self._func(self.app, A, 0x1000, 0x100,
                                 b"\x55\x48\x89\xe5\x41\x56\x53\x48\x83\xec\x20")
        self.create_frame = 48
        self.ret_create_alloc = self._call_slot(self.app, A, 0x1040, SLOT_RUST_ALLOC)
        self.ret_create_left = self._call(self.app, A, 0x1060, A + 0x2000)
        self.ret_create_free = self._call_slot(self.app, A, 0x1070, SLOT_FREE)
        self.ret_create_shrunk = self._call_slot(self.app, A, 0x1080, SLOT_SHRUNK)
        self.ret_create_fp = self._call_slot(self.app, A, 0x1090, SLOT_LIBC_FP)
        # create_left: push rbp; mov rbp,rsp; push rbx; sub rsp,8 -> frame 16
        self.create_left = self._func(self.app, A, 0x2000, 0x80,
                                      b"\x55\x48\x89\xe5\x53\x48\x83\xec\x08")
        self.create_left_frame = 16
        self.ret_left_create = self._call(self.app, A, 0x2010, self.create)
        # __rust_alloc: push rbp; mov rbp,rsp; pop rbp; jmp __rdl_alloc
        self.rust_alloc = self._func(self.app, A, 0x3000, 0x10,
                                     b"\x55\x48\x89\xe5\x5d\xe9" + _rel32(A + 0x300A, A + 0x3100))
        # __rdl_alloc: a small function that tail-jumps to malloc through the GOT
        # on one path: mov rdx,rdi; cmp rsi,17; setb al; je +6; mov rdi,rdx;
        # jmp *[rip+malloc@GOT]; push rbp; mov rbp,rsp; ...; ret
        body = b"\x48\x89\xfa\x48\x83\xfe\x11\x0f\x92\xc0\x74\x06\x48\x89\xd7\xff\x25"
        body += _rel32(A + 0x3100 + len(body) + 4, SLOT_MALLOC)
        body += b"\x55\x48\x89\xe5\x5d\xc3"
        self.rdl_alloc = self._func(self.app, A, 0x3100, 0x40, body)
        # plant: frame 32; also allocates (through __rust_alloc) -- and never runs in
        # the samples: its return addresses on the stack are all stale.
        self.plant = self._func(self.app, A, 0x4000, 0x100,
                                b"\x55\x48\x89\xe5\x41\x57\x41\x56\x53\x48\x83\xec\x08")
        self.ret_plant_alloc = self._call_slot(self.app, A, 0x4040, SLOT_RUST_ALLOC)
        # main: frame 16; calls create directly and something through a register.
        self.main = self._func(self.app, A, 0x5000, 0x100, b"\x55\x48\x89\xe5\x48\x83\xec\x10")
        self.main_frame = 16
        self.ret_main_create = self._call(self.app, A, 0x5010, self.create)
        self.app[0x5020:0x5022] = b"\xff\xd0"  # call rax
        self.ret_main_indirect = A + 0x5022
        # malloc@plt: jmp *[rip+malloc@GOT]; push 0; jmp plt0
        plt = b"\xff\x25" + _rel32(A + 0x6006, SLOT_MALLOC) + b"\x68\0\0\0\0\xe9\0\0\0\0"
        self.plt_malloc = self._func(self.app, A, 0x6000, 0x10, plt)
        # via_plt: frame 16; calls malloc through the PLT.
        self.via_plt = self._func(self.app, A, 0x6100, 0x100,
                                  b"\x55\x48\x89\xe5\x48\x83\xec\x10")
        self.ret_via_plt = self._call(self.app, A, 0x6120, self.plt_malloc)
        self.slots = [(SLOT_RUST_ALLOC, self.rust_alloc), (SLOT_MALLOC, self.malloc),
                      (SLOT_FREE, self.free), (SLOT_SHRUNK, self.shrunk),
                      (SLOT_LIBC_FP, self.libc_fp)]

    def _func(self, code: bytearray, base: int, off: int, size: int, head: bytes) -> int:
        code[off : off + len(head)] = head
        self.functions.append((base + off, base + off + size))
        return base + off

    def _call(self, code: bytearray, base: int, off: int, target: int) -> int:
        code[off : off + 5] = b"\xe8" + _rel32(base + off + 5, target)
        return base + off + 5

    def _call_slot(self, code: bytearray, base: int, off: int, slot: int) -> int:
        code[off : off + 6] = b"\xff\x15" + _rel32(base + off + 6, slot)
        return base + off + 6

    @property
    def code_ranges(self) -> list[tuple[int, int, bool, bytes | None]]:
        return [(LIBC_START, LIBC_START + CODE_SIZE, True, bytes(self.libc)),
                (APP_START, APP_START + CODE_SIZE, False, bytes(self.app))]

    @property
    def code_facts(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return sorted(self.functions), sorted(self.slots)


def stack_words(words: dict[int, int], size: int = 256) -> list[int]:
    """The copied stack as words: {byte offset from sp: value}, zeros elsewhere
    (words beyond `size` left out)."""
    out = [0] * (size // 8)
    for off, value in words.items():
        if off // 8 < len(out):
            out[off // 8] = value
    return out
