# cython: language_level=3
"""Stack interning as a prefix tree, and address-to-interval lookup.

`StackTable` interns stacks (arrays of lookup addresses) and hands out dense
ids; equal stacks always get the same id and different ones never merge.
Stacks live in a trie keyed by (parent node, frame), outermost frame nearest
the root, so stacks that share their outer frames share that storage.
`IntervalMap` answers "which [start, end) range holds this address" over
sorted arrays.

`CfiTable` is one object's DWARF call frame information (.eh_frame,
.debug_frame) as a sorted table of unwind rows (csrc/rsprof_cfi.c), and
`Unwinder` walks a copied stack through the tables of every mapped object,
built the first time an address of the object is unwound through;
`Unwinder.runtime_rows()` merges all of them, at runtime addresses, into the
one table the shim walks heap stacks with (rsprof/recording/heap_unwind.py).

`FramePointerWalker` holds the target's code (executable mappings and their
bytes, function bounds, indirect call slots) and checks frame-pointer stacks
against it: a chain is cut at the first word that is no return address, and a
leaf's callers are recovered from the copied stack when its frame-pointer
chain cannot be trusted (docs/attribution.md).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy


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


# ---- DWARF CFI unwinding ----

UNWIND_FP = UM_FP
UNWIND_DWARF = UM_DWARF
UNWIND_AUTO = UM_AUTO

STOP_END = US_END
STOP_STACK_END = US_STACK_END
STOP_NO_MODULE = US_NO_MODULE
STOP_NO_RULE = US_NO_RULE
STOP_BAD_FRAME = US_BAD_FRAME
STOP_MAX = US_MAX
STOP_REASONS = {US_END: "end", US_STACK_END: "stack_end", US_NO_MODULE: "no_module",
                US_NO_RULE: "no_rule", US_BAD_FRAME: "bad_frame", US_MAX: "max"}

_KIND_NAMES = {RSPROF_CFI_NONE: "none", RSPROF_CFI_SP: "sp", RSPROF_CFI_BP: "bp",
               RSPROF_CFI_PLT11: "plt11", RSPROF_CFI_PLT10: "plt10",
               RSPROF_CFI_OUTERMOST: "outermost", RSPROF_CFI_UNSUPPORTED: "unsupported"}


cdef object _u8_view(object buf):
    """A 1-D unsigned-byte memoryview of buf (no copy), or None when empty."""
    if buf is None:
        return None
    cdef object m = memoryview(buf)
    if m.ndim != 1 or m.format != "B":
        m = m.cast("B")
    return m if len(m) else None


cdef class CfiTable:
    """The unwind rows of one object, built from its .eh_frame (whose pc-relative
    pointers need the section's vaddr) and/or .debug_frame; addresses are object
    vaddrs. Nothing refers to the input buffers once built."""

    def __cinit__(self, eh_frame, uint64_t eh_frame_vaddr=0, debug_frame=None):
        cdef const uint8_t[::1] ehv
        cdef const uint8_t[::1] dbgv
        cdef const uint8_t* eh = NULL
        cdef const uint8_t* dbg = NULL
        cdef size_t eh_len = 0, dbg_len = 0
        cdef int rc
        m = _u8_view(eh_frame)
        if m is not None:
            ehv = m
            eh = &ehv[0]
            eh_len = ehv.shape[0]
        m = _u8_view(debug_frame)
        if m is not None:
            dbgv = m
            dbg = &dbgv[0]
            dbg_len = dbgv.shape[0]
        with nogil:
            rc = rsprof_cfi_build(&self.t, eh, eh_len, eh_frame_vaddr, dbg, dbg_len)
        if rc != 0:
            raise MemoryError()

    def __dealloc__(self):
        rsprof_cfi_free(&self.t)

    @property
    def row_count(self) -> int:
        return self.t.n

    @property
    def fde_count(self) -> int:
        """FDEs decoded (those of an empty address range included)."""
        return self.t.fdes

    @property
    def unsupported_rows(self) -> int:
        return self.t.unsupported_rows

    @property
    def bad_entries(self) -> int:
        """CIEs and FDEs skipped as malformed (or using what the parser refuses)."""
        return self.t.bad_entries

    @property
    def memory_bytes(self) -> int:
        return self.t.n * sizeof(rsprof_cfi_row)

    def lookup(self, uint64_t vaddr):
        """None when no CFI covers vaddr, else (kind, cfa_off, bp_off, ra_off): kind
        "sp"/"bp" (CFA = that register + cfa_off), "plt" (the .plt expression; cfa_off
        8), "outermost" (no caller) or "unsupported"; bp_off None when rbp is
        unchanged, else rbp is saved at CFA + bp_off; the return address is at
        CFA + ra_off."""
        cdef const rsprof_cfi_row* row = rsprof_cfi_find(&self.t, vaddr)
        if row == NULL or row.kind == RSPROF_CFI_NONE:
            return None
        kind = _KIND_NAMES[row.kind]
        if kind.startswith("plt"):
            kind = "plt"
        return (kind, row.cfa_off, None if row.bp_off == RSPROF_CFI_SAME else row.bp_off,
                row.ra_off)

    def rows(self) -> list:
        """Every row as (start, kind, cfa_off, bp_off, ra_off), kind as in lookup but
        "none" for the end of coverage and "plt11"/"plt10" for the PLT thresholds."""
        cdef size_t i
        cdef const rsprof_cfi_row* row
        out = []
        for i in range(self.t.n):
            row = &self.t.rows[i]
            out.append((row.start, _KIND_NAMES[row.kind], row.cfa_off,
                        None if row.bp_off == RSPROF_CFI_SAME else row.bp_off, row.ra_off))
        return out


cdef inline int _read_u64(const uint8_t* stack, uint64_t lo, uint64_t n, uint64_t addr,
                          uint64_t* out) noexcept nogil:
    """[addr] from the copy of [lo, lo + n): 0, or -1 below it, 1 beyond its end."""
    cdef uint64_t d = addr - lo
    if addr < lo:
        return -1
    if n < 8 or d > n - 8:
        return 1
    memcpy(out, stack + d, 8)
    return 0



# ---- Runtime rows: every module's rules at its runtime addresses, in one table ----

CFI_ROW_BYTES = sizeof(rsprof_cfi_row)  # bytes per row of Unwinder.runtime_rows()

cdef inline bint _same_rule(const rsprof_cfi_row* a, const rsprof_cfi_row* b) noexcept nogil:
    return (a.kind == b.kind and a.cfa_off == b.cfa_off and a.bp_off == b.bp_off
            and a.ra_off == b.ra_off)


cdef inline size_t _emit_row(rsprof_cfi_row* out, size_t n, uint64_t start,
                             const rsprof_cfi_row* rule) noexcept nogil:
    """Append rule's rules from `start` on to out[:n]; the new count. Starts never
    decrease: a row at the start of the last one replaces it, and a row with the
    rules of the one before it is not needed (merged)."""
    if n and out[n - 1].start >= start:
        n -= 1
    if n and _same_rule(&out[n - 1], rule):
        return n
    out[n] = rule[0]
    out[n].start = start
    return n + 1


cdef size_t _module_rows(rsprof_cfi_row* out, size_t n, uint64_t start, uint64_t end,
                         uint64_t bias, const rsprof_cfi_table* tab,
                         const rsprof_cfi_row* none) noexcept nogil:
    """Append the rows of one module, runtime [start, end) = object [start - bias,
    end - bias) of table tab (NULL: no rules), then a NONE row at end."""
    cdef uint64_t lo = start - bias, hi = end - bias
    cdef size_t a = 0, b, mid, j
    if tab == NULL or tab.n == 0 or hi <= lo:
        n = _emit_row(out, n, start, none)
    else:
        b = tab.n  # a: the first row starting after lo
        while a < b:
            mid = (a + b) >> 1
            if tab.rows[mid].start <= lo:
                a = mid + 1
            else:
                b = mid
        if a > 0:
            n = _emit_row(out, n, start, &tab.rows[a - 1])
        else:
            n = _emit_row(out, n, start, none)
        j = a
        while j < tab.n and tab.rows[j].start < hi:
            n = _emit_row(out, n, tab.rows[j].start + bias, &tab.rows[j])
            j += 1
    return _emit_row(out, n, end, none)


cdef class Unwinder:
    """Walks a copied stack through the CFI of the mapped objects (x86-64).

    Frames follow this project's convention: the sampled ip, then each caller's
    return address minus one. Tables are built lazily, once per source object
    (cached by identity across set_modules calls)."""

    def __cinit__(self):
        self.m_start = NULL
        self.m_end = NULL
        self.m_bias = NULL
        self.m_src = NULL
        self.n_modules = 0
        self.src_table = NULL
        self.n_sources = 0
        self._sources = []
        self._cache = {}
        self.last_stop = US_END
        self.unwound = 0
        self.tables_built = 0
        cdef int i
        for i in range(US_COUNT):
            self.stop_counts[i] = 0

    def __dealloc__(self):
        self._free_modules()

    cdef void _free_modules(self) noexcept:
        free(self.m_start)
        free(self.m_end)
        free(self.m_bias)
        free(self.m_src)
        free(<void*>self.src_table)
        self.m_start = self.m_end = self.m_bias = NULL
        self.m_src = NULL
        self.src_table = NULL
        self.n_modules = 0
        self.n_sources = 0

    def set_modules(self, modules) -> None:
        """modules: (start, end, bias, source) of every executable mapping, runtime
        address = object vaddr + bias; source None (no CFI) or an object with
        eh_frame, eh_frame_vaddr and debug_frame (rsprof.recording.unwind_info)."""
        cdef list mods = sorted((tuple(m) for m in modules), key=lambda m: (m[0], m[1]))
        cdef Py_ssize_t n = len(mods), i
        cdef list sources = []
        cdef dict index = {}
        cdef dict cache = {}
        cdef list src_of = []
        for start, end, bias, src in mods:
            if src is None:
                src_of.append(-1)
                continue
            k = id(src)
            if k not in index:
                index[k] = len(sources)
                sources.append(src)
                old = self._cache.get(k)
                if old is not None and old[0] is src:
                    cache[k] = old
            src_of.append(index[k])
        self._free_modules()
        self.m_start = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
        self.m_end = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
        self.m_bias = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
        self.m_src = <int32_t*>calloc(n + 1, sizeof(int32_t))
        self.src_table = <const rsprof_cfi_table**>calloc(len(sources) + 1,
                                                            sizeof(rsprof_cfi_table*))
        if not (self.m_start and self.m_end and self.m_bias and self.m_src and self.src_table):
            self._free_modules()
            raise MemoryError()
        for i in range(n):
            self.m_start[i] = mods[i][0]
            self.m_end[i] = mods[i][1]
            self.m_bias[i] = mods[i][2] & 0xFFFFFFFFFFFFFFFF
            self.m_src[i] = src_of[i]
        self.n_modules = n
        self._sources = sources
        self._cache = cache
        self.n_sources = len(sources)
        for i in range(self.n_sources):
            entry = cache.get(id(sources[i]))
            if entry is not None:
                self.src_table[i] = &(<CfiTable>entry[1]).t

    cdef const rsprof_cfi_table* _build(self, int32_t src) except NULL:
        """The table of source `src`, built now. A source whose sections cannot be
        read gets an empty table (no CFI), not an error in the middle of a walk."""
        cdef CfiTable table
        obj = self._sources[src]
        try:
            table = CfiTable(obj.eh_frame, obj.eh_frame_vaddr, obj.debug_frame)
        except MemoryError:
            raise
        except Exception:
            table = CfiTable(None, 0, None)
        self._cache[id(obj)] = (obj, table)
        self.src_table[src] = &table.t
        self.tables_built += 1
        return &table.t

    cdef uint32_t unwind(self, int mode, uint64_t ip, uint64_t sp, uint64_t bp,
                         const uint8_t* stack, uint64_t stack_len, uint64_t* frames,
                         uint32_t max_frames) except? 0xffffffff:
        """Fill frames[0] = ip, then callers' return addresses minus one; the count.
        stack is a copy of [sp, sp + stack_len) of the sampled thread."""
        cdef uint32_t n = 0
        cdef int stop = US_END, rc
        cdef uint64_t pc = ip, cur_sp = sp, cur_bp = bp, cfa = 0, ra = 0
        cdef uint64_t new_sp = 0, new_bp = 0
        cdef bint first = True
        cdef Py_ssize_t mi
        cdef int32_t src
        cdef const rsprof_cfi_table* tab
        cdef const rsprof_cfi_row* row
        if stack == NULL:
            stack_len = 0
        if stack_len > 0xFFFFFFFFFFFFFFFF - sp:
            stack_len = 0xFFFFFFFFFFFFFFFF - sp
        cdef uint64_t hi = sp + stack_len
        self.unwound += 1
        if max_frames == 0:
            stop = US_MAX
        else:
            frames[0] = ip
            n = 1
        while n:
            mi = range_index(self.m_start, self.m_end, self.n_modules, pc)
            if mi < 0:
                stop = US_NO_MODULE
                break
            row = NULL
            src = self.m_src[mi]
            if mode != UM_FP and src >= 0:
                tab = self.src_table[src]
                if tab == NULL:
                    tab = self._build(src)
                row = rsprof_cfi_find(tab, (pc if first else pc - 1) - self.m_bias[mi])
                if row != NULL and (row.kind == RSPROF_CFI_NONE
                                    or row.kind == RSPROF_CFI_UNSUPPORTED):
                    row = NULL
            if row != NULL:
                if row.kind == RSPROF_CFI_OUTERMOST:
                    stop = US_END
                    break
                if row.kind == RSPROF_CFI_SP:
                    cfa = cur_sp + <uint64_t><int64_t>row.cfa_off
                elif row.kind == RSPROF_CFI_BP:
                    if cur_bp < sp or cur_bp >= hi:
                        stop = US_BAD_FRAME
                        break
                    cfa = cur_bp + <uint64_t><int64_t>row.cfa_off
                else:  # the .plt expression
                    cfa = cur_sp + 8
                    if (pc & 15) >= (11 if row.kind == RSPROF_CFI_PLT11 else 10):
                        cfa += 8
                rc = _read_u64(stack, sp, stack_len, cfa + <uint64_t><int64_t>row.ra_off, &ra)
                if rc == 0 and row.bp_off != RSPROF_CFI_SAME:
                    rc = _read_u64(stack, sp, stack_len, cfa + <uint64_t><int64_t>row.bp_off,
                                   &new_bp)
                elif rc == 0:
                    new_bp = cur_bp
                if rc != 0:
                    stop = US_STACK_END if rc > 0 else US_BAD_FRAME
                    break
                new_sp = cfa
            elif mode == UM_DWARF:
                stop = US_NO_RULE
                break
            else:  # one frame-pointer step: [bp] = caller's bp, [bp + 8] = return address
                if cur_bp <= cur_sp or cur_bp < sp or cur_bp >= hi or cur_bp & 7:
                    stop = US_BAD_FRAME
                    break
                rc = _read_u64(stack, sp, stack_len, cur_bp + 8, &ra)
                if rc == 0:
                    rc = _read_u64(stack, sp, stack_len, cur_bp, &new_bp)
                if rc != 0:
                    stop = US_STACK_END if rc > 0 else US_BAD_FRAME
                    break
                new_sp = cur_bp + 16
            if ra == 0:
                stop = US_END
                break
            if new_sp <= cur_sp:
                stop = US_BAD_FRAME
                break
            if range_index(self.m_start, self.m_end, self.n_modules, ra) < 0:
                stop = US_BAD_FRAME
                break
            if n >= max_frames:
                stop = US_MAX
                break
            frames[n] = ra - 1
            n += 1
            pc = ra
            cur_sp = new_sp
            cur_bp = new_bp
            first = False
        self.last_stop = stop
        self.stop_counts[stop] += 1
        return n

    def runtime_rows(self) -> bytes:
        """Every module's rules at runtime addresses, as one sorted table: the packed
        rows (struct rsprof_cfi_row, CFI_ROW_BYTES each, native byte order) that the
        shim unwinds heap stacks with (rsprof/recording/heap_unwind.py).

        Builds the table of every source now (not lazily). Per module, by start:
        its rows with start + bias, clipped to [start, end) (the row covering start
        becomes a row at start; rows at or after end are dropped); a module without
        rules (no source, or an empty table) is one NONE row at its start. Each
        module ends with a NONE row at its end (the gap up to the next module),
        unless the next module starts there. Of overlapping modules, the one with
        the greater start owns the overlap (as in unwind()). Consecutive rows with
        the same rules are merged, so starts strictly increase."""
        cdef Py_ssize_t i, src
        cdef size_t cap = 1, n = 0
        cdef uint64_t end
        cdef const rsprof_cfi_table* tab
        cdef rsprof_cfi_row none
        cdef rsprof_cfi_row* out
        none.start = 0
        none.cfa_off = 0
        none.bp_off = RSPROF_CFI_SAME
        none.ra_off = 0
        none.kind = RSPROF_CFI_NONE
        for src in range(self.n_sources):
            if self.src_table[src] == NULL:
                self._build(<int32_t>src)
        for i in range(self.n_modules):
            cap += 2
            if self.m_src[i] >= 0:
                cap += self.src_table[self.m_src[i]].n
        out = <rsprof_cfi_row*>calloc(cap, sizeof(rsprof_cfi_row))
        if out == NULL:
            raise MemoryError()
        try:
            with nogil:
                for i in range(self.n_modules):
                    end = self.m_end[i]
                    if i + 1 < self.n_modules and self.m_start[i + 1] < end:
                        end = self.m_start[i + 1]
                    if end <= self.m_start[i]:
                        continue  # empty, or all of it owned by the next module
                    tab = self.src_table[self.m_src[i]] if self.m_src[i] >= 0 else NULL
                    n = _module_rows(out, n, self.m_start[i], end, self.m_bias[i], tab, &none)
            return PyBytes_FromStringAndSize(<char*>out, n * sizeof(rsprof_cfi_row))
        finally:
            free(out)

    @property
    def stops(self) -> dict:
        """Unwinds ended per stop reason name."""
        return {STOP_REASONS[i]: self.stop_counts[i] for i in range(US_COUNT)}

    @property
    def module_count(self) -> int:
        return self.n_modules

    @property
    def memory_bytes(self) -> int:
        """Bytes of the rule tables built so far and of the module arrays."""
        cdef size_t total = self.n_modules * (3 * sizeof(uint64_t) + sizeof(int32_t))
        for _obj, table in self._cache.values():
            total += (<CfiTable>table).t.n * sizeof(rsprof_cfi_row)
        return total

    def unwind_py(self, int mode, uint64_t ip, uint64_t sp, uint64_t bp, stack,
                  uint32_t max_frames=127) -> tuple:
        """unwind() for tests: (frames, stop reason name)."""
        cdef const uint8_t[::1] view
        cdef const uint8_t* p = NULL
        cdef uint64_t n = 0
        m = _u8_view(stack)
        if m is not None:
            view = m
            p = &view[0]
            n = view.shape[0]
        cdef uint64_t* frames = <uint64_t*>calloc(max_frames + 1, sizeof(uint64_t))
        if frames == NULL:
            raise MemoryError()
        try:
            count = self.unwind(mode, ip, sp, bp, p, n, frames, max_frames)
            return [frames[i] for i in range(count)], STOP_REASONS[self.last_stop]
        finally:
            free(frames)


# ---- Frame-pointer chains checked against the target's code ----

# Checking a return address against the frame below it (docs/attribution.md):
# does the call before it reach that function? Yes, no, or unknown (an
# indirect call through a register or an unknown slot); -1: not after a call.
DEF REACH_NOT_CALL = -1
DEF REACH_NO = 0
DEF REACH_YES = 1
DEF REACH_UNKNOWN = 2
# Jumps followed from a call's target to the function it reaches (PLT stubs,
# GOT jumps, thunks, tail jumps of small functions), and the largest function
# searched for tail jumps.
DEF REACH_DEPTH = 3
DEF TAIL_SEARCH_BYTES = 256
# At most this many functions are looked into for one call: the code bytes are
# the target's, so the work stays bounded whatever they hold.
DEF REACH_BUDGET = 16
THUNK_DEPTH = REACH_DEPTH
TAIL_SEARCH_MAX = TAIL_SEARCH_BYTES
REACH_WORK = REACH_BUDGET
MAX_SCANNED_FRAMES = SCAN_MAX_FRAMES
MIN_RETURN_ADDRESS = MIN_CODE_ADDRESS
MAX_RETURN_ADDRESS = MAX_USER_ADDRESS


cdef class FramePointerWalker:
    """The target's code as frame-pointer stacks are checked against it, and the
    checked walking that uses it (x86-64, docs/attribution.md).

    It holds the executable mappings with their code bytes (set_code_ranges) and
    the function bounds and indirect call slots (set_code_facts). validate_chain
    cuts a frame-pointer chain at the first word that is no return address (not
    right after a call in executable code); scan_caller recovers the callers of a
    leaf whose own frame the chain skipped or misread, from the copied top of the
    stack, keeping only return addresses whose calls reach the function below.
    Both work in place on the caller's frame array (the IP, then return addresses
    minus one, as `Unwinder` fills it) and create no Python objects.
    """

    def __dealloc__(self):
        free(self.code_starts)
        free(self.code_ends)
        free(self.code_system)
        free(self.code_bytes)
        free(self.code_lens)
        free(self.func_starts)
        free(self.func_ends)
        free(self.slot_addrs)
        free(self.slot_targets)

    cdef uint32_t validate_chain(self, const uint64_t* frames, uint32_t start, uint32_t n,
                                 bint* cut) noexcept:
        """How much of a frame-pointer chain to keep: the index of the first of
        frames[start:n] (lookup addresses: return address - 1) whose return address
        is not in executable code right after a call (garbage the walk read, not a
        caller), *cut then set; else n. Without code ranges nothing is checked.
        Never less than start."""
        cdef uint32_t k = start
        cdef Py_ssize_t ci
        if self.n_code <= 0:
            return n if n > start else start
        while k < n:
            ci = self._code_index(frames[k])
            if ci < 0 or not self._follows_call(ci, frames[k] + 1):
                cut[0] = True
                return k
            k += 1
        return k

    cdef Py_ssize_t _code_index(self, uint64_t addr) noexcept:
        """Index of the executable mapping holding addr, or -1."""
        return range_index(self.code_starts, self.code_ends, self.n_code, addr)

    cdef int _code_kind(self, uint64_t addr) noexcept:
        """0: in no executable mapping, 1: system library (no frame pointers), 2: other code."""
        cdef Py_ssize_t i = self._code_index(addr)
        if i < 0:
            return 0
        return 1 if self.code_system[i] else 2

    cdef bint _follows_call(self, Py_ssize_t i, uint64_t addr) noexcept:
        """Whether the instruction before addr is an x86-64 call (so addr is a return
        address, not a stale function pointer). Unknown code bytes: trust it."""
        cdef const uint8_t* code = self.code_bytes[i]
        cdef uint64_t o = addr - self.code_starts[i]
        if code == NULL or o > self.code_lens[i]:
            return True
        if o >= 5 and code[o - 5] == 0xE8:
            return True  # call rel32
        if o >= 6 and code[o - 6] == 0xFF and code[o - 5] == 0x15:
            return True  # call [rip+disp32]
        return self._indirect_call_before(code, o)

    def set_code_ranges(self, ranges) -> None:
        """Executable mappings as (start, end, is_system_library, code bytes or None).

        The code bytes (the mapped part of the file, from `start`) let the stack
        scan check that a candidate return address follows a call instruction.
        """
        cdef list items = sorted(((int(r[0]), int(r[1]), bool(r[2]), r[3]) for r in ranges),
                                 key=lambda r: r[0])
        cdef Py_ssize_t n = len(items), i
        cdef const uint8_t[::1] view
        self.code_starts = <uint64_t*>_grown(self.code_starts, (n + 1) * 8)
        self.code_ends = <uint64_t*>_grown(self.code_ends, (n + 1) * 8)
        self.code_system = <uint8_t*>_grown(self.code_system, n + 1)
        self.code_bytes = <const uint8_t**>_grown(self.code_bytes, (n + 1) * sizeof(uint8_t*))
        self.code_lens = <uint64_t*>_grown(self.code_lens, (n + 1) * 8)
        self.code_views = []
        for i in range(n):
            self.code_starts[i] = items[i][0]
            self.code_ends[i] = items[i][1]
            self.code_system[i] = 1 if items[i][2] else 0
            self.code_bytes[i] = NULL
            self.code_lens[i] = 0
            if items[i][3] is not None and len(items[i][3]) > 0:
                view = items[i][3]
                self.code_views.append(view)
                self.code_bytes[i] = &view[0]
                self.code_lens[i] = view.shape[0]
        self.n_code = n

    def set_code_facts(self, functions, slots) -> None:
        """Function bounds [(start, end)] and indirect call slots [(slot, target)],
        runtime addresses (rsprof/recording/code_facts.py): what recovered return
        addresses are checked against (docs/attribution.md). A slot may be listed
        with several possible targets."""
        cdef list fs = sorted((int(a), int(b)) for a, b in functions)
        cdef list ss = sorted((int(a), int(b)) for a, b in slots)
        cdef Py_ssize_t nf = len(fs), ns = len(ss), i
        self.func_starts = <uint64_t*>_grown(self.func_starts, (nf + 1) * 8)
        self.func_ends = <uint64_t*>_grown(self.func_ends, (nf + 1) * 8)
        self.slot_addrs = <uint64_t*>_grown(self.slot_addrs, (ns + 1) * 8)
        self.slot_targets = <uint64_t*>_grown(self.slot_targets, (ns + 1) * 8)
        for i in range(nf):
            self.func_starts[i] = fs[i][0]
            self.func_ends[i] = fs[i][1]
        for i in range(ns):
            self.slot_addrs[i] = ss[i][0]
            self.slot_targets[i] = ss[i][1]
        self.n_funcs = nf
        self.n_slots = ns

    cdef Py_ssize_t _func_index(self, uint64_t addr) noexcept:
        """Index of the function (FDE range) holding addr, or -1."""
        return range_index(self.func_starts, self.func_ends, self.n_funcs, addr)

    cdef const uint8_t* _code_ptr(self, uint64_t addr, uint64_t* avail) noexcept:
        """The mapped code bytes from addr (avail: how many), or NULL if unknown."""
        cdef Py_ssize_t i = self._code_index(addr)
        cdef uint64_t o
        avail[0] = 0
        if i < 0 or self.code_bytes[i] == NULL:
            return NULL
        o = addr - self.code_starts[i]
        if o >= self.code_lens[i]:
            return NULL
        avail[0] = self.code_lens[i] - o
        return self.code_bytes[i] + o

    cdef int64_t _fp_frame(self, uint64_t fstart, uint64_t* plen) noexcept:
        """Bytes from rbp down to rsp at the calls of the function at fstart, if it
        begins with a frame-pointer prologue ([endbr64] push rbp; mov rbp, rsp;
        pushes; [sub rsp, n]) and keeps rsp fixed after it; plen: the prologue's
        length. -1 otherwise."""
        cdef uint64_t avail, p = 0
        cdef const uint8_t* c = self._code_ptr(fstart, &avail)
        cdef int64_t size = 0
        cdef int32_t imm32
        if c == NULL or avail < 48:
            return -1
        if c[0] == 0xF3 and c[1] == 0x0F and c[2] == 0x1E and c[3] == 0xFA:
            p = 4
        if c[p] != 0x55:
            return -1
        if c[p + 1] == 0x48 and ((c[p + 2] == 0x89 and c[p + 3] == 0xE5) or
                                 (c[p + 2] == 0x8B and c[p + 3] == 0xEC)):
            p += 4
        else:
            return -1
        while p + 2 < avail and size < 64:
            if 0x50 <= c[p] <= 0x57 and c[p] != 0x54:
                size += 8
                p += 1
            elif c[p] == 0x41 and 0x50 <= c[p + 1] <= 0x57:
                size += 8
                p += 2
            else:
                break
        if p + 7 > 24:
            return -1
        if c[p] == 0x48 and c[p + 1] == 0x83 and c[p + 2] == 0xEC:
            if c[p + 3] >= 0x80:
                return -1
            size += c[p + 3]
            p += 4
        elif c[p] == 0x48 and c[p + 1] == 0x81 and c[p + 2] == 0xEC:
            memcpy(&imm32, c + p + 3, 4)
            if imm32 < 0 or imm32 >= 0x1000:
                return -1  # large frames are probed page by page: not one fixed step
            size += imm32
            p += 7
        # rsp realigned (and rsp, imm), moved by a register (stack probes: sub rsp,
        # rax / r11) or a further sub: its distance from rbp is not fixed.
        if c[p] == 0x48 and (c[p + 1] == 0x83 or c[p + 1] == 0x81) and \
                (c[p + 2] == 0xE4 or c[p + 2] == 0xEC):
            return -1
        if (c[p] == 0x48 or c[p] == 0x4C) and c[p + 1] == 0x29 and (c[p + 2] & 0xC7) == 0xC4:
            return -1
        if (c[p] == 0x49 and c[p + 1] == 0x89 and c[p + 2] == 0xE3) or \
                (c[p] == 0x4C and c[p + 1] == 0x8D and c[p + 2] == 0x9C and c[p + 3] == 0x24):
            return -1  # mov r11, rsp / lea r11, [rsp - n]: a stack probe loop follows
        plen[0] = p
        return size

    cdef int _slot_reaches(self, uint64_t slot, uint64_t callee, int depth) noexcept:
        """Whether a jump or call through the 8-byte slot can land in callee:
        REACH_YES, REACH_NO, or REACH_UNKNOWN when the slot is not a known one."""
        cdef Py_ssize_t lo = 0, hi = self.n_slots, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.slot_addrs[mid] < slot:
                lo = mid + 1
            else:
                hi = mid
        if lo >= self.n_slots or self.slot_addrs[lo] != slot:
            return REACH_UNKNOWN
        while lo < self.n_slots and self.slot_addrs[lo] == slot:
            if self._reaches(self.slot_targets[lo], callee, depth):
                return REACH_YES
            lo += 1
        return REACH_NO

    cdef bint _reaches(self, uint64_t target, uint64_t callee, int depth) noexcept:
        """Whether control entering at target reaches the function starting at
        callee without another call: target is callee, or a PLT stub, GOT jump or
        jump thunk to it, or a small function with a tail jump to it (followed
        REACH_DEPTH jumps deep, REACH_BUDGET functions per call checked)."""
        cdef uint64_t avail, p = 0, q, dest, size
        cdef const uint8_t* c
        cdef int32_t rel
        cdef Py_ssize_t fi
        if target == callee:
            return True
        if depth >= REACH_DEPTH or self.reach_budget <= 0:
            return False
        self.reach_budget -= 1
        c = self._code_ptr(target, &avail)
        if c == NULL or avail < 16:
            return False
        if c[0] == 0xF3 and c[1] == 0x0F and c[2] == 0x1E and c[3] == 0xFA:
            p = 4  # endbr64
        if c[p] == 0x55 and c[p + 1] == 0x48 and c[p + 2] == 0x89 and c[p + 3] == 0xE5 and \
                c[p + 4] == 0x5D:
            p += 5  # push rbp; mov rbp, rsp; pop rbp (a Rust thunk that keeps frame pointers)
        if c[p] == 0xE9:
            memcpy(&rel, c + p + 1, 4)
            return self._reaches(target + p + 5 + <int64_t>rel, callee, depth + 1)
        if c[p] == 0xEB:
            return self._reaches(target + p + 2 + <int8_t>c[p + 1], callee, depth + 1)
        if c[p] == 0xF2 and c[p + 1] == 0xFF and c[p + 2] == 0x25:
            p += 1  # bnd jmp
        if c[p] == 0xFF and c[p + 1] == 0x25:
            memcpy(&rel, c + p + 2, 4)
            return self._slot_reaches(target + p + 6 + <int64_t>rel, callee,
                                      depth + 1) == REACH_YES
        # Not a thunk. A small function may end in tail jumps (jmp rel32, jcc
        # rel32, jmp *slot): look for one to callee. A byte pattern that is not
        # really a jump would have to hit callee's exact address to count.
        fi = self._func_index(target)
        if fi < 0 or self.func_starts[fi] != target:
            return False
        size = self.func_ends[fi] - target
        if size > TAIL_SEARCH_BYTES or size > avail:
            return False
        for q in range(size):
            if q + 5 <= size and c[q] == 0xE9:
                memcpy(&rel, c + q + 1, 4)
                dest = target + q + 5 + <int64_t>rel
            elif q + 6 <= size and c[q] == 0x0F and (c[q + 1] & 0xF0) == 0x80:
                memcpy(&rel, c + q + 2, 4)
                dest = target + q + 6 + <int64_t>rel
            elif q + 6 <= size and c[q] == 0xFF and c[q + 1] == 0x25:
                memcpy(&rel, c + q + 2, 4)
                if self._slot_reaches(target + q + 6 + <int64_t>rel, callee,
                                      depth + 1) == REACH_YES:
                    return True
                continue
            else:
                continue
            if dest == callee:
                return True
            if target <= dest < target + size:
                continue
            fi = self._func_index(dest)
            if fi >= 0 and self.func_starts[fi] == dest and self._reaches(dest, callee, depth + 1):
                return True
        return False

    cdef bint _indirect_call_before(self, const uint8_t* code, uint64_t o) noexcept:
        """Whether the bytes before code[o] end an indirect call (FF /2) other than
        call [rip+disp32]."""
        cdef uint8_t modrm
        if o >= 2 and code[o - 2] == 0xFF:
            modrm = code[o - 1]
            if (modrm & 0x38) == 0x10 and (modrm & 0xC0) == 0xC0:
                return True  # call reg
            if (modrm & 0x38) == 0x10 and (modrm & 0xC0) == 0 and (modrm & 7) != 4 and (modrm & 7) != 5:
                return True  # call [reg]
        if o >= 3 and code[o - 3] == 0xFF:
            modrm = code[o - 2]
            if (modrm & 0x38) == 0x10 and (((modrm & 0xC0) == 0x40 and (modrm & 7) != 4) or
                                           ((modrm & 0xC0) == 0 and (modrm & 7) == 4)):
                return True  # call [reg+disp8], call [sib]
        if o >= 4 and code[o - 4] == 0xFF:
            modrm = code[o - 3]
            if (modrm & 0x38) == 0x10 and (modrm & 0xC0) == 0x40 and (modrm & 7) == 4:
                return True  # call [sib+disp8]
        if o >= 6 and code[o - 6] == 0xFF:
            modrm = code[o - 5]
            if (modrm & 0x38) == 0x10 and (modrm & 0xC0) == 0x80 and (modrm & 7) != 4:
                return True  # call [reg+disp32]
        if o >= 7 and code[o - 7] == 0xFF:
            modrm = code[o - 6]
            if (modrm & 0x38) == 0x10 and (modrm & 0xC0) == 0x80 and (modrm & 7) == 4:
                return True  # call [sib+disp32]
        return False

    cdef int _call_reaches(self, uint64_t ret, uint64_t callee) noexcept:
        """Does the call instruction that ret returns from reach the function starting
        at callee? REACH_YES / REACH_NO / REACH_UNKNOWN (indirect), REACH_NOT_CALL
        (no call before ret, or its code bytes unknown)."""
        cdef Py_ssize_t i
        cdef const uint8_t* code
        cdef uint64_t o
        cdef int32_t rel
        cdef int r, result = REACH_NOT_CALL
        self.reach_budget = REACH_BUDGET
        if ret <= MIN_CODE_ADDRESS or ret > MAX_USER_ADDRESS:
            return REACH_NOT_CALL
        i = self._code_index(ret - 1)
        if i < 0 or self.code_bytes[i] == NULL:
            return REACH_NOT_CALL
        code = self.code_bytes[i]
        o = ret - self.code_starts[i]
        if o > self.code_lens[i]:
            return REACH_NOT_CALL
        if o >= 5 and code[o - 5] == 0xE8:  # call rel32
            memcpy(&rel, code + o - 4, 4)
            if self._reaches(ret + <int64_t>rel, callee, 0):
                return REACH_YES
            result = REACH_NO
        if o >= 6 and code[o - 6] == 0xFF and code[o - 5] == 0x15:  # call [rip+disp32]
            memcpy(&rel, code + o - 4, 4)
            r = self._slot_reaches(ret + <int64_t>rel, callee, 0)
            if r == REACH_YES:
                return REACH_YES
            if r == REACH_UNKNOWN or result == REACH_NOT_CALL:
                result = r
        if self._indirect_call_before(code, o):
            result = REACH_UNKNOWN
        return result

    cdef bint _return_into(self, uint64_t w, uint64_t* fn) noexcept:
        """Whether stack word w can be a return address: it follows a call in known
        code bytes, inside a known function (its start in fn)."""
        cdef Py_ssize_t fi
        cdef uint64_t avail
        if w <= MIN_CODE_ADDRESS or w > MAX_USER_ADDRESS:
            return False
        fi = self._code_index(w - 1)
        if fi < 0 or self.code_bytes[fi] == NULL or w - self.code_starts[fi] > self.code_lens[fi] \
                or not self._follows_call(fi, w):
            return False
        fi = self._func_index(w - 1)
        if fi < 0:
            return False
        fn[0] = self.func_starts[fi]
        return True

    cdef uint32_t scan_caller(self, uint64_t* frames, uint32_t n, uint32_t max_frames,
                              bint has_regs, uint64_t bp, uint64_t sp, const uint8_t* stack,
                              uint64_t stack_len, bint* cut) noexcept:
        """Make frames[:n] (the IP, then the kernel's frame-pointer chain) an honest
        stack; returns the new frame count. bp and sp are the sampled registers (when
        has_regs), stack the copy of the stack_len bytes at sp. A stack with callers
        recovered from the copy is counted in scanned_stacks and has at most
        max_frames frames (more than SCAN_MAX_FRAMES; frames has room for them); *cut
        is set when the stack ends before its outermost frame. docs/attribution.md
        has the rule:

        1. The leaf's function keeps a frame pointer and bp is its frame: the
           kernel's chain is right.
        2. Otherwise the copied stack (from sp) is searched for the anchor, the
           word that bp proves is a live return address: the return address of
           the frame record at bp (at bp + 8), or one into a frame-pointer
           function whose frame, by its prologue, is exactly at bp. Between the
           leaf and the anchor, the return addresses that chain up to it (each
           returns from a call that reaches the function below it) are kept; the
           kernel's chain continues above the anchor.
        3. No anchor: only return addresses that chain up from the leaf are kept
           (through a frame-pointer function's frame record when its prologue
           gives it), and the stack ends there (cut).

        Without function bounds nothing can be checked: code without frame
        pointers (a system library) keeps only its leaf, other code the chain.
        """
        cdef uint64_t leaf = frames[0], fn, w, s, callee, plen, v
        cdef uint64_t off, anchor_off = 0, fallback
        cdef int64_t frame
        cdef Py_ssize_t fi
        cdef int kind = self._code_kind(leaf), anchor = 0, r
        cdef uint32_t nscan = 0, i, out, keep_from
        cdef uint64_t found[SCAN_MAX_FRAMES]
        cdef bint pinned
        fi = self._func_index(leaf) if self.n_code > 0 else -1
        if fi < 0:
            if kind == 1:
                cut[0] = True
                return 1
            return n
        callee = self.func_starts[fi]
        frame = self._fp_frame(callee, &plen)
        if has_regs and frame >= 0 and leaf >= callee + plen and sp + <uint64_t>frame == bp:
            return n
        if not has_regs or stack_len < 8:
            cut[0] = True
            return 1
        # 2. The anchor: the lowest word that bp proves.
        off = 0
        while off + 8 <= stack_len:
            memcpy(&w, stack + off, 8)
            s = sp + off
            if n > 1 and self._return_into(w, &fn):
                if s == bp + 8 and frames[1] == w - 1 and self._anchor_a(w, callee, stack, off):
                    anchor = 1
                    break
                frame = self._fp_frame(fn, &plen)
                if frame >= 0 and s + 8 + <uint64_t>frame == bp and \
                        self._call_reaches(frames[1] + 1, fn) != REACH_NO:
                    anchor = 2
                    break
            off += 8
        if anchor:
            anchor_off = off
            off = 0
            while off < anchor_off and nscan < SCAN_MAX_FRAMES - 1:
                memcpy(&w, stack + off, 8)
                if self._return_into(w, &fn) and self._call_reaches(w, callee) == REACH_YES:
                    found[nscan] = w - 1
                    nscan += 1
                    callee = fn
                off += 8
            memcpy(&w, stack + anchor_off, 8)
            if nscan > 0 and self._call_reaches(w, callee) != REACH_YES:
                nscan = 0  # what was found below does not lead up to the anchor
            found[nscan] = w - 1
            nscan += 1
            keep_from = 2 if anchor == 1 else 1
            out = 1 + nscan + (n - keep_from)
            if out > max_frames:
                out = max_frames
            i = out
            while i > 1 + nscan:
                i -= 1
                frames[i] = frames[keep_from + (i - 1 - nscan)]
            for i in range(nscan):
                frames[1 + i] = found[i]
            self.scanned_stacks += 1
            return out
        # 3. No anchor: return addresses that chain up from the leaf, then the end.
        cut[0] = True
        off = 0
        fallback = 0
        pinned = False
        while off + 8 <= stack_len and nscan < SCAN_MAX_FRAMES:
            memcpy(&w, stack + off, 8)
            if self._return_into(w, &fn) and self._call_reaches(w, callee) == REACH_YES:
                found[nscan] = w - 1
                nscan += 1
                callee = fn
                pinned = False
                frame = self._fp_frame(fn, &plen)
                if frame >= 0:
                    # fn's frame record is right above its calls' return address:
                    # its caller's return address is exactly there.
                    v = sp + off + 8 + <uint64_t>frame
                    if v + 16 <= sp + stack_len:
                        fallback = off + 8
                        off = v + 8 - sp
                        pinned = True
                        continue
                off += 8
                continue
            if pinned:
                pinned = False
                off = fallback
                continue
            off += 8
        if nscan == 0:
            return 1
        for i in range(nscan):
            frames[1 + i] = found[i]
        self.scanned_stacks += 1
        return 1 + nscan

    cdef bint _anchor_a(self, uint64_t w, uint64_t leaf_fn, const uint8_t* stack,
                        uint64_t off) noexcept:
        """w, at bp + 8, is the return address of the frame record at bp. Confirm it
        returns from a call that can reach a function that may own that record: the
        leaf's, or one that a return address below it returns into."""
        cdef uint64_t o = 0, x, fn
        if self._call_reaches(w, leaf_fn) != REACH_NO:
            return True
        while o < off:
            memcpy(&x, stack + o, 8)
            if self._return_into(x, &fn) and self._call_reaches(w, fn) != REACH_NO:
                return True
            o += 8
        return False
