# cython: language_level=3
"""Stack interning as a prefix tree, and address-to-interval lookup.

`StackTable` interns stacks (arrays of lookup addresses) and hands out dense
ids; equal stacks always get the same id and different ones never merge.
Stacks live in a trie keyed by (parent node, frame), outermost frame nearest
the root, so stacks that share their outer frames share that storage.
`IntervalMap` answers "which [start, end) range holds this address" over
sorted arrays.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc


cdef inline uint64_t _edge_hash(uint32_t parent, uint64_t frame) noexcept nogil:
    cdef uint64_t h = frame * 0x9e3779b97f4a7c15ULL ^ (<uint64_t>parent * 0xc2b2ae3d27d4eb4fULL)
    h ^= h >> 29
    h *= 0xbf58476d1ce4e5b9ULL
    h ^= h >> 32
    return h


cdef void* _grown(void* p, uint64_t nbytes) except NULL:
    cdef void* q = realloc(p, nbytes)
    if q == NULL:
        raise MemoryError()
    return q


cdef class StackTable:
    """Insert-only interning table: stack (uint64 addresses) -> dense id.

    Storage is a trie: per node its frame, parent and stack id (16 bytes),
    a hash index of node ids by (parent, frame), and per stack id its node
    and depth. A node becomes a stack only when something is interned or
    charged to it (`stack_of_node`).
    """

    def __cinit__(self, uint64_t initial_capacity=1024):
        cdef uint64_t cap = 16
        while cap < initial_capacity:
            cap <<= 1
        self.index_cap = cap
        self.index = <uint32_t*>calloc(cap, sizeof(uint32_t))
        self.nodes_cap = cap
        self.nodes = <TrieNode*>calloc(cap, sizeof(TrieNode))
        self.ids_cap = cap
        self.stack_node = <uint32_t*>calloc(cap, sizeof(uint32_t))
        self.stack_depth = <uint32_t*>calloc(cap, sizeof(uint32_t))
        if not (self.index and self.nodes and self.stack_node and self.stack_depth):
            raise MemoryError()
        self.nodes[0].frame = 0
        self.nodes[0].parent = 0
        self.nodes[0].stack = NO_ID
        self.n_nodes = 1
        self.count = 0
        self.new_from = 0

    def __dealloc__(self):
        free(self.index)
        free(self.nodes)
        free(self.stack_node)
        free(self.stack_depth)

    def __len__(self):
        return self.count

    @property
    def node_count(self) -> int:
        """Trie nodes, the root included."""
        return self.n_nodes

    @property
    def memory_bytes(self) -> int:
        """Bytes of C memory held (allocated capacity, not only what is used)."""
        return (self.nodes_cap * sizeof(TrieNode) + self.index_cap * sizeof(uint32_t)
                + self.ids_cap * 2 * sizeof(uint32_t))

    cdef int _grow_index(self) except -1:
        cdef uint64_t cap = self.index_cap * 2, mask = cap - 1, i, node
        cdef uint32_t* index = <uint32_t*>calloc(cap, sizeof(uint32_t))
        if index == NULL:
            raise MemoryError()
        for node in range(1, self.n_nodes):
            i = _edge_hash(self.nodes[node].parent, self.nodes[node].frame) & mask
            while index[i] != 0:
                i = (i + 1) & mask
            index[i] = <uint32_t>node
        free(self.index)
        self.index = index
        self.index_cap = cap
        return 0

    cdef uint32_t child(self, uint32_t parent, uint64_t frame) except 0:
        """The node of [frame] + the stack of `parent`, made if new (never 0)."""
        cdef uint64_t mask, i
        cdef uint32_t node
        if parent >= self.n_nodes:
            raise IndexError(parent)
        if (self.n_nodes + 1) * 4 >= self.index_cap * 3:
            self._grow_index()
        mask = self.index_cap - 1
        i = _edge_hash(parent, frame) & mask
        while True:
            node = self.index[i]
            if node == 0:
                break
            if self.nodes[node].frame == frame and self.nodes[node].parent == parent:
                return node
            i = (i + 1) & mask
        if self.n_nodes >= NO_ID:
            raise OverflowError("stack trie full")
        if self.n_nodes == self.nodes_cap:
            self.nodes = <TrieNode*>_grown(self.nodes, self.nodes_cap * 2 * sizeof(TrieNode))
            self.nodes_cap *= 2
        node = <uint32_t>self.n_nodes
        self.nodes[node].frame = frame
        self.nodes[node].parent = parent
        self.nodes[node].stack = NO_ID
        self.index[i] = node
        self.n_nodes += 1
        return node

    cdef int64_t node_of(self, const uint64_t* frames, uint32_t n) except -1:
        """The node of a stack (frames innermost first), made if new."""
        cdef uint32_t node = 0
        while n:
            n -= 1
            node = self.child(node, frames[n])
        return node

    cdef int64_t stack_of_node(self, uint32_t node) except -1:
        """The stack id of the stack ending at `node`, given one if it has none."""
        cdef uint32_t depth = 0, up
        cdef uint32_t sid
        if node >= self.n_nodes:
            raise IndexError(node)
        sid = self.nodes[node].stack
        if sid != NO_ID:
            return sid
        if self.count >= NO_ID:
            raise OverflowError("too many stacks")
        if self.count == self.ids_cap:
            self.stack_node = <uint32_t*>_grown(self.stack_node,
                                                self.ids_cap * 2 * sizeof(uint32_t))
            self.stack_depth = <uint32_t*>_grown(self.stack_depth,
                                                 self.ids_cap * 2 * sizeof(uint32_t))
            self.ids_cap *= 2
        up = node
        while up != 0:
            up = self.nodes[up].parent
            depth += 1
        sid = <uint32_t>self.count
        self.stack_node[sid] = node
        self.stack_depth[sid] = depth
        self.nodes[node].stack = sid
        self.count += 1
        return sid

    cdef int64_t intern(self, const uint64_t* frames, uint32_t n) except -1:
        return self.stack_of_node(<uint32_t>self.node_of(frames, n))

    def intern_list(self, frames) -> int:
        """Intern a stack given as a sequence of ints (innermost first); returns its id."""
        cdef list values = list(frames)
        cdef Py_ssize_t i = len(values)
        cdef uint32_t node = 0
        while i:
            i -= 1
            node = self.child(node, values[i])
        return self.stack_of_node(node)

    def add_child(self, uint32_t parent, uint64_t frame) -> int:
        """The node of [frame] + the stack of node `parent`, made if new (tests)."""
        return self.child(parent, frame)

    def stack_of(self, uint32_t node) -> int:
        """The stack id of the stack ending at `node`, given one if it has none (tests)."""
        return self.stack_of_node(node)

    def frames_of(self, uint64_t stack_id) -> list:
        """The addresses of one stack, innermost first."""
        if stack_id >= self.count:
            raise IndexError(stack_id)
        cdef uint32_t node = self.stack_node[stack_id]
        cdef uint32_t i, n = self.stack_depth[stack_id]
        cdef list out = [None] * n
        for i in range(n):
            out[i] = self.nodes[node].frame
            node = self.nodes[node].parent
        return out

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
