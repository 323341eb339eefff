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

# "None" in u32 id fields (here and in _ring.pyx): a C constant (a DEF of 0xffffffff
# is a Python int, and comparing a C value with it boxes the value).
cdef extern from *:
    """
    #define RSPROF_NO_ID 0xffffffffu
    """
    const uint32_t NO_ID "RSPROF_NO_ID"

cdef struct TrieNode:
    uint64_t frame    # this node's address: the innermost frame of its stack
    uint32_t parent   # the node of the stack without that frame (node 0: the root)
    uint32_t stack    # the stack id of the stack ending here, or NO_ID

cdef class StackTable:
    cdef TrieNode* nodes        # node 0 is the root, the empty stack
    cdef uint64_t n_nodes
    cdef uint64_t nodes_cap
    cdef uint32_t* index        # open addressing by (parent, frame): node ids, 0 empty
    cdef uint64_t index_cap     # power of two
    cdef uint32_t* stack_node   # per stack id: its node and its depth
    cdef uint32_t* stack_depth
    cdef uint64_t count         # stacks
    cdef uint64_t ids_cap
    cdef uint64_t new_from      # first stack id not yet handed out by take_new()
    cdef int _grow_index(self) except -1
    cdef uint32_t child(self, uint32_t parent, uint64_t frame) except 0
    cdef int64_t node_of(self, const uint64_t* frames, uint32_t n) except -1
    cdef int64_t stack_of_node(self, uint32_t node) except -1
    cdef int64_t intern(self, const uint64_t* frames, uint32_t n) except -1
