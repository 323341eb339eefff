from libc.stdint cimport uint32_t, uint64_t, int64_t


cdef inline Py_ssize_t range_index(const uint64_t* starts, const uint64_t* ends,
                                   Py_ssize_t n, uint64_t addr) noexcept nogil:
    """Index of the [starts[i], ends[i]) range holding addr, or -1. starts is sorted;
    of overlapping ranges the one with the greatest start at or below addr counts."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if starts[mid] <= addr:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0 or addr >= ends[lo - 1]:
        return -1
    return lo - 1

cdef struct StackSlot:
    uint64_t hash
    uint64_t offset   # index into the frame buffer
    uint32_t length
    uint32_t stack_id # id + 1; 0 marks an empty slot

cdef class StackTable:
    cdef StackSlot* slots
    cdef uint64_t capacity      # power of two
    cdef uint64_t count
    cdef uint64_t* frames
    cdef uint64_t frames_len
    cdef uint64_t frames_cap
    cdef uint64_t* offsets      # per stack id: offset, length packed in two arrays
    cdef uint32_t* lengths
    cdef uint64_t ids_cap
    cdef uint64_t new_from      # first stack id not yet handed out by take_new()
    cdef int _grow_slots(self) except -1
    cdef int64_t intern(self, const uint64_t* frames, uint32_t n) except -1
