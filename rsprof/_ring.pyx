# cython: language_level=3
"""Perf mmap rings: open cpu-clock events, drain and decode their records.

The decoder turns PERF_RECORD_SAMPLE records into (interval, tid, stack id)
counts without creating Python objects per sample: stacks are interned in a
`StackTable` (from `_unwind`), counts accumulate in a C hash table. Records
that matter but are rare (COMM, FORK, EXIT) are queued as Python tuples.
Everything lost or malformed is counted.

Stack convention: the first address is the sampled IP, every further one is
a return address minus 1, so each is a lookup address as is.
"""

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.unistd cimport close, sysconf, _SC_PAGESIZE
from posix.types cimport pid_t

from rsprof._unwind cimport NO_ID, StackTable, range_index


cdef extern from "rsprof_perf.h":
    struct perf_event_mmap_page:
        uint64_t data_offset
        uint64_t data_size
    struct perf_event_header:
        uint32_t type
        uint16_t misc
        uint16_t size
    enum:
        PERF_RECORD_SAMPLE
        PERF_RECORD_LOST
        PERF_RECORD_COMM
        PERF_RECORD_EXIT
        PERF_RECORD_FORK
        PERF_RECORD_THROTTLE
        PERF_RECORD_UNTHROTTLE
        RSPROF_MAX_STACK
        RSPROF_MAX_RECORD
        RSPROF_NREGS
        RSPROF_STACK_BYTES
    uint64_t RSPROF_SAMPLE_TYPE
    uint64_t RSPROF_CONTEXT_MAX
    uint64_t RSPROF_CONTEXT_USER
    int rsprof_perf_open(int tid, int cpu, uint64_t freq, int inherit, int watermark_bytes)
    int rsprof_perf_set_output(int fd, int target_fd)
    uint64_t rsprof_ring_head(perf_event_mmap_page* page)
    uint64_t rsprof_ring_tail(perf_event_mmap_page* page)
    void rsprof_ring_set_tail(perf_event_mmap_page* page, uint64_t tail)


# Record type numbers for Python code (taken from the kernel header, never retyped).
RECORD_SAMPLE = PERF_RECORD_SAMPLE
RECORD_LOST = PERF_RECORD_LOST
RECORD_COMM = PERF_RECORD_COMM
RECORD_EXIT = PERF_RECORD_EXIT
RECORD_FORK = PERF_RECORD_FORK
RECORD_THROTTLE = PERF_RECORD_THROTTLE
RECORD_UNTHROTTLE = PERF_RECORD_UNTHROTTLE
SAMPLE_TYPE = RSPROF_SAMPLE_TYPE
CONTEXT_MAX = RSPROF_CONTEXT_MAX
CONTEXT_USER = RSPROF_CONTEXT_USER
MAX_STACK = RSPROF_MAX_STACK
NREGS = RSPROF_NREGS
STACK_BYTES = RSPROF_STACK_BYTES
# At most this many return addresses are taken from a scanned stack.
DEF SCAN_MAX_FRAMES = 32
MAX_SCANNED_FRAMES = SCAN_MAX_FRAMES
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

# Return addresses outside [MIN_CODE_ADDRESS, MAX_USER_ADDRESS] cannot be real:
# the null page holds no code and user space ends below 2^56 (5-level paging).
cdef uint64_t MIN_CODE_ADDRESS = 4096
cdef uint64_t MAX_USER_ADDRESS = 0x00ffffffffffffff
MIN_RETURN_ADDRESS = MIN_CODE_ADDRESS
MAX_RETURN_ADDRESS = MAX_USER_ADDRESS


def open_cpu_clock(int tid, int cpu, uint64_t freq, bint inherit, int watermark_bytes) -> int:
    """Open a cpu-clock sampling event; returns the fd or raises OSError."""
    cdef int fd = rsprof_perf_open(tid, cpu, freq, inherit, watermark_bytes)
    if fd < 0:
        import os
        raise OSError(-fd, os.strerror(-fd))
    return fd


def set_output(int fd, int target_fd) -> None:
    """Redirect fd's records into target_fd's ring."""
    cdef int rc = rsprof_perf_set_output(fd, target_fd)
    if rc < 0:
        import os
        raise OSError(-rc, os.strerror(-rc))


cdef inline uint64_t _mix(uint64_t a, uint64_t b) noexcept nogil:
    cdef uint64_t h = a * 0x9e3779b97f4a7c15ULL ^ (b + 0x632be59bd9b4e019ULL)
    h ^= h >> 31
    h *= 0xbf58476d1ce4e5b9ULL
    h ^= h >> 29
    return h


cdef void* _resized(void* p, size_t nbytes, size_t old_bytes) except NULL:
    """realloc that raises MemoryError; bytes past old_bytes come back zeroed."""
    cdef void* q = realloc(p, nbytes if nbytes else 1)
    if q == NULL:
        raise MemoryError()
    if nbytes > old_bytes:
        memset(<uint8_t*>q + old_bytes, 0, nbytes - old_bytes)
    return q


cdef struct CountSlot:
    uint64_t key      # tid << 32 | stack id
    uint64_t interval # interval index + 1; 0 marks an empty slot
    uint64_t count
    uint64_t ns       # nanoseconds of CPU the samples stand for (their periods summed)


cdef class PerfDecoder:
    """Decodes perf records of one recording into aggregated sample counts."""

    cdef public StackTable stacks
    cdef CountSlot* slots
    cdef uint64_t capacity
    cdef uint64_t used
    cdef uint8_t* scratch
    cdef uint64_t* frames
    cdef public uint32_t target_pid
    cdef public int64_t start_ns
    cdef public int64_t interval_ns
    cdef public uint64_t samples
    cdef public uint64_t lost
    cdef public uint64_t truncated
    cdef public uint64_t throttled
    cdef public uint64_t other_process_samples
    cdef public uint64_t malformed
    cdef public uint64_t early_samples
    cdef public uint64_t broken_chains
    cdef public uint64_t scanned_stacks
    cdef uint64_t* code_starts
    cdef uint64_t* code_ends
    cdef uint8_t* code_system
    cdef const uint8_t** code_bytes
    cdef uint64_t* code_lens
    cdef list code_views
    cdef Py_ssize_t n_code
    cdef uint64_t* func_starts
    cdef uint64_t* func_ends
    cdef Py_ssize_t n_funcs
    cdef uint64_t* slot_addrs
    cdef uint64_t* slot_targets
    cdef Py_ssize_t n_slots
    cdef int reach_budget
    cdef public list events

    def __cinit__(self, StackTable stacks, uint32_t target_pid, int64_t start_ns,
                  int64_t interval_ns):
        if interval_ns <= 0:
            raise ValueError("interval_ns must be positive")
        self.stacks = stacks
        self.target_pid = target_pid
        self.start_ns = start_ns
        self.interval_ns = interval_ns
        self.capacity = 1024
        self.slots = <CountSlot*>calloc(self.capacity, sizeof(CountSlot))
        self.scratch = <uint8_t*>calloc(RSPROF_MAX_RECORD + 16, 1)
        self.frames = <uint64_t*>calloc(RSPROF_MAX_RECORD // 8 + 2, sizeof(uint64_t))
        if not (self.slots and self.scratch and self.frames):
            raise MemoryError()
        self.events = []

    def __dealloc__(self):
        free(self.slots)
        free(self.scratch)
        free(self.frames)
        free(self.code_starts)
        free(self.code_ends)
        free(self.code_system)
        free(self.code_bytes)
        free(self.code_lens)
        free(self.func_starts)
        free(self.func_ends)
        free(self.slot_addrs)
        free(self.slot_targets)

    cdef int _grow(self) except -1:
        cdef uint64_t old_cap = self.capacity, i, j, new_cap = self.capacity * 2
        cdef CountSlot* new_slots = <CountSlot*>calloc(new_cap, sizeof(CountSlot))
        if new_slots == NULL:
            raise MemoryError()
        for i in range(old_cap):
            if self.slots[i].interval:
                j = _mix(self.slots[i].key, self.slots[i].interval) & (new_cap - 1)
                while new_slots[j].interval:
                    j = (j + 1) & (new_cap - 1)
                new_slots[j] = self.slots[i]
        free(self.slots)
        self.slots = new_slots
        self.capacity = new_cap
        return 0

    cdef int _count(self, uint64_t key, uint64_t interval, uint64_t period) except -1:
        cdef uint64_t i, mask
        if (self.used + 1) * 4 >= self.capacity * 3:
            self._grow()
        mask = self.capacity - 1
        i = _mix(key, interval + 1) & mask
        while self.slots[i].interval:
            if self.slots[i].key == key and self.slots[i].interval == interval + 1:
                self.slots[i].count += 1
                self.slots[i].ns += period
                return 0
            i = (i + 1) & mask
        self.slots[i].key = key
        self.slots[i].interval = interval + 1
        self.slots[i].count = 1
        self.slots[i].ns = period
        self.used += 1
        return 0

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
        self.code_starts = <uint64_t*>_resized(self.code_starts, (n + 1) * 8, 0)
        self.code_ends = <uint64_t*>_resized(self.code_ends, (n + 1) * 8, 0)
        self.code_system = <uint8_t*>_resized(self.code_system, n + 1, 0)
        self.code_bytes = <const uint8_t**>_resized(self.code_bytes, (n + 1) * sizeof(uint8_t*), 0)
        self.code_lens = <uint64_t*>_resized(self.code_lens, (n + 1) * 8, 0)
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
        self.func_starts = <uint64_t*>_resized(self.func_starts, (nf + 1) * 8, 0)
        self.func_ends = <uint64_t*>_resized(self.func_ends, (nf + 1) * 8, 0)
        self.slot_addrs = <uint64_t*>_resized(self.slot_addrs, (ns + 1) * 8, 0)
        self.slot_targets = <uint64_t*>_resized(self.slot_targets, (ns + 1) * 8, 0)
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

    cdef uint32_t _scan_caller(self, uint32_t n, bint has_regs, uint64_t bp, uint64_t sp,
                               const uint8_t* stack, uint64_t stack_len, bint* cut) noexcept:
        """Make self.frames[:n] (the IP, then the kernel's frame-pointer chain) an
        honest stack; returns the new frame count. docs/attribution.md has the rule:

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
        cdef uint64_t leaf = self.frames[0], fn, w, s, callee, plen, v
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
                if s == bp + 8 and self.frames[1] == w - 1 and self._anchor_a(w, callee, stack, off):
                    anchor = 1
                    break
                frame = self._fp_frame(fn, &plen)
                if frame >= 0 and s + 8 + <uint64_t>frame == bp and \
                        self._call_reaches(self.frames[1] + 1, fn) != REACH_NO:
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
            if out > RSPROF_MAX_STACK + SCAN_MAX_FRAMES:
                out = RSPROF_MAX_STACK + SCAN_MAX_FRAMES
            i = out
            while i > 1 + nscan:
                i -= 1
                self.frames[i] = self.frames[keep_from + (i - 1 - nscan)]
            for i in range(nscan):
                self.frames[1 + i] = found[i]
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
            self.frames[1 + i] = found[i]
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

    cdef int _sample(self, const uint8_t* rec, uint32_t size) except -1:
        # Layout for RSPROF_SAMPLE_TYPE: u64 ip; u32 pid, tid; u64 time; u64 period;
        # u64 nr; u64 ips[nr]; u64 abi; u64 regs[NREGS] if abi; u64 size;
        # u8 data[size]; u64 dyn_size if size.
        cdef uint64_t ip, t, period, nr, i, entry, pos, abi = 0, bp = 0, sp = 0
        cdef uint64_t stack_size = 0, dyn_size = 0
        cdef const uint8_t* stack = NULL
        cdef uint32_t pid, tid, n = 0, k
        cdef bint in_user = True, cut = False
        cdef Py_ssize_t ci
        cdef int64_t rel
        cdef uint64_t interval
        cdef int64_t sid
        if size < 8 + 40:
            self.malformed += 1
            return 0
        memcpy(&ip, rec + 8, 8)
        memcpy(&pid, rec + 16, 4)
        memcpy(&tid, rec + 20, 4)
        memcpy(&t, rec + 24, 8)
        memcpy(&period, rec + 32, 8)
        memcpy(&nr, rec + 40, 8)
        if nr > (size - 48) // 8:
            self.malformed += 1
            return 0
        pos = 48 + 8 * nr
        if pos + 8 > size:
            self.malformed += 1
            return 0
        memcpy(&abi, rec + pos, 8)
        pos += 8
        if abi != 0:
            if pos + 8 * RSPROF_NREGS > size:
                self.malformed += 1
                return 0
            if RSPROF_NREGS == 2:
                memcpy(&bp, rec + pos, 8)
                memcpy(&sp, rec + pos + 8, 8)
            pos += 8 * RSPROF_NREGS
        if pos + 8 > size:
            self.malformed += 1
            return 0
        memcpy(&stack_size, rec + pos, 8)
        pos += 8
        if stack_size:
            if stack_size > size - pos or size - pos - stack_size < 8:
                self.malformed += 1
                return 0
            stack = rec + pos
            memcpy(&dyn_size, rec + pos + stack_size, 8)
            if dyn_size > stack_size:
                dyn_size = stack_size
        if pid != self.target_pid:
            self.other_process_samples += 1
            return 0
        for i in range(nr):
            memcpy(&entry, rec + 48 + 8 * i, 8)
            if entry >= RSPROF_CONTEXT_MAX:
                # A context marker: only user-space entries are kept.
                in_user = entry == RSPROF_CONTEXT_USER
                continue
            if not in_user:
                continue
            if n > 0 and (entry < MIN_CODE_ADDRESS or entry > MAX_USER_ADDRESS):
                # A frame pointer chain that ran into garbage (code that keeps no
                # frame pointers): what follows is not a call chain.
                cut = True
                break
            self.frames[n] = entry if n == 0 else entry - 1
            n += 1
        if n == 0:
            # No user callchain (e.g. the frame walk failed at once): keep the IP.
            self.frames[0] = ip
            n = 1
        if n >= RSPROF_MAX_STACK:
            self.truncated += 1
        if self.n_code > 0:
            # Every return address of the chain returns into code, after a call:
            # a word that does not is garbage the walk read, not a caller.
            for k in range(1, n):
                ci = self._code_index(self.frames[k])
                if ci < 0 or not self._follows_call(ci, self.frames[k] + 1):
                    n = k
                    cut = True
                    break
        n = self._scan_caller(n, abi != 0, bp, sp, stack, dyn_size if stack != NULL else 0, &cut)
        if cut:
            self.broken_chains += 1
        return self._count_frames(tid, t, n, period)

    cdef int _count_frames(self, uint32_t tid, uint64_t t, uint32_t n,
                           uint64_t period) except -1:
        """Intern self.frames[:n] and count one sample of thread tid at time t that
        stands for `period` nanoseconds of CPU."""
        cdef int64_t sid = self.stacks.intern(self.frames, n)
        cdef int64_t rel = <int64_t>t - self.start_ns
        if rel < 0:
            self.early_samples += 1
            rel = 0
        self.samples += 1
        self._count((<uint64_t>tid << 32) | <uint64_t>sid, <uint64_t>(rel // self.interval_ns),
                    period)
        return 0

    cdef int _self_sample(self, uint32_t tid, uint64_t t, uint64_t period, const uint8_t* raw,
                          uint32_t depth) except -1:
        """Count one sample from the shim's self-sampler like a perf sample."""
        cdef uint32_t i, n = 0
        cdef uint64_t entry, interval
        cdef int64_t rel, sid
        for i in range(depth):
            memcpy(&entry, raw + 8 * i, 8)
            if n > 0 and (entry < MIN_CODE_ADDRESS or entry > MAX_USER_ADDRESS):
                self.broken_chains += 1
                break
            self.frames[n] = entry if n == 0 else entry - 1
            n += 1
        if n == 0:
            self.malformed += 1
            return 0
        return self._count_frames(tid, t, n, period)

    cdef int _record(self, const uint8_t* rec, uint32_t rtype, uint32_t size) except -1:
        cdef uint64_t v
        cdef uint32_t pid, tid, ppid, ptid
        cdef uint64_t t
        cdef Py_ssize_t nlen
        if rtype == PERF_RECORD_SAMPLE:
            return self._sample(rec, size)
        if rtype == PERF_RECORD_LOST:
            if size >= 24:
                memcpy(&v, rec + 16, 8)
                self.lost += v
            else:
                self.malformed += 1
        elif rtype == PERF_RECORD_COMM:
            if size >= 17:
                memcpy(&pid, rec + 8, 4)
                memcpy(&tid, rec + 12, 4)
                nlen = 0
                while 16 + nlen < size and rec[16 + nlen] != 0:
                    nlen += 1
                name = (<char*>(rec + 16))[:nlen].decode("utf-8", "replace")
                self.events.append(("comm", pid, tid, 0, name))
            else:
                self.malformed += 1
        elif rtype == PERF_RECORD_FORK or rtype == PERF_RECORD_EXIT:
            if size >= 32:
                memcpy(&pid, rec + 8, 4)
                memcpy(&ppid, rec + 12, 4)
                memcpy(&tid, rec + 16, 4)
                memcpy(&ptid, rec + 20, 4)
                memcpy(&t, rec + 24, 8)
                self.events.append(("fork" if rtype == PERF_RECORD_FORK else "exit",
                                    pid, tid, t, ""))
            else:
                self.malformed += 1
        elif rtype == PERF_RECORD_THROTTLE:
            self.throttled += 1
        return 0

    cdef uint64_t decode(self, const uint8_t* data, uint64_t size, uint64_t tail,
                         uint64_t head) except? 0xffffffffffffffff:
        """Decode records in data[tail:head) (positions modulo size, a power of two).

        Returns the new tail. Garbage (a bad size, head running past tail by
        more than the ring) is counted and skipped, never looped on.
        """
        cdef uint64_t pos = tail, avail, off, first
        cdef perf_event_header hdr
        cdef const uint8_t* rec
        if size == 0 or (size & (size - 1)) != 0:
            self.malformed += 1
            return head
        if head - tail > size:
            self.malformed += 1
            return head
        while head - pos >= sizeof(perf_event_header):
            off = pos & (size - 1)
            if off + sizeof(perf_event_header) <= size:
                memcpy(&hdr, data + off, sizeof(perf_event_header))
            else:
                first = size - off
                memcpy(self.scratch, data + off, first)
                memcpy(self.scratch + first, data, sizeof(perf_event_header) - first)
                memcpy(&hdr, self.scratch, sizeof(perf_event_header))
            avail = head - pos
            if hdr.size < sizeof(perf_event_header) or hdr.size > avail:
                self.malformed += 1
                return head
            if off + hdr.size <= size:
                rec = data + off
            else:
                first = size - off
                memcpy(self.scratch, data + off, first)
                memcpy(self.scratch + first, data, hdr.size - first)
                rec = self.scratch
            self._record(rec, hdr.type, hdr.size)
            pos += hdr.size
        if pos != head:
            # Records are 8-byte aligned; a tail shorter than a header is garbage.
            self.malformed += 1
        return head

    def decode_bytes(self, const uint8_t[::1] data, uint64_t tail, uint64_t head) -> int:
        """Decode a ring's data area given as bytes (for tests and replay)."""
        return self.decode(&data[0] if data.shape[0] else NULL, data.shape[0], tail, head)

    def take_counts(self) -> list:
        """(interval, tid, stack_id, count, ns) accumulated since the last call: ns is
        the nanoseconds of CPU the samples stand for (the sum of their periods)."""
        cdef list out = []
        cdef uint64_t i
        for i in range(self.capacity):
            if self.slots[i].interval:
                out.append((self.slots[i].interval - 1, self.slots[i].key >> 32,
                            self.slots[i].key & 0xffffffff, self.slots[i].count,
                            self.slots[i].ns))
        memset(self.slots, 0, self.capacity * sizeof(CountSlot))
        self.used = 0
        return out

    def take_events(self) -> list:
        """(kind, pid, tid, time, name) thread events since the last call."""
        cdef list out = self.events
        self.events = []
        return out


cdef class PerfRing:
    """One mmapped perf ring (1 header page + 2^n data pages)."""

    cdef readonly int fd
    cdef perf_event_mmap_page* page
    cdef uint8_t* data
    cdef size_t map_len
    cdef readonly uint64_t data_size

    def __cinit__(self, int fd, int data_pages):
        if data_pages <= 0 or (data_pages & (data_pages - 1)) != 0:
            raise ValueError("data_pages must be a power of two")
        cdef size_t pagesz = sysconf(_SC_PAGESIZE)
        self.fd = fd
        self.map_len = pagesz * (1 + data_pages)
        cdef void* p = mmap(NULL, self.map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        cdef int err = errno  # mmap's own errno, read before anything else can change it
        if p == MAP_FAILED:
            import os
            raise OSError(err, os.strerror(err))  # "cannot map the perf ring: ..." upstream
        self.page = <perf_event_mmap_page*>p
        self.data_size = self.page.data_size if self.page.data_size else pagesz * data_pages
        self.data = <uint8_t*>p + (self.page.data_offset if self.page.data_offset else pagesz)

    def __dealloc__(self):
        if self.page != NULL:
            munmap(self.page, self.map_len)
            self.page = NULL

    def drain(self, PerfDecoder decoder) -> int:
        """Decode everything the kernel has written; returns bytes consumed."""
        if self.page == NULL:
            return 0
        cdef uint64_t head = rsprof_ring_head(self.page)
        cdef uint64_t tail = rsprof_ring_tail(self.page)
        cdef uint64_t new_tail = decoder.decode(self.data, self.data_size, tail, head)
        rsprof_ring_set_tail(self.page, new_tail)
        return new_tail - tail

    def close(self) -> None:
        if self.page != NULL:
            munmap(self.page, self.map_len)
            self.page = NULL


# ---------------------------------------------------------------------------
# The shim's shared-memory ring (csrc/rsprof_shm.h) and the heap bookkeeping.
# ---------------------------------------------------------------------------

cdef extern from "<signal.h>" nogil:
    union sigval:
        int sival_int
        void *sival_ptr
    int sigqueue(pid_t pid, int sig, const sigval value)
    enum:
        SIGPROF

cdef extern from "<errno.h>" nogil:
    int errno

cdef extern from "rsprof_reader.h":
    struct rsprof_shm_header:
        uint64_t magic
        uint32_t version
        uint32_t header_bytes
        uint64_t ring_size
        uint32_t pid
        uint32_t max_frames
        uint64_t reserve
        uint64_t dropped
        uint64_t waits
        uint64_t interned
        uint64_t raw_stacks
        uint64_t truncated
        uint64_t tail
        uint64_t heartbeat_ns
        uint32_t reader_pid
        uint32_t state
        uint32_t session
        uint32_t reserved0
        uint32_t sampler_ready
        uint32_t start_gate
    enum:
        RSPROF_SAMPLER_WAKE
        RSPROF_SHM_VERSION
        RSPROF_SHM_HEADER_BYTES
        RSPROF_MAX_FRAMES
        RSPROF_STATE_IDLE
        RSPROF_STATE_RECORDING
        RSPROF_STATE_STOPPED
        RSPROF_REC_PAD
        RSPROF_REC_STACK
        RSPROF_REC_ALLOC
        RSPROF_REC_FREE
        RSPROF_REC_ALLOC_RAW
        RSPROF_REC_SAMPLE
        RSPROF_REC_THREAD
        RSPROF_REC_ALLOC_BIG
        RSPROF_REC_NODE
        RSPROF_REC_TYPE_SHIFT
        RSPROF_ALLOC_SIZE_BITS
    uint64_t RSPROF_PTR_MASK
    uint64_t RSPROF_ALLOC_MAX_SIZE
    uint32_t rsprof_rec_size(uint64_t word)
    uint64_t RSPROF_SHM_MAGIC
    uint64_t RSPROF_READER_TIMEOUT_NS
    uint64_t rsprof_load_acquire_u64(uint64_t* p)
    void rsprof_store_release_u64(uint64_t* p, uint64_t v)
    uint32_t rsprof_load_acquire_u32(uint32_t* p)
    void rsprof_store_release_u32(uint32_t* p, uint32_t v)
    uint32_t rsprof_fetch_add_u32(uint32_t* p, uint32_t v)
    uint64_t rsprof_monotonic_ns()

SHM_MAGIC = RSPROF_SHM_MAGIC
SHM_VERSION = RSPROF_SHM_VERSION
SHM_HEADER_BYTES = RSPROF_SHM_HEADER_BYTES
SHM_MAX_FRAMES = RSPROF_MAX_FRAMES
STATE_IDLE = RSPROF_STATE_IDLE
STATE_RECORDING = RSPROF_STATE_RECORDING
STATE_STOPPED = RSPROF_STATE_STOPPED
REC_PAD = RSPROF_REC_PAD
REC_STACK = RSPROF_REC_STACK
REC_ALLOC = RSPROF_REC_ALLOC
REC_FREE = RSPROF_REC_FREE
REC_ALLOC_RAW = RSPROF_REC_ALLOC_RAW
REC_SAMPLE = RSPROF_REC_SAMPLE
REC_THREAD = RSPROF_REC_THREAD
REC_ALLOC_BIG = RSPROF_REC_ALLOC_BIG
REC_NODE = RSPROF_REC_NODE
REC_TYPE_SHIFT = RSPROF_REC_TYPE_SHIFT
ALLOC_SIZE_BITS = RSPROF_ALLOC_SIZE_BITS
PTR_MASK = RSPROF_PTR_MASK


def record_size(uint64_t word) -> int:
    """Size of the record whose first word is `word` (0: invalid), as the shim defines it."""
    return rsprof_rec_size(word)

# The largest record the reader accepts: a header, 40 bytes of fields, 1024 frames.
DEF SHM_MAX_RECORD = 40 + 8 * 1024
DEF SHM_MAX_FRAMES_ACCEPTED = 1024
# The longest CPU time one self-sample may stand for (its period_ns): a minute.
DEF SHM_MAX_SAMPLE_PERIOD_NS = 60_000_000_000
SHM_MAX_SAMPLE_PERIOD = SHM_MAX_SAMPLE_PERIOD_NS
# The highest shim stack / node id accepted in STACK and NODE records.
DEF SHIM_MAX_ID = 0x7fffffff


cdef struct LiveSlot:
    uint64_t ptr      # 0 marks an empty slot
    uint64_t size
    uint32_t stack
    uint32_t unused


cdef class HeapDecoder:
    """Decodes shim records into exact per-stack heap accounting.

    The live-allocation table (pointer -> size, stack) is a C open-addressing
    hash with backward-shift deletion; per-stack totals are C arrays indexed
    by StackTable id. Nothing per event becomes a Python object.

    Shim stack ids name nodes of the shim's stack trie (NODE records: a node's
    stack is its return address followed by its parent's stack; 0 is the root,
    the empty stack) or whole stacks (STACK records); both share one id space.
    Each id maps to a node of `stacks` and, once something is charged to it,
    to its StackTable id.
    """

    cdef public StackTable stacks
    cdef LiveSlot* live
    cdef uint64_t live_cap
    cdef uint64_t live_count
    cdef uint32_t* shim_ids       # shim id -> StackTable id (NO_ID: none yet)
    cdef uint32_t* shim_nodes     # shim id -> StackTable trie node (NO_ID: unknown)
    cdef uint16_t* shim_depth     # shim id -> depth of its stack
    cdef uint64_t shim_ids_cap
    cdef uint64_t* allocs
    cdef uint64_t* alloc_bytes
    cdef uint64_t* frees
    cdef uint64_t* free_bytes
    cdef uint64_t* live_bytes
    cdef uint64_t* peak_bytes
    cdef uint8_t* changed
    cdef uint32_t* changed_list
    cdef uint64_t n_changed
    cdef uint64_t sites_cap
    cdef uint64_t* frames
    cdef public uint64_t alloc_records
    cdef public uint64_t free_records
    cdef public uint64_t unknown_frees          # frees of blocks allocated before recording
    cdef public uint64_t unknown_stack_allocs   # allocs naming a stack id never announced
    cdef public uint64_t replaced_live          # an alloc of a pointer still live (missed free)
    cdef public uint64_t malformed
    cdef public uint64_t self_samples
    cdef public uint64_t total_live_bytes
    cdef public uint64_t peak_total_live_bytes
    cdef public list threads
    cdef public PerfDecoder cpu   # where self-sampled CPU samples are counted (or None)

    def __cinit__(self, StackTable stacks):
        self.stacks = stacks
        self.live_cap = 1 << 16
        self.live = <LiveSlot*>calloc(self.live_cap, sizeof(LiveSlot))
        self.frames = <uint64_t*>calloc(SHM_MAX_FRAMES_ACCEPTED + 1, sizeof(uint64_t))
        if not (self.live and self.frames):
            raise MemoryError()
        self._grow_shim_ids(1024)
        self.shim_nodes[0] = 0  # id 0: the root, the empty stack
        self.shim_depth[0] = 0
        self.sites_cap = 0
        self._grow_sites(1024)
        self.threads = []

    def __dealloc__(self):
        free(self.live)
        free(self.shim_ids)
        free(self.shim_nodes)
        free(self.shim_depth)
        free(self.frames)
        free(self.allocs)
        free(self.alloc_bytes)
        free(self.frees)
        free(self.free_bytes)
        free(self.live_bytes)
        free(self.peak_bytes)
        free(self.changed)
        free(self.changed_list)

    cdef int _grow_sites(self, uint64_t need) except -1:
        cdef uint64_t cap = self.sites_cap if self.sites_cap else 1024
        while cap < need:
            cap *= 2
        if cap == self.sites_cap:
            return 0
        cdef uint64_t old = self.sites_cap
        # Every per-site array grows together; new sites start at zero.
        self.allocs = <uint64_t*>_resized(self.allocs, cap * 8, old * 8)
        self.alloc_bytes = <uint64_t*>_resized(self.alloc_bytes, cap * 8, old * 8)
        self.frees = <uint64_t*>_resized(self.frees, cap * 8, old * 8)
        self.free_bytes = <uint64_t*>_resized(self.free_bytes, cap * 8, old * 8)
        self.live_bytes = <uint64_t*>_resized(self.live_bytes, cap * 8, old * 8)
        self.peak_bytes = <uint64_t*>_resized(self.peak_bytes, cap * 8, old * 8)
        self.changed = <uint8_t*>_resized(self.changed, cap, old)
        self.changed_list = <uint32_t*>_resized(self.changed_list, cap * 4, old * 4)
        self.sites_cap = cap
        return 0

    cdef int _grow_shim_ids(self, uint64_t need) except -1:
        cdef uint64_t old = self.shim_ids_cap
        cdef uint64_t cap = old if old else 1024
        while cap < need:
            cap *= 2
        if cap == old:
            return 0
        # Keep the ids mapped so far (old bytes): growing once zeroed them, and
        # every allocation of an earlier stack went to stack 0. New ids: unknown.
        self.shim_ids = <uint32_t*>_resized(self.shim_ids, cap * 4, old * 4)
        self.shim_nodes = <uint32_t*>_resized(self.shim_nodes, cap * 4, old * 4)
        self.shim_depth = <uint16_t*>_resized(self.shim_depth, cap * 2, old * 2)
        memset(self.shim_ids + old, 0xff, (cap - old) * 4)
        memset(self.shim_nodes + old, 0xff, (cap - old) * 4)
        self.shim_ids_cap = cap
        return 0

    cdef int _map_shim_id(self, uint32_t shim_id, uint32_t node, uint32_t depth,
                          uint32_t sid) except -1:
        if shim_id >= self.shim_ids_cap:
            self._grow_shim_ids(<uint64_t>shim_id + 1)
        self.shim_nodes[shim_id] = node
        self.shim_depth[shim_id] = <uint16_t>depth
        self.shim_ids[shim_id] = sid
        return 0

    # -- live table -----------------------------------------------------------

    cdef inline uint64_t _slot_of(self, uint64_t ptr) noexcept:
        return _mix(ptr, 0x51ed27) & (self.live_cap - 1)

    cdef int _grow_live(self) except -1:
        cdef uint64_t old_cap = self.live_cap, i, j
        cdef LiveSlot* old = self.live
        cdef LiveSlot* fresh = <LiveSlot*>calloc(old_cap * 2, sizeof(LiveSlot))
        if fresh == NULL:
            raise MemoryError()
        self.live = fresh
        self.live_cap = old_cap * 2
        for i in range(old_cap):
            if old[i].ptr:
                j = self._slot_of(old[i].ptr)
                while self.live[j].ptr:
                    j = (j + 1) & (self.live_cap - 1)
                self.live[j] = old[i]
        free(old)
        return 0

    cdef int _live_insert(self, uint64_t ptr, uint64_t size, uint32_t stack) except -1:
        """Insert; if ptr is already live, its old block was freed unseen: settle it."""
        cdef uint64_t i
        if (self.live_count + 1) * 4 >= self.live_cap * 3:
            self._grow_live()
        i = self._slot_of(ptr)
        while self.live[i].ptr:
            if self.live[i].ptr == ptr:
                self.replaced_live += 1
                self._account_free(self.live[i].stack, self.live[i].size)
                self.live[i].size = size
                self.live[i].stack = stack
                return 0
            i = (i + 1) & (self.live_cap - 1)
        self.live[i].ptr = ptr
        self.live[i].size = size
        self.live[i].stack = stack
        self.live_count += 1
        return 0

    cdef bint _live_remove(self, uint64_t ptr, uint64_t* size, uint32_t* stack) noexcept:
        cdef uint64_t i = self._slot_of(ptr), j, k, mask = self.live_cap - 1
        while self.live[i].ptr:
            if self.live[i].ptr == ptr:
                size[0] = self.live[i].size
                stack[0] = self.live[i].stack
                # Backward-shift deletion keeps probe chains intact without tombstones.
                j = i
                while True:
                    j = (j + 1) & mask
                    if not self.live[j].ptr:
                        break
                    k = self._slot_of(self.live[j].ptr)
                    if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
                        self.live[i] = self.live[j]
                        i = j
                self.live[i].ptr = 0
                self.live_count -= 1
                return True
            i = (i + 1) & mask
        return False

    # -- accounting -------------------------------------------------------------

    cdef inline void _touch(self, uint32_t site) noexcept:
        if not self.changed[site]:
            self.changed[site] = 1
            self.changed_list[self.n_changed] = site
            self.n_changed += 1

    cdef int _account_alloc(self, uint32_t site, uint64_t size) except -1:
        if site >= self.sites_cap:
            self._grow_sites(<uint64_t>site + 1)
        self.allocs[site] += 1
        self.alloc_bytes[site] += size
        self.live_bytes[site] += size
        if self.live_bytes[site] > self.peak_bytes[site]:
            self.peak_bytes[site] = self.live_bytes[site]
        self.total_live_bytes += size
        if self.total_live_bytes > self.peak_total_live_bytes:
            self.peak_total_live_bytes = self.total_live_bytes
        self._touch(site)
        return 0

    cdef void _account_free(self, uint32_t site, uint64_t size) noexcept:
        self.frees[site] += 1
        self.free_bytes[site] += size
        self.live_bytes[site] -= size
        self.total_live_bytes -= size
        self._touch(site)

    cdef int _alloc(self, uint64_t ptr, uint64_t size, uint32_t site) except -1:
        self.alloc_records += 1
        self._live_insert(ptr, size, site)  # settles a missed free of ptr first
        self._account_alloc(site, size)
        return 0

    cdef int _free(self, uint64_t ptr) except -1:
        cdef uint64_t size = 0
        cdef uint32_t site = 0
        self.free_records += 1
        if self._live_remove(ptr, &size, &site):
            self._account_free(site, size)
        else:
            self.unknown_frees += 1
        return 0

    cdef int64_t _walked_node(self, const uint8_t* p, uint32_t depth,
                              uint32_t* kept) except -1:
        """The trie node of a stack of return addresses as lookup addresses (each
        minus one), cut at the first impossible address (that one and all outside
        it are dropped); *kept: the frames kept."""
        cdef uint32_t i, n = 0
        cdef uint64_t a
        for i in range(depth):
            memcpy(&a, p + 8 * i, 8)
            if a < MIN_CODE_ADDRESS or a > MAX_USER_ADDRESS:
                break
            self.frames[n] = a - 1
            n += 1
        kept[0] = n
        return self.stacks.node_of(self.frames, n)

    cdef int _alloc_by_id(self, uint64_t ptr, uint64_t nbytes, uint32_t shim_id) except -1:
        cdef uint32_t sid
        if shim_id < self.shim_ids_cap:
            sid = self.shim_ids[shim_id]
            if sid != NO_ID:
                return self._alloc(ptr, nbytes, sid)
        return self._alloc_first(ptr, nbytes, shim_id)

    cdef int _alloc_first(self, uint64_t ptr, uint64_t nbytes, uint32_t shim_id) except -1:
        """An allocation naming a shim id with no stack id yet: a node's first
        charge makes it a stack; an id never announced is charged to the empty
        stack and counted."""
        cdef int64_t sid
        if shim_id < self.shim_ids_cap and self.shim_nodes[shim_id] != NO_ID:
            sid = self.stacks.stack_of_node(self.shim_nodes[shim_id])
            self.shim_ids[shim_id] = <uint32_t>sid
        else:
            self.unknown_stack_allocs += 1
            sid = self.stacks.stack_of_node(0)  # the empty stack: "unknown"
        return self._alloc(ptr, nbytes, <uint32_t>sid)

    cdef int _node(self, const uint8_t* rec, uint32_t size, uint32_t max_frames) except -1:
        """A NODE record: shim node node_id is [ret] + the stack of parent_id."""
        cdef uint32_t node_id, parent_id, parent, depth
        cdef uint64_t ret
        if size != 24:
            self.malformed += 1
            return 0
        memcpy(&node_id, rec + 8, 4)
        memcpy(&parent_id, rec + 12, 4)
        memcpy(&ret, rec + 16, 8)
        if parent_id >= node_id or node_id > SHIM_MAX_ID:  # so node_id >= 1
            self.malformed += 1
            return 0
        if parent_id == 0:
            parent = 0
            depth = 0
        elif parent_id < self.shim_ids_cap and self.shim_nodes[parent_id] != NO_ID:
            parent = self.shim_nodes[parent_id]
            depth = self.shim_depth[parent_id]
        else:
            self.malformed += 1  # the parent was never announced
            return 0
        if ret < MIN_CODE_ADDRESS or ret > MAX_USER_ADDRESS:
            # An impossible address cuts the stack there, like _walked_node: the
            # node stands for the root, its children for stacks without it.
            self._map_shim_id(node_id, 0, 0, NO_ID)
        elif depth >= max_frames or depth >= SHM_MAX_FRAMES_ACCEPTED:
            self.malformed += 1  # deeper than any stack the shim sends
        else:
            self._map_shim_id(node_id, self.stacks.child(parent, ret - 1), depth + 1,
                              NO_ID)
        return 0

    cdef int _record(self, const uint8_t* rec, uint32_t rtype, uint32_t size,
                     uint32_t max_frames) except -1:
        cdef uint32_t shim_id, depth, tid, n, node
        cdef uint64_t ptr, nbytes, word
        cdef int64_t sid
        memcpy(&word, rec, 8)
        if rtype == RSPROF_REC_ALLOC:
            memcpy(&ptr, rec + 8, 8)
            self._alloc_by_id(ptr, word & RSPROF_ALLOC_MAX_SIZE,
                              <uint32_t>((word >> RSPROF_ALLOC_SIZE_BITS) & 0xffffff))
        elif rtype == RSPROF_REC_FREE:
            self._free(word & RSPROF_PTR_MASK)
        elif rtype == RSPROF_REC_ALLOC_BIG:
            if size != 32:
                self.malformed += 1
                return 0
            memcpy(&shim_id, rec + 8, 4)
            memcpy(&ptr, rec + 16, 8)
            memcpy(&nbytes, rec + 24, 8)
            self._alloc_by_id(ptr, nbytes, shim_id)
        elif rtype == RSPROF_REC_STACK:
            if size < 16:
                self.malformed += 1
                return 0
            memcpy(&shim_id, rec + 8, 4)
            memcpy(&depth, rec + 12, 4)
            if depth > max_frames or size != 16 + 8 * depth or shim_id > SHIM_MAX_ID:
                self.malformed += 1
                return 0
            node = <uint32_t>self._walked_node(rec + 16, depth, &n)
            sid = self.stacks.stack_of_node(node)
            self._map_shim_id(shim_id, node, n, <uint32_t>sid)
        elif rtype == RSPROF_REC_NODE:
            self._node(rec, size, max_frames)
        elif rtype == RSPROF_REC_ALLOC_RAW:
            if size < 32:
                self.malformed += 1
                return 0
            memcpy(&ptr, rec + 8, 8)
            memcpy(&nbytes, rec + 16, 8)
            memcpy(&depth, rec + 24, 4)
            if depth > max_frames or size != 32 + 8 * depth:
                self.malformed += 1
                return 0
            sid = self.stacks.stack_of_node(<uint32_t>self._walked_node(rec + 32, depth, &n))
            self._alloc(ptr, nbytes, <uint32_t>sid)
        elif rtype == RSPROF_REC_THREAD:
            if size != 32:
                self.malformed += 1
                return 0
            memcpy(&tid, rec + 8, 4)
            n = 0
            while n < 16 and rec[16 + n] != 0:
                n += 1
            self.threads.append((tid, (<char*>(rec + 16))[:n].decode("utf-8", "replace")))
        elif rtype == RSPROF_REC_SAMPLE:
            # A CPU sample from the shim's SIGPROF self-sampler: tid, depth,
            # time_ns, period_ns, frames (frames[0] is the interrupted IP).
            if size < 32:
                self.malformed += 1
                return 0
            memcpy(&tid, rec + 8, 4)
            memcpy(&depth, rec + 12, 4)
            memcpy(&ptr, rec + 16, 8)
            memcpy(&nbytes, rec + 24, 8)
            if (depth > SHM_MAX_FRAMES_ACCEPTED or size != 32 + 8 * depth or
                    nbytes > SHM_MAX_SAMPLE_PERIOD_NS):
                self.malformed += 1
                return 0
            self.self_samples += 1
            if self.cpu is not None:
                self.cpu._self_sample(tid, ptr, nbytes, rec + 32, depth)
        elif rtype != RSPROF_REC_PAD:
            self.malformed += 1
        return 0

    # -- results ----------------------------------------------------------------

    def take_changed(self, uint64_t limit=0) -> list:
        """(stack_id, allocs, alloc_bytes, frees, free_bytes, live_bytes, peak_live_bytes)
        of sites that changed since they were last taken (totals, not deltas): all of
        them, or at most `limit` (0: no limit), the others at a later call."""
        cdef list out = []
        cdef uint64_t i, first = 0
        cdef uint32_t s
        if limit and limit < self.n_changed:
            first = self.n_changed - limit  # from the end: the rest stay in place
        for i in range(first, self.n_changed):
            s = self.changed_list[i]
            self.changed[s] = 0
            out.append((s, self.allocs[s], self.alloc_bytes[s], self.frees[s],
                        self.free_bytes[s], self.live_bytes[s], self.peak_bytes[s]))
        self.n_changed = first
        return out

    @property
    def pending_sites(self) -> int:
        """Sites changed and not taken yet."""
        return self.n_changed

    def take_threads(self) -> list:
        cdef list out = self.threads
        self.threads = []
        return out

    @property
    def live_allocations(self) -> int:
        return self.live_count

    def feed_bytes(self, const uint8_t[::1] data, uint32_t max_frames=RSPROF_MAX_FRAMES) -> int:
        """Decode a contiguous stream of records (for tests); returns bytes consumed."""
        cdef uint64_t pos = 0, word, n = data.shape[0]
        cdef uint32_t rsize
        while pos + 8 <= n:
            memcpy(&word, &data[pos], 8)
            if word == 0:
                break
            rsize = rsprof_rec_size(word)
            if rsize < 8 or rsize % 8 or rsize > n - pos or rsize > SHM_MAX_RECORD:
                self.malformed += 1
                break
            self._record(&data[pos], <uint32_t>(word >> RSPROF_REC_TYPE_SHIFT), rsize, max_frames)
            pos += rsize
        return pos


cdef class ShmRing:
    """The reader's side of one shim region: validate, attach, drain, detach."""

    cdef uint8_t* base
    cdef size_t map_len
    cdef rsprof_shm_header* hdr
    cdef uint8_t* data
    cdef uint64_t size
    cdef uint8_t* scratch
    cdef public uint64_t malformed

    def __cinit__(self, int fd, size_t length):
        cdef void* p
        self.base = NULL
        if length < RSPROF_SHM_HEADER_BYTES:
            raise ValueError("region smaller than its header")
        p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, "cannot map the shared region")
        self.base = <uint8_t*>p
        self.map_len = length
        self.hdr = <rsprof_shm_header*>p
        if self.hdr.magic != RSPROF_SHM_MAGIC:
            raise ValueError("not an rsprof region (bad magic)")
        if self.hdr.version != RSPROF_SHM_VERSION:
            raise ValueError(f"region layout version {self.hdr.version}, "
                             f"this rsprof reads {RSPROF_SHM_VERSION}")
        if self.hdr.header_bytes != RSPROF_SHM_HEADER_BYTES:
            raise ValueError("bad header size")
        self.size = self.hdr.ring_size
        if (self.size < 4096 or (self.size & (self.size - 1)) != 0 or
                self.size > length - RSPROF_SHM_HEADER_BYTES):
            raise ValueError("bad ring size")
        if self.hdr.max_frames > SHM_MAX_FRAMES_ACCEPTED:
            raise ValueError("bad frame limit")
        self.data = self.base + RSPROF_SHM_HEADER_BYTES
        self.scratch = <uint8_t*>calloc(SHM_MAX_RECORD + 8, 1)
        if self.scratch == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.map_len)
        free(self.scratch)

    @property
    def pid(self) -> int:
        return self.hdr.pid

    @property
    def state(self) -> int:
        return rsprof_load_acquire_u32(&self.hdr.state)

    @property
    def reader_pid(self) -> int:
        return rsprof_load_acquire_u32(&self.hdr.reader_pid)

    def counters(self) -> dict:
        """The shim's own counters (as the target wrote them: untrusted)."""
        return {
            "dropped": rsprof_load_acquire_u64(&self.hdr.dropped),
            "waits": rsprof_load_acquire_u64(&self.hdr.waits),
            "interned": rsprof_load_acquire_u64(&self.hdr.interned),
            "raw_stacks": rsprof_load_acquire_u64(&self.hdr.raw_stacks),
            "truncated": rsprof_load_acquire_u64(&self.hdr.truncated),
        }

    def attach(self, uint32_t reader_pid, uint32_t self_sample_hz=0) -> None:
        """Become the region's reader: a new session, heartbeat, then RECORDING.

        self_sample_hz > 0 asks the shim's SIGPROF self-sampler for CPU samples
        at that rate (header field reserved0); 0 leaves CPU to perf events.
        """
        rsprof_store_release_u32(&self.hdr.reserved0, self_sample_hz)
        rsprof_fetch_add_u32(&self.hdr.session, 1)
        rsprof_store_release_u64(&self.hdr.heartbeat_ns, rsprof_monotonic_ns())
        rsprof_store_release_u32(&self.hdr.reader_pid, reader_pid)
        rsprof_store_release_u32(&self.hdr.state, RSPROF_STATE_RECORDING)

    def heartbeat(self) -> None:
        rsprof_store_release_u64(&self.hdr.heartbeat_ns, rsprof_monotonic_ns())

    def open_start_gate(self) -> None:
        """Let a process waiting at the start gate (init_region's hold_at_start) go on."""
        rsprof_store_release_u32(&self.hdr.start_gate, 0)

    @property
    def sampler_ready(self) -> bool:
        """The shim installed its SIGPROF handler at start (it may be woken)."""
        return rsprof_load_acquire_u32(&self.hdr.sampler_ready) == 1

    def wake_sampler(self, pid_t pid) -> int:
        """sigqueue(pid, SIGPROF, RSPROF_SAMPLER_WAKE): the self-sampler arms the
        threads it has not armed yet. Returns 0 or the errno of sigqueue. The
        caller checks that the handler is still the shim's (sampler_ready and
        SIGPROF caught), since a program's own handler would receive it."""
        cdef sigval value
        value.sival_int = RSPROF_SAMPLER_WAKE
        if sigqueue(pid, SIGPROF, value) != 0:
            return errno
        return 0

    def detach(self) -> None:
        """Stop the target recording (IDLE) and give up the reader role."""
        if self.base == NULL:
            return
        rsprof_store_release_u32(&self.hdr.state, RSPROF_STATE_IDLE)
        rsprof_store_release_u32(&self.hdr.reserved0, 0)
        rsprof_store_release_u32(&self.hdr.reader_pid, 0)

    cdef void _zero(self, uint64_t pos, uint64_t n) noexcept:
        cdef uint64_t off = pos & (self.size - 1), first
        if n > self.size:
            n = self.size
        if off + n <= self.size:
            memset(self.data + off, 0, n)
        else:
            first = self.size - off
            memset(self.data + off, 0, first)
            memset(self.data, 0, n - first)

    def drain(self, HeapDecoder decoder, uint64_t budget=1 << 62) -> int:
        """Decode committed records (at most about `budget` bytes); returns bytes consumed."""
        cdef uint64_t tail = rsprof_load_acquire_u64(&self.hdr.tail)
        cdef uint64_t start = tail
        cdef uint64_t reserve = rsprof_load_acquire_u64(&self.hdr.reserve)
        cdef uint64_t word, off, first, mask = self.size - 1
        cdef uint32_t rsize, rtype, max_frames = self.hdr.max_frames
        cdef const uint8_t* rec
        if reserve - tail > self.size or (tail & 7) != 0:
            # Garbage indices: skip everything written so far, never loop on it.
            self.malformed += 1
            self._zero(0, self.size)
            rsprof_store_release_u64(&self.hdr.tail, reserve)
            self.heartbeat()
            return 0
        while tail < reserve and tail - start < budget:
            off = tail & mask
            word = rsprof_load_acquire_u64(<uint64_t*>(self.data + off))
            if word == 0:
                break  # reserved but not committed yet
            rsize = rsprof_rec_size(word)
            rtype = <uint32_t>(word >> RSPROF_REC_TYPE_SHIFT)
            if rsize < 8 or (rsize & 7) != 0 or rsize > reserve - tail or rsize > SHM_MAX_RECORD:
                self.malformed += 1
                tail = reserve
                break
            if off + rsize <= self.size:
                rec = self.data + off
            else:
                first = self.size - off
                memcpy(self.scratch, self.data + off, first)
                memcpy(self.scratch + first, self.data, rsize - first)
                rec = self.scratch
            decoder._record(rec, rtype, rsize, max_frames)
            tail += rsize
        # Zero what was consumed (one or two memsets), then publish the new tail.
        if tail > start:
            self._zero(start, tail - start)
        rsprof_store_release_u64(&self.hdr.tail, tail)
        self.heartbeat()
        return tail - start

    def close(self) -> None:
        if self.base != NULL:
            munmap(self.base, self.map_len)
            self.base = NULL


def init_region(int fd, uint64_t ring_size, uint32_t pid, uint32_t state,
                uint32_t self_sample_hz=0, bint hold_at_start=False) -> int:
    """Size a new region file and write its header (the layout of rsprof_shm.h).

    pid 0 lets the first process that maps the region claim it (`rsprof run`
    creates the region before the target exists). hold_at_start: the process
    that claims it waits in its start-up until open_start_gate() (at most
    RSPROF_START_GATE_MAX_NS). Returns the region length.
    """
    import os
    if ring_size < 4096 or (ring_size & (ring_size - 1)) != 0:
        raise ValueError("ring size must be a power of two of at least 4096")
    cdef size_t length = RSPROF_SHM_HEADER_BYTES + ring_size
    os.ftruncate(fd, length)
    cdef void* p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        raise OSError(errno, "cannot map the shared region")
    cdef rsprof_shm_header* hdr = <rsprof_shm_header*>p
    memset(p, 0, RSPROF_SHM_HEADER_BYTES)
    hdr.version = RSPROF_SHM_VERSION
    hdr.header_bytes = RSPROF_SHM_HEADER_BYTES
    hdr.ring_size = ring_size
    hdr.pid = pid
    hdr.max_frames = RSPROF_MAX_FRAMES
    hdr.heartbeat_ns = rsprof_monotonic_ns()
    # A RECORDING region names its creator as the reader from the start: a writer
    # that finds the ring full before attach() then waits while we live.
    hdr.reader_pid = os.getpid() if state == RSPROF_STATE_RECORDING else 0
    hdr.state = state
    hdr.reserved0 = self_sample_hz
    hdr.start_gate = 1 if hold_at_start else 0
    rsprof_store_release_u64(&hdr.magic, RSPROF_SHM_MAGIC)
    munmap(p, length)
    return length
