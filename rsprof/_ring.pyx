# cython: language_level=3
"""Perf mmap rings: open cpu-clock events, drain and decode their records.

The decoder turns PERF_RECORD_SAMPLE records into (interval, tid, stack id)
counts without creating Python objects per sample: stacks are interned in a
`StackTable` (from `_unwind`), counts accumulate in a C hash table. Records
that matter but are rare (COMM, FORK, EXIT) are queued as Python tuples.
Everything lost or malformed is counted.

Stack convention: the first address is the sampled IP, every further one is
a return address minus 1, so each is a lookup address as is. How a sample's
stack is found is `_unwind`'s: CFI unwinding (`Unwinder`), and the checks of a
frame-pointer chain against the target's code and the recovery of callers from
the copied stack (`FramePointerWalker`, which `PerfDecoder` holds).

The second half reads the heap shim's shared-memory ring (`ShmRing`) into
per-stack heap accounting (`HeapDecoder`).
"""

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.unistd cimport close, sysconf, _SC_PAGESIZE
from posix.types cimport pid_t

from rsprof._unwind cimport (MAX_USER_ADDRESS, MIN_CODE_ADDRESS, NO_ID, SCAN_MAX_FRAMES,
                             FramePointerWalker, StackTable, Unwinder, US_BAD_FRAME, US_END,
                             US_MAX, US_NO_MODULE, US_NO_RULE, US_STACK_END)


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
    int rsprof_perf_open(int tid, int cpu, uint64_t freq, int inherit, int watermark_bytes,
                         uint32_t stack_bytes)
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
# The limits of the frame checks (FramePointerWalker, in _unwind), also here
# where rsprof/ring_reference.py reads them.
from rsprof._unwind import (MAX_RETURN_ADDRESS, MAX_SCANNED_FRAMES, MIN_RETURN_ADDRESS,
                            REACH_WORK, TAIL_SEARCH_MAX, THUNK_DEPTH)


def open_cpu_clock(int tid, int cpu, uint64_t freq, bint inherit, int watermark_bytes,
                   uint32_t stack_bytes=RSPROF_STACK_BYTES) -> int:
    """Open a cpu-clock sampling event that copies `stack_bytes` of user stack per
    sample; returns the fd or raises OSError."""
    cdef int fd = rsprof_perf_open(tid, cpu, freq, inherit, watermark_bytes, stack_bytes)
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
    cdef public uint64_t cfi_stacks         # samples whose callers came from CFI unwinding
    cdef public Unwinder unwinder           # None: frame pointers only (--unwind fp)
    cdef int unwind_mode
    cdef uint64_t* kframes                  # a sample's frame-pointer chain, beside CFI's
    cdef FramePointerWalker walker          # the target's code; checks and scans chains
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
        self.kframes = <uint64_t*>calloc(RSPROF_MAX_RECORD // 8 + 2, sizeof(uint64_t))
        if not (self.slots and self.scratch and self.frames and self.kframes):
            raise MemoryError()
        self.events = []
        self.unwinder = None
        self.walker = FramePointerWalker()

    def __dealloc__(self):
        free(self.slots)
        free(self.scratch)
        free(self.frames)
        free(self.kframes)

    def set_unwinder(self, Unwinder unwinder, int mode) -> None:
        """Unwind samples that carry registers and a stack copy with `unwinder`'s CFI
        (mode _unwind.UNWIND_AUTO or UNWIND_DWARF); None: frame pointers only."""
        self.unwinder = unwinder
        self.unwind_mode = mode

    cdef int64_t _cfi_frames(self, uint64_t ip, uint64_t sp, uint64_t bp,
                             const uint8_t* stack, uint64_t stack_len, uint32_t nk) except -2:
        """Unwind one sample with CFI into self.frames, from its registers and the copy
        of its stack (the bytes at sp). self.kframes[:nk] is the same sample's
        frame-pointer chain (lookup addresses): where CFI stops early (the end of the
        copy, a frame without rules) and the chain agrees with every frame CFI found,
        the chain continues the stack (a deep stack in code with frame pointers).
        Returns the frame count, or -1 when CFI found no caller at all (the caller
        then counts the frame-pointer chain, as with --unwind fp)."""
        cdef uint32_t m, k, nkeep
        cdef int stop
        cdef bint agree, cut = False
        m = self.unwinder.unwind(self.unwind_mode, ip, sp, bp, stack, stack_len, self.frames,
                                 RSPROF_MAX_STACK)
        stop = self.unwinder.last_stop
        if m < 2 and stop != US_END:
            return -1
        if m >= 2:
            self.cfi_stacks += 1
        if stop == US_END:
            return m
        if stop == US_MAX:
            self.truncated += 1
            return m
        agree = nk > m
        if agree:
            for k in range(m):
                if self.kframes[k] != self.frames[k]:
                    agree = False
                    break
        if not agree:
            if stop == US_STACK_END:
                self.truncated += 1  # a deeper stack than the copy (--stack-size)
            else:
                self.broken_chains += 1
            return m
        nkeep = nk if nk < RSPROF_MAX_STACK else RSPROF_MAX_STACK
        k = self.walker.validate_chain(self.kframes, m, nkeep, &cut)
        memcpy(self.frames + m, self.kframes + m, (k - m) * 8)
        if cut:
            self.broken_chains += 1
        elif k >= RSPROF_MAX_STACK:
            self.truncated += 1
        return k

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

    def set_code_ranges(self, ranges) -> None:
        """Executable mappings as (start, end, is_system_library, code bytes or None):
        what frame-pointer chains are checked against and stacks scanned with
        (FramePointerWalker.set_code_ranges)."""
        self.walker.set_code_ranges(ranges)

    def set_code_facts(self, functions, slots) -> None:
        """Function bounds [(start, end)] and indirect call slots [(slot, target)],
        runtime addresses (FramePointerWalker.set_code_facts)."""
        self.walker.set_code_facts(functions, slots)

    @property
    def scanned_stacks(self) -> int:
        """Samples that got callers from the copied stack (FramePointerWalker)."""
        return self.walker.scanned_stacks

    @scanned_stacks.setter
    def scanned_stacks(self, uint64_t value) -> None:
        self.walker.scanned_stacks = value

    cdef int _sample(self, const uint8_t* rec, uint32_t size) except -1:
        # Layout for RSPROF_SAMPLE_TYPE: u64 ip; u32 pid, tid; u64 time; u64 period;
        # u64 nr; u64 ips[nr]; u64 abi; u64 regs[NREGS] if abi; u64 size;
        # u8 data[size]; u64 dyn_size if size.
        cdef uint64_t ip, t, period, nr, i, entry, pos, abi = 0, bp = 0, sp = 0
        cdef uint64_t stack_size = 0, dyn_size = 0
        cdef const uint8_t* stack = NULL
        cdef uint32_t pid, tid, n = 0
        cdef bint in_user = True, cut = False
        cdef int64_t rel
        cdef uint64_t interval
        cdef int64_t sid, got
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
            if RSPROF_NREGS >= 2:  # bp, sp (then ip: PERF_SAMPLE_IP has it too)
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
        if self.unwinder is not None and abi != 0 and stack != NULL and dyn_size >= 8:
            memcpy(self.kframes, self.frames, n * 8)
            got = self._cfi_frames(ip, sp, bp, stack, dyn_size, n)
            if got >= 0:
                return self._count_frames(tid, t, <uint32_t>got, period)
            memcpy(self.frames, self.kframes, n * 8)
        if n >= RSPROF_MAX_STACK:
            self.truncated += 1
        # Every return address of the chain returns into code, after a call: a word
        # that does not is garbage the walk read, not a caller.
        n = self.walker.validate_chain(self.frames, 1, n, &cut)
        n = self.walker.scan_caller(self.frames, n, RSPROF_MAX_STACK + SCAN_MAX_FRAMES,
                                    abi != 0, bp, sp, stack,
                                    dyn_size if stack != NULL else 0, &cut)
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

    cdef uint32_t _raw_chain(self, const uint8_t* raw, uint32_t depth, uint64_t* out,
                             bint* cut) noexcept:
        """The self-sampler's frame-pointer frames (the IP, then return addresses as
        walked) as lookup addresses into out; cut: it ran into an impossible address
        and ends there."""
        cdef uint32_t i, n = 0
        cdef uint64_t entry
        cut[0] = False
        for i in range(depth):
            memcpy(&entry, raw + 8 * i, 8)
            if n > 0 and (entry < MIN_CODE_ADDRESS or entry > MAX_USER_ADDRESS):
                cut[0] = True
                break
            out[n] = entry if n == 0 else entry - 1
            n += 1
        return n

    cdef int _self_sample(self, uint32_t tid, uint64_t t, uint64_t period, const uint8_t* raw,
                          uint32_t depth) except -1:
        """Count one sample from the shim's self-sampler like a perf sample."""
        cdef bint cut
        cdef uint32_t n = self._raw_chain(raw, depth, self.frames, &cut)
        if cut:
            self.broken_chains += 1
        if n == 0:
            self.malformed += 1
            return 0
        return self._count_frames(tid, t, n, period)

    cdef int _self_sample_regs(self, uint32_t tid, uint64_t t, uint64_t period,
                               const uint8_t* raw_frames, uint32_t depth, uint64_t ip,
                               uint64_t sp, uint64_t fp, const uint8_t* stack,
                               uint64_t stack_len) except -1:
        """Count one SAMPLE_REGS sample from the shim's self-sampler: unwound with CFI
        from its registers and stack[:stack_len] (the bytes at sp) when an unwinder is
        set, continued or replaced by its frame-pointer frames as a perf sample's
        (_cfi_frames); otherwise exactly as _self_sample."""
        cdef uint32_t n
        cdef bint cut  # whether the chain is broken is for _cfi_frames to say
        cdef int64_t got
        if self.unwinder is None or stack_len < 8 or depth == 0:
            return self._self_sample(tid, t, period, raw_frames, depth)
        n = self._raw_chain(raw_frames, min(depth, <uint32_t>RSPROF_MAX_STACK), self.kframes,
                            &cut)
        got = self._cfi_frames(ip, sp, fp, stack, stack_len, n)
        if got < 0:
            return self._self_sample(tid, t, period, raw_frames, depth)
        return self._count_frames(tid, t, <uint32_t>got, period)

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
        uint32_t sampler_stack_bytes
        uint64_t unwind_generation
        char unwind_name[64]
    struct rsprof_unwind_row:
        uint64_t start
    struct rsprof_unwind_file_header:
        uint64_t magic
    enum:
        RSPROF_UNWIND_NAME_BYTES
        RSPROF_UNWIND_NONE
        RSPROF_UNWIND_SP
        RSPROF_UNWIND_BP
        RSPROF_UNWIND_PLT11
        RSPROF_UNWIND_PLT10
        RSPROF_UNWIND_OUTERMOST
        RSPROF_UNWIND_UNSUPPORTED
        RSPROF_UNWIND_BP_SAME
    uint64_t RSPROF_UNWIND_MAGIC
    uint64_t RSPROF_UNWIND_MAX_FILE_BYTES
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
        RSPROF_REC_SAMPLE_REGS
        RSPROF_SAMPLER_MAX_STACK_BYTES
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

cdef extern from *:
    """
    static inline uint64_t rsprof_fetch_add_release_u64(volatile uint64_t *p, uint64_t v) {
        return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
    }
    """
    uint64_t rsprof_fetch_add_release_u64(uint64_t* p, uint64_t v)

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
REC_SAMPLE_REGS = RSPROF_REC_SAMPLE_REGS
SAMPLER_MAX_STACK_BYTES = RSPROF_SAMPLER_MAX_STACK_BYTES
REC_TYPE_SHIFT = RSPROF_REC_TYPE_SHIFT
ALLOC_SIZE_BITS = RSPROF_ALLOC_SIZE_BITS
PTR_MASK = RSPROF_PTR_MASK
# The unwind table file the shim maps (rsprof_shm.h): a header, then rows of the
# layout of _unwind.CfiTable's rows with runtime addresses.
UNWIND_MAGIC = RSPROF_UNWIND_MAGIC
UNWIND_FILE_HEADER_BYTES = sizeof(rsprof_unwind_file_header)
UNWIND_ROW_BYTES = sizeof(rsprof_unwind_row)
UNWIND_NAME_BYTES = RSPROF_UNWIND_NAME_BYTES
UNWIND_MAX_FILE_BYTES = RSPROF_UNWIND_MAX_FILE_BYTES
UNWIND_NONE = RSPROF_UNWIND_NONE
UNWIND_SP = RSPROF_UNWIND_SP
UNWIND_BP = RSPROF_UNWIND_BP
UNWIND_PLT11 = RSPROF_UNWIND_PLT11
UNWIND_PLT10 = RSPROF_UNWIND_PLT10
UNWIND_OUTERMOST = RSPROF_UNWIND_OUTERMOST
UNWIND_UNSUPPORTED = RSPROF_UNWIND_UNSUPPORTED
UNWIND_BP_SAME = RSPROF_UNWIND_BP_SAME


def record_size(uint64_t word) -> int:
    """Size of the record whose first word is `word` (0: invalid), as the shim defines it."""
    return rsprof_rec_size(word)

# The largest record the reader accepts: a SAMPLE_REGS of 1024 frames and the most
# stack the shim copies (64 bytes of fixed part, RSPROF_SAMPLER_MAX_STACK_BYTES).
DEF SHM_MAX_RECORD = 64 + 8 * 1024 + 65536
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
        elif rtype == RSPROF_REC_SAMPLE_REGS:
            self._sample_regs(rec, size)
        elif rtype != RSPROF_REC_PAD:
            self.malformed += 1
        return 0

    cdef int _sample_regs(self, const uint8_t* rec, uint32_t size) except -1:
        # A self-sample with registers and a copy of the stack: tid, depth, time_ns,
        # period_ns, ip, sp, fp, stack_bytes, frames[depth], then the stack area (the
        # bytes asked, of which the first stack_bytes were copied from sp).
        cdef uint32_t tid, depth
        cdef uint64_t t, period, ip, sp, fp, stack_bytes, area
        if size < 64:
            self.malformed += 1
            return 0
        memcpy(&tid, rec + 8, 4)
        memcpy(&depth, rec + 12, 4)
        memcpy(&t, rec + 16, 8)
        memcpy(&period, rec + 24, 8)
        memcpy(&ip, rec + 32, 8)
        memcpy(&sp, rec + 40, 8)
        memcpy(&fp, rec + 48, 8)
        memcpy(&stack_bytes, rec + 56, 8)
        if depth > SHM_MAX_FRAMES_ACCEPTED or size < 64 + 8 * depth:
            self.malformed += 1
            return 0
        area = size - 64 - 8 * depth
        if (area > RSPROF_SAMPLER_MAX_STACK_BYTES or stack_bytes > area or
                period > SHM_MAX_SAMPLE_PERIOD_NS):
            self.malformed += 1
            return 0
        self.self_samples += 1
        if self.cpu is not None:
            self.cpu._self_sample_regs(tid, t, period, rec + 64, depth, ip, sp, fp,
                                       rec + 64 + 8 * depth, stack_bytes)
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

    def attach(self, uint32_t reader_pid, uint32_t self_sample_hz=0,
               uint32_t sampler_stack_bytes=0) -> None:
        """Become the region's reader: a new session, heartbeat, then RECORDING.

        self_sample_hz > 0 asks the shim's SIGPROF self-sampler for CPU samples
        at that rate (header field reserved0); 0 leaves CPU to perf events.
        sampler_stack_bytes > 0 asks each self-sample to carry the interrupted
        registers and that many bytes of stack (SAMPLE_REGS records; the shim
        clamps it to SAMPLER_MAX_STACK_BYTES and rounds it down to 8).
        """
        rsprof_store_release_u32(&self.hdr.sampler_stack_bytes, sampler_stack_bytes)
        rsprof_store_release_u32(&self.hdr.reserved0, self_sample_hz)
        rsprof_fetch_add_u32(&self.hdr.session, 1)
        rsprof_store_release_u64(&self.hdr.heartbeat_ns, rsprof_monotonic_ns())
        rsprof_store_release_u32(&self.hdr.reader_pid, reader_pid)
        rsprof_store_release_u32(&self.hdr.state, RSPROF_STATE_RECORDING)

    def heartbeat(self) -> None:
        rsprof_store_release_u64(&self.hdr.heartbeat_ns, rsprof_monotonic_ns())

    @property
    def sampler_stack_bytes(self) -> int:
        """Bytes of stack each self-sample is asked to carry (0: plain SAMPLE records)."""
        return rsprof_load_acquire_u32(&self.hdr.sampler_stack_bytes)

    @sampler_stack_bytes.setter
    def sampler_stack_bytes(self, uint32_t value) -> None:
        rsprof_store_release_u32(&self.hdr.sampler_stack_bytes, value)

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

    def publish_unwind(self, str name) -> int:
        """Name the unwind table file the shim is to map (/dev/shm/<name>, written
        completely and never changed afterwards: rsprof_shm.h), then bump the
        header's unwind_generation with release order; returns the new generation.
        The name: 1 to UNWIND_NAME_BYTES - 1 bytes of UTF-8, no '/' and no NUL."""
        cdef bytes raw = name.encode("utf-8")
        cdef Py_ssize_t n = len(raw)
        cdef const char* src
        if (n == 0 or n >= RSPROF_UNWIND_NAME_BYTES or b"/" in raw or b"\0" in raw
                or raw in (b".", b"..")):
            raise ValueError(f"bad unwind table name {name!r}")
        if self.base == NULL:
            raise ValueError("the region is closed")
        src = raw
        memset(self.hdr.unwind_name, 0, RSPROF_UNWIND_NAME_BYTES)
        memcpy(self.hdr.unwind_name, src, n)
        return rsprof_fetch_add_release_u64(&self.hdr.unwind_generation, 1) + 1

    @property
    def unwind_generation(self) -> int:
        """The generation of the last unwind table published (0: none)."""
        return rsprof_load_acquire_u64(&self.hdr.unwind_generation)

    def detach(self) -> None:
        """Stop the target recording (IDLE) and give up the reader role."""
        if self.base == NULL:
            return
        rsprof_store_release_u32(&self.hdr.state, RSPROF_STATE_IDLE)
        rsprof_store_release_u32(&self.hdr.reserved0, 0)
        rsprof_store_release_u32(&self.hdr.sampler_stack_bytes, 0)
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
                uint32_t self_sample_hz=0, bint hold_at_start=False,
                uint32_t sampler_stack_bytes=0) -> int:
    """Size a new region file and write its header (the layout of rsprof_shm.h).

    pid 0 lets the first process that maps the region claim it (`rsprof run`
    creates the region before the target exists). hold_at_start: the process
    that claims it waits in its start-up until open_start_gate() (at most
    RSPROF_START_GATE_MAX_NS). sampler_stack_bytes: the bytes of stack each
    self-sample carries (SAMPLE_REGS records; 0 = plain SAMPLE records).
    Returns the region length.
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
    hdr.sampler_stack_bytes = sampler_stack_bytes
    rsprof_store_release_u64(&hdr.magic, RSPROF_SHM_MAGIC)
    munmap(p, length)
    return length
