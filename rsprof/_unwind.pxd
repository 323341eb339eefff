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


# ---- DWARF CFI unwinding (csrc/rsprof_cfi.h) ----

from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t

cdef extern from "rsprof_cfi.h":
    enum:
        RSPROF_CFI_NONE
        RSPROF_CFI_SP
        RSPROF_CFI_BP
        RSPROF_CFI_PLT11
        RSPROF_CFI_PLT10
        RSPROF_CFI_OUTERMOST
        RSPROF_CFI_UNSUPPORTED
        RSPROF_CFI_SAME

    struct rsprof_cfi_row:
        uint64_t start
        int32_t cfa_off
        int16_t bp_off
        int8_t ra_off
        uint8_t kind

    struct rsprof_cfi_table:
        rsprof_cfi_row* rows
        size_t n
        size_t fdes
        size_t unsupported_rows
        size_t bad_entries

    int rsprof_cfi_build(rsprof_cfi_table* t, const uint8_t* eh, size_t eh_len,
                         uint64_t eh_vaddr, const uint8_t* dbg, size_t dbg_len) nogil
    const rsprof_cfi_row* rsprof_cfi_find(const rsprof_cfi_table* t, uint64_t vaddr) nogil
    void rsprof_cfi_free(rsprof_cfi_table* t) nogil

# Unwind modes (Python: UNWIND_FP, UNWIND_DWARF, UNWIND_AUTO).
cdef enum:
    UM_FP = 1      # frame pointers only
    UM_DWARF = 2   # CFI only
    UM_AUTO = 3    # CFI where a usable row covers pc, else one frame-pointer step

# Why an unwind stopped (Python: STOP_END, ... and STOP_REASONS code -> name).
cdef enum:
    US_END = 0         # return address 0, or an outermost frame (_start, clone)
    US_STACK_END = 1   # a read beyond the end of the copied stack
    US_NO_MODULE = 2   # pc in no module
    US_NO_RULE = 3     # no usable CFI at pc and the mode forbids frame pointers
    US_BAD_FRAME = 4   # sp not increasing, bp outside the copy, a return address in no module
    US_MAX = 5         # max_frames reached with more to come
    US_COUNT = 6

cdef class CfiTable:
    cdef rsprof_cfi_table t

cdef class Unwinder:
    # modules sorted by start: runtime [start, end), bias, source index or -1
    cdef uint64_t* m_start
    cdef uint64_t* m_end
    cdef uint64_t* m_bias
    cdef int32_t* m_src
    cdef Py_ssize_t n_modules
    # per source index: its table once built (NULL: not yet)
    cdef const rsprof_cfi_table** src_table
    cdef Py_ssize_t n_sources
    cdef list _sources       # source objects by index
    cdef dict _cache         # id(source) -> (source, CfiTable)
    cdef public int last_stop
    cdef public uint64_t unwound
    cdef public uint64_t tables_built
    cdef uint64_t stop_counts[6]
    cdef void _free_modules(self) noexcept
    cdef const rsprof_cfi_table* _build(self, int32_t src) except NULL
    cdef uint32_t unwind(self, int mode, uint64_t ip, uint64_t sp, uint64_t bp,
                         const uint8_t* stack, uint64_t stack_len, uint64_t* frames,
                         uint32_t max_frames) except? 0xffffffff


# ---- Frame-pointer chains checked against the target's code ----

# At most this many return addresses are taken from a scanned stack (Python:
# MAX_SCANNED_FRAMES).
cdef enum:
    SCAN_MAX_FRAMES = 32

# Return addresses outside [MIN_CODE_ADDRESS, MAX_USER_ADDRESS] cannot be real:
# the null page holds no code and user space ends below 2^56 (5-level paging).
# (Python: MIN_RETURN_ADDRESS, MAX_RETURN_ADDRESS.)
cdef extern from *:
    """
    #define RSPROF_MIN_CODE_ADDRESS 4096ULL
    #define RSPROF_MAX_USER_ADDRESS 0x00ffffffffffffffULL
    """
    const uint64_t MIN_CODE_ADDRESS "RSPROF_MIN_CODE_ADDRESS"
    const uint64_t MAX_USER_ADDRESS "RSPROF_MAX_USER_ADDRESS"

cdef class FramePointerWalker:
    # executable mappings sorted by start: [start, end), system library (no frame
    # pointers), the mapped code bytes from start (NULL: unknown) and their length
    cdef uint64_t* code_starts
    cdef uint64_t* code_ends
    cdef uint8_t* code_system
    cdef const uint8_t** code_bytes
    cdef uint64_t* code_lens
    cdef list code_views        # keeps the code bytes alive
    cdef Py_ssize_t n_code
    # function bounds (FDE ranges), sorted
    cdef uint64_t* func_starts
    cdef uint64_t* func_ends
    cdef Py_ssize_t n_funcs
    # indirect call slots and their possible targets, sorted by slot
    cdef uint64_t* slot_addrs
    cdef uint64_t* slot_targets
    cdef Py_ssize_t n_slots
    cdef int reach_budget       # functions still to look into for the current call
    cdef public uint64_t scanned_stacks  # stacks given callers from the copied stack
    cdef uint32_t validate_chain(self, const uint64_t* frames, uint32_t start, uint32_t n,
                                 bint* cut) noexcept
    cdef uint32_t scan_caller(self, uint64_t* frames, uint32_t n, uint32_t max_frames,
                              bint has_regs, uint64_t bp, uint64_t sp, const uint8_t* stack,
                              uint64_t stack_len, bint* cut) noexcept
    cdef Py_ssize_t _code_index(self, uint64_t addr) noexcept
    cdef int _code_kind(self, uint64_t addr) noexcept
    cdef bint _follows_call(self, Py_ssize_t i, uint64_t addr) noexcept
    cdef Py_ssize_t _func_index(self, uint64_t addr) noexcept
    cdef const uint8_t* _code_ptr(self, uint64_t addr, uint64_t* avail) noexcept
    cdef int64_t _fp_frame(self, uint64_t fstart, uint64_t* plen) noexcept
    cdef int _slot_reaches(self, uint64_t slot, uint64_t callee, int depth) noexcept
    cdef bint _reaches(self, uint64_t target, uint64_t callee, int depth) noexcept
    cdef bint _indirect_call_before(self, const uint8_t* code, uint64_t o) noexcept
    cdef int _call_reaches(self, uint64_t ret, uint64_t callee) noexcept
    cdef bint _return_into(self, uint64_t w, uint64_t* fn) noexcept
    cdef bint _anchor_a(self, uint64_t w, uint64_t leaf_fn, const uint8_t* stack,
                        uint64_t off) noexcept
