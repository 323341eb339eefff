# cython: language_level=3
"""Stack deduplication by hashing, and address-to-interval lookup.

`StackTable` interns stacks (arrays of lookup addresses) and hands out dense
ids; equal stacks always get the same id, and a hash hit is confirmed by a
full comparison so two different stacks never merge. `IntervalMap` answers
"which [start, end) range holds this address" over sorted arrays.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy


cdef inline uint64_t _hash_frames(const uint64_t* frames, uint32_t n) noexcept nogil:
    # FNV-1a over 64-bit words with a final avalanche (splitmix64 finalizer).
    cdef uint64_t h = 0xcbf29ce484222325ULL ^ n
    cdef uint32_t i
    for i in range(n):
        h ^= frames[i]
        h *= 0x100000001b3ULL
        h ^= h >> 29
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


def hash_stack(frames) -> int:
    """The hash StackTable uses, for tests (frames: a sequence of ints)."""
    cdef list values = list(frames)
    cdef uint32_t n = len(values)
    cdef uint64_t* buf = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
    if buf == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            buf[i] = values[i]
        return _hash_frames(buf, n)
    finally:
        free(buf)


cdef class StackTable:
    """Insert-only interning table: stack (uint64 addresses) -> dense id."""

    def __cinit__(self, uint64_t initial_capacity=1024):
        cdef uint64_t cap = 16
        while cap < initial_capacity:
            cap <<= 1
        self.capacity = cap
        self.slots = <StackSlot*>calloc(cap, sizeof(StackSlot))
        self.frames_cap = 4096
        self.frames = <uint64_t*>calloc(self.frames_cap, sizeof(uint64_t))
        self.ids_cap = 1024
        self.offsets = <uint64_t*>calloc(self.ids_cap, sizeof(uint64_t))
        self.lengths = <uint32_t*>calloc(self.ids_cap, sizeof(uint32_t))
        if not (self.slots and self.frames and self.offsets and self.lengths):
            raise MemoryError()
        self.count = 0
        self.frames_len = 0
        self.new_from = 0

    def __dealloc__(self):
        free(self.slots)
        free(self.frames)
        free(self.offsets)
        free(self.lengths)

    def __len__(self):
        return self.count

    cdef int _grow_slots(self) except -1:
        cdef uint64_t new_cap = self.capacity * 2
        cdef StackSlot* new_slots = <StackSlot*>calloc(new_cap, sizeof(StackSlot))
        cdef uint64_t i, j
        if new_slots == NULL:
            raise MemoryError()
        for i in range(self.capacity):
            if self.slots[i].stack_id != 0:
                j = self.slots[i].hash & (new_cap - 1)
                while new_slots[j].stack_id != 0:
                    j = (j + 1) & (new_cap - 1)
                new_slots[j] = self.slots[i]
        free(self.slots)
        self.slots = new_slots
        self.capacity = new_cap
        return 0

    cdef int64_t intern(self, const uint64_t* frames, uint32_t n) except -1:
        cdef uint64_t h = _hash_frames(frames, n)
        cdef uint64_t mask, i
        cdef StackSlot* slot
        cdef void* p
        if (self.count + 1) * 4 >= self.capacity * 3:
            self._grow_slots()
        mask = self.capacity - 1
        i = h & mask
        while True:
            slot = &self.slots[i]
            if slot.stack_id == 0:
                break
            if (slot.hash == h and slot.length == n and
                    memcmp(&self.frames[slot.offset], frames, n * sizeof(uint64_t)) == 0):
                return slot.stack_id - 1
            i = (i + 1) & mask
        # New stack: append its frames, record its slot.
        while self.frames_len + n > self.frames_cap:
            p = realloc(self.frames, self.frames_cap * 2 * sizeof(uint64_t))
            if p == NULL:
                raise MemoryError()
            self.frames = <uint64_t*>p
            self.frames_cap *= 2
        if self.count >= self.ids_cap:
            p = realloc(self.offsets, self.ids_cap * 2 * sizeof(uint64_t))
            if p == NULL:
                raise MemoryError()
            self.offsets = <uint64_t*>p
            p = realloc(self.lengths, self.ids_cap * 2 * sizeof(uint32_t))
            if p == NULL:
                raise MemoryError()
            self.lengths = <uint32_t*>p
            self.ids_cap *= 2
        if n:
            memcpy(&self.frames[self.frames_len], frames, n * sizeof(uint64_t))
        slot.hash = h
        slot.offset = self.frames_len
        slot.length = n
        slot.stack_id = <uint32_t>(self.count + 1)
        self.offsets[self.count] = self.frames_len
        self.lengths[self.count] = n
        self.frames_len += n
        self.count += 1
        return self.count - 1

    def intern_list(self, frames) -> int:
        """Intern a stack given as a sequence of ints; returns its id."""
        cdef list values = list(frames)
        cdef uint32_t n = len(values)
        cdef uint64_t* buf = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
        if buf == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                buf[i] = values[i]
            return self.intern(buf, n)
        finally:
            free(buf)

    def frames_of(self, uint64_t stack_id) -> list:
        """The addresses of one stack, innermost first."""
        if stack_id >= self.count:
            raise IndexError(stack_id)
        cdef uint64_t off = self.offsets[stack_id]
        cdef uint32_t n = self.lengths[stack_id]
        return [self.frames[off + i] for i in range(n)]

    def take_new(self, uint64_t limit=0) -> list:
        """Stacks interned since the last call, as (id, list of addresses); at most
        `limit` of them (0: all), the rest at the next call."""
        cdef list out = []
        cdef uint64_t sid
        cdef uint64_t end = self.count
        if limit and end - self.new_from > limit:
            end = self.new_from + limit
        for sid in range(self.new_from, end):
            out.append((sid, self.frames_of(sid)))
        self.new_from = end
        return out


cdef class IntervalMap:
    """Sorted [start, end) intervals -> index of the interval holding an address.

    Overlapping input is allowed: the interval with the greatest start at or
    below the address wins, and only if the address is below its end.
    """

    cdef uint64_t* starts
    cdef uint64_t* ends
    cdef uint64_t* order   # index into the caller's list
    cdef Py_ssize_t n

    def __cinit__(self, starts, ends):
        cdef list s = list(starts)
        cdef list e = list(ends)
        if len(s) != len(e):
            raise ValueError("starts and ends differ in length")
        cdef list idx = sorted(range(len(s)), key=lambda k: (s[k], k))
        self.n = len(s)
        self.starts = <uint64_t*>calloc(self.n + 1, sizeof(uint64_t))
        self.ends = <uint64_t*>calloc(self.n + 1, sizeof(uint64_t))
        self.order = <uint64_t*>calloc(self.n + 1, sizeof(uint64_t))
        if not (self.starts and self.ends and self.order):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.n):
            self.starts[i] = s[idx[i]]
            self.ends[i] = e[idx[i]]
            self.order[i] = idx[i]

    def __dealloc__(self):
        free(self.starts)
        free(self.ends)
        free(self.order)

    def __len__(self):
        return self.n

    cdef inline int64_t _find(self, uint64_t addr) nogil:
        cdef Py_ssize_t i = range_index(self.starts, self.ends, self.n, addr)
        return <int64_t>self.order[i] if i >= 0 else -1

    def lookup(self, uint64_t addr) -> int:
        """Index (in the constructor's order) of the interval holding addr, or -1."""
        return self._find(addr)

    def lookup_many(self, addrs) -> list:
        return [self._find(a) for a in addrs]


def pack_u32(values) -> bytes:
    """Little-endian uint32 array (the frame-id layout of stored stacks)."""
    cdef list v = list(values)
    cdef Py_ssize_t n = len(v), i
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n * 4)
    cdef uint8_t* p = <uint8_t*><char*>out
    cdef uint32_t x
    for i in range(n):
        x = v[i]
        p[4 * i] = x & 0xff
        p[4 * i + 1] = (x >> 8) & 0xff
        p[4 * i + 2] = (x >> 16) & 0xff
        p[4 * i + 3] = (x >> 24) & 0xff
    return out
