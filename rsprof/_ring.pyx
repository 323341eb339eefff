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

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.unistd cimport close, sysconf, _SC_PAGESIZE

from rsprof._unwind cimport StackTable


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
DEF SCAN_MAX_FRAMES = 8
MAX_SCANNED_FRAMES = SCAN_MAX_FRAMES

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


cdef inline uint64_t _mix(uint64_t a, uint64_t b) nogil:
    cdef uint64_t h = a * 0x9e3779b97f4a7c15ULL ^ (b + 0x632be59bd9b4e019ULL)
    h ^= h >> 31
    h *= 0xbf58476d1ce4e5b9ULL
    h ^= h >> 29
    return h


cdef struct CountSlot:
    uint64_t key      # tid << 32 | stack id
    uint64_t interval # interval index + 1; 0 marks an empty slot
    uint64_t count


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

    cdef int _count(self, uint64_t key, uint64_t interval) except -1:
        cdef uint64_t i, mask
        if (self.used + 1) * 4 >= self.capacity * 3:
            self._grow()
        mask = self.capacity - 1
        i = _mix(key, interval + 1) & mask
        while self.slots[i].interval:
            if self.slots[i].key == key and self.slots[i].interval == interval + 1:
                self.slots[i].count += 1
                return 0
            i = (i + 1) & mask
        self.slots[i].key = key
        self.slots[i].interval = interval + 1
        self.slots[i].count = 1
        self.used += 1
        return 0

    cdef Py_ssize_t _code_index(self, uint64_t addr) noexcept:
        """Index of the executable mapping holding addr, or -1."""
        cdef Py_ssize_t lo = 0, hi = self.n_code, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.code_starts[mid] <= addr:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0 or addr >= self.code_ends[lo - 1]:
            return -1
        return lo - 1

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
        cdef uint8_t modrm
        if code == NULL or o > self.code_lens[i]:
            return True
        if o >= 5 and code[o - 5] == 0xE8:
            return True  # call rel32
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
            if (modrm & 0x38) == 0x10 and (modrm == 0x15 or ((modrm & 0xC0) == 0x80 and (modrm & 7) != 4)):
                return True  # call [rip+disp32], call [reg+disp32]
        if o >= 7 and code[o - 7] == 0xFF:
            modrm = code[o - 6]
            if (modrm & 0x38) == 0x10 and (modrm & 0xC0) == 0x80 and (modrm & 7) == 4:
                return True  # call [sib+disp32]
        return False

    def set_code_ranges(self, ranges) -> None:
        """Executable mappings as (start, end, is_system_library, code bytes or None).

        The code bytes (the mapped part of the file, from `start`) let the stack
        scan check that a candidate return address follows a call instruction.
        """
        cdef list items = sorted(((int(r[0]), int(r[1]), bool(r[2]), r[3]) for r in ranges),
                                 key=lambda r: r[0])
        cdef Py_ssize_t n = len(items), i
        cdef const uint8_t[::1] view
        cdef void* p
        p = realloc(self.code_starts, (n + 1) * sizeof(uint64_t))
        if p == NULL:
            raise MemoryError()
        self.code_starts = <uint64_t*>p
        p = realloc(self.code_ends, (n + 1) * sizeof(uint64_t))
        if p == NULL:
            raise MemoryError()
        self.code_ends = <uint64_t*>p
        p = realloc(self.code_system, n + 1)
        if p == NULL:
            raise MemoryError()
        self.code_system = <uint8_t*>p
        p = realloc(self.code_bytes, (n + 1) * sizeof(uint8_t*))
        if p == NULL:
            raise MemoryError()
        self.code_bytes = <const uint8_t**>p
        p = realloc(self.code_lens, (n + 1) * sizeof(uint64_t))
        if p == NULL:
            raise MemoryError()
        self.code_lens = <uint64_t*>p
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

    cdef uint32_t _scan_caller(self, uint32_t n, uint64_t bp, uint64_t sp,
                               const uint8_t* stack, uint64_t stack_len) noexcept:
        """Recover the callers of a leaf in a system library from the copied stack.

        Such code keeps no frame pointers, so the kernel's chain misses the leaf's
        caller (or is garbage). The stack words above the stack pointer hold the
        return addresses (words into code that follow a call instruction): take
        them up to and including the first one into other (user) code. If the
        frame pointer still points above that return address (not clobbered),
        the kernel's chain beyond the leaf is kept and continues from there;
        otherwise scanning goes on for further callers (at most
        SCAN_MAX_FRAMES in all). Returns the new frame count.
        """
        cdef uint64_t off, w, slot = 0
        cdef uint64_t found[SCAN_MAX_FRAMES]
        cdef uint32_t nfound = 0, i, out, k
        cdef int kind
        cdef Py_ssize_t idx
        cdef bint user_found = False
        cdef bint keep = False
        if n == 0 or self.n_code == 0 or stack_len < 8 or self._code_kind(self.frames[0]) != 1:
            return n
        off = 0
        while off + 8 <= stack_len and nfound < SCAN_MAX_FRAMES:
            memcpy(&w, stack + off, 8)
            idx = self._code_index(w)
            kind = 0 if idx < 0 else (1 if self.code_system[idx] else 2)
            if kind != 0 and w > MIN_CODE_ADDRESS and self._follows_call(idx, w):
                found[nfound] = w - 1
                nfound += 1
                if kind == 2 and not user_found:
                    user_found = True
                    slot = sp + off
                    # Keep the kernel's chain when bp is a plausible frame above the
                    # slot; then the chain goes on from here. Otherwise bp was
                    # clobbered: keep scanning for the callers further up.
                    keep = n > 1 and bp > slot and bp - sp < (1 << 20)
                    if keep:
                        break
            off += 8
        if not user_found:
            return n
        self.scanned_stacks += 1
        if n > 1 and not keep:
            self.broken_chains += 1
        k = 1
        if keep and n > 1 and self.frames[1] == found[nfound - 1]:
            k = 2  # the kernel chain already has the caller (the leaf kept rbp)
        out = 1 + nfound + ((n - k) if keep else 0)
        if out > RSPROF_MAX_STACK + SCAN_MAX_FRAMES:
            out = RSPROF_MAX_STACK + SCAN_MAX_FRAMES
        # Shift the kept kernel chain up, then put the scanned frames after the leaf.
        if keep:
            i = out
            while i > 1 + nfound:
                i -= 1
                self.frames[i] = self.frames[k + (i - 1 - nfound)]
        for i in range(nfound):
            self.frames[1 + i] = found[i]
        return out

    cdef int _sample(self, const uint8_t* rec, uint32_t size) except -1:
        # Layout for RSPROF_SAMPLE_TYPE: u64 ip; u32 pid, tid; u64 time; u64 nr;
        # u64 ips[nr]; u64 abi; u64 regs[NREGS] if abi; u64 size; u8 data[size];
        # u64 dyn_size if size.
        cdef uint64_t ip, t, nr, i, entry, pos, abi = 0, bp = 0, sp = 0
        cdef uint64_t stack_size = 0, dyn_size = 0
        cdef const uint8_t* stack = NULL
        cdef uint32_t pid, tid, n = 0
        cdef bint in_user = True
        cdef int64_t rel
        cdef uint64_t interval
        cdef int64_t sid
        if size < 8 + 32:
            self.malformed += 1
            return 0
        memcpy(&ip, rec + 8, 8)
        memcpy(&pid, rec + 16, 4)
        memcpy(&tid, rec + 20, 4)
        memcpy(&t, rec + 24, 8)
        memcpy(&nr, rec + 32, 8)
        if nr > (size - 40) // 8:
            self.malformed += 1
            return 0
        pos = 40 + 8 * nr
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
            memcpy(&entry, rec + 40 + 8 * i, 8)
            if entry >= RSPROF_CONTEXT_MAX:
                # A context marker: only user-space entries are kept.
                in_user = entry == RSPROF_CONTEXT_USER
                continue
            if not in_user:
                continue
            if n > 0 and (entry < MIN_CODE_ADDRESS or entry > MAX_USER_ADDRESS):
                # A frame pointer chain that ran into garbage (code that keeps no
                # frame pointers): what follows is not a call chain.
                self.broken_chains += 1
                break
            self.frames[n] = entry if n == 0 else entry - 1
            n += 1
        if n == 0:
            # No user callchain (e.g. the frame walk failed at once): keep the IP.
            self.frames[0] = ip
            n = 1
        if n >= RSPROF_MAX_STACK:
            self.truncated += 1
        if abi != 0 and stack != NULL:
            n = self._scan_caller(n, bp, sp, stack, dyn_size)
        sid = self.stacks.intern(self.frames, n)
        rel = <int64_t>t - self.start_ns
        if rel < 0:
            self.early_samples += 1
            rel = 0
        interval = <uint64_t>(rel // self.interval_ns)
        self.samples += 1
        self._count((<uint64_t>tid << 32) | <uint64_t>sid, interval)
        return 0

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
        """(interval, tid, stack_id, count) accumulated since the last call."""
        cdef list out = []
        cdef uint64_t i
        for i in range(self.capacity):
            if self.slots[i].interval:
                out.append((self.slots[i].interval - 1, self.slots[i].key >> 32,
                            self.slots[i].key & 0xffffffff, self.slots[i].count))
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
        if p == MAP_FAILED:
            import ctypes, os
            err = ctypes.get_errno() or 12
            raise OSError(err, "mmap of perf ring failed")
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
