# cython: language_level=3
"""Inline-aware address -> (function, file, line) lookup from raw DWARF sections.

A thin wrapper over csrc/rsprof_dwarf.c, which decodes only the compile units
that hold the requested addresses (like binutils addr2line). Paths are composed
like addr2line does (comp_dir / directory / file, not normalised).
"""

from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport strlen


cdef extern from "rsprof_dwarf.h":
    ctypedef struct rsd_section:
        const uint8_t *data
        size_t size

    ctypedef struct rsd_frame:
        const char *name
        const char *comp_dir
        const char *dir
        const char *file
        uint32_t line

    ctypedef struct rsd_ctx:
        pass

    int RSD_NSECT
    rsd_ctx *rsd_open(const rsd_section *sections)
    void rsd_close(rsd_ctx *ctx)
    int rsd_lookup(rsd_ctx *ctx, uint64_t addr, rsd_frame *out, int max) nogil
    size_t rsd_decoded_units(const rsd_ctx *ctx)
    size_t rsd_unit_count(const rsd_ctx *ctx)


SECTION_NAMES = (
    ".debug_info",
    ".debug_abbrev",
    ".debug_line",
    ".debug_str",
    ".debug_line_str",
    ".debug_ranges",
    ".debug_rnglists",
    ".debug_aranges",
    ".debug_addr",
    ".debug_str_offsets",
)

DEF MAX_FRAMES = 128


cdef inline str _decode(const char *s):
    return s[:strlen(s)].decode("utf-8", "replace")


cdef inline bint _absolute(const char *s):
    return s[0] == b'/'


cdef class DwarfReader:
    """Lookups over borrowed section buffers (kept alive by this object)."""

    cdef rsd_ctx *_ctx
    cdef PyThread_type_lock _lock
    cdef list _keep
    cdef dict _names
    cdef dict _paths

    def __cinit__(self):
        self._ctx = NULL
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()

    def __init__(self, sections):
        """`sections`: a sequence of 10 buffers (or None) in SECTION_NAMES order."""
        cdef rsd_section secs[10]
        cdef const uint8_t[::1] view
        cdef int i
        if len(sections) != len(SECTION_NAMES):
            raise ValueError("expected %d sections" % len(SECTION_NAMES))
        self._keep = []
        self._names = {}
        self._paths = {}
        for i in range(10):
            buf = sections[i]
            secs[i].data = NULL
            secs[i].size = 0
            if buf is None:
                continue
            view = buf
            self._keep.append(view)
            if view.shape[0] > 0:
                secs[i].data = &view[0]
                secs[i].size = view.shape[0]
        self._ctx = rsd_open(secs)
        if self._ctx == NULL:
            raise ValueError("no usable .debug_info")

    def __dealloc__(self):
        if self._ctx != NULL:
            rsd_close(self._ctx)
            self._ctx = NULL
        if self._lock != NULL:
            PyThread_free_lock(self._lock)
            self._lock = NULL

    def prefetch(self, addrs):
        """Decode the units holding `addrs` without holding the GIL (for a thread)."""
        cdef list values = [a for a in addrs if 0 <= a < (1 << 64)]
        cdef size_t n = len(values), i
        cdef rsd_frame frame
        cdef uint64_t *buf = <uint64_t *>malloc((n + 1) * sizeof(uint64_t))
        if buf == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                buf[i] = values[i]
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)
                for i in range(n):
                    rsd_lookup(self._ctx, buf[i], &frame, 1)
                PyThread_release_lock(self._lock)
        finally:
            free(buf)

    @property
    def decoded_units(self) -> int:
        return rsd_decoded_units(self._ctx)

    @property
    def unit_count(self) -> int:
        return rsd_unit_count(self._ctx)

    cdef str _name(self, const char *s):
        cdef size_t key = <size_t>s
        name = self._names.get(key)
        if name is None:
            name = _decode(s)
            self._names[key] = name
        return name

    cdef object _path(self, const rsd_frame *fr):
        # addr2line (binutils concat_filename): absolute file as is; else
        # comp_dir/dir/file, with an absolute dir replacing comp_dir.
        cdef const char *dir_name
        cdef const char *subdir
        if fr.file == NULL:
            return None
        key = (<size_t>fr.comp_dir, <size_t>fr.dir, <size_t>fr.file)
        path = self._paths.get(key)
        if path is not None:
            return path
        if _absolute(fr.file):
            path = _decode(fr.file)
        else:
            subdir = fr.dir
            if subdir != NULL and subdir[0] == 0:
                subdir = NULL
            dir_name = NULL
            if subdir == NULL or not _absolute(subdir):
                dir_name = fr.comp_dir
                if dir_name != NULL and dir_name[0] == 0:
                    dir_name = NULL
            if dir_name == NULL:
                dir_name = subdir
                subdir = NULL
            if dir_name == NULL:
                path = _decode(fr.file)
            elif subdir != NULL:
                path = _decode(dir_name) + "/" + _decode(subdir) + "/" + _decode(fr.file)
            else:
                path = _decode(dir_name) + "/" + _decode(fr.file)
        self._paths[key] = path
        return path

    def lookup(self, uint64_t addr):
        """[(raw name or "", path or None, line or None), ...] innermost first;
        empty when DWARF does not describe `addr`."""
        cdef rsd_frame frames[MAX_FRAMES]
        cdef int n, i
        cdef list out = []
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            with nogil:  # a prefetch is running: wait without blocking it
                PyThread_acquire_lock(self._lock, WAIT_LOCK)
        n = rsd_lookup(self._ctx, addr, frames, MAX_FRAMES)
        PyThread_release_lock(self._lock)
        for i in range(n):
            name = self._name(frames[i].name) if frames[i].name != NULL else ""
            line = frames[i].line if frames[i].line != 0 else None
            out.append((name, self._path(&frames[i]), line))
        return out
