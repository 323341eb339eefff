"""The unwind table the shim walks heap stacks with (csrc/rsprof_shm.h).

A release build without frame pointers leaves the shim's frame-pointer walk
stuck in std. So the reader hands the shim the DWARF CFI rules of every
executable module: `_unwind.Unwinder.runtime_rows()` (one sorted table,
runtime addresses, NONE rows between modules) written to a file
/dev/shm/rsprof-unwind-<pid>-<16 hex> (mode 0600, created with O_EXCL; pid:
this rsprof's; never `rsprof-<pid>-`, the names of regions, which readers
find by the pid of the process that made them), whose name the region's header publishes
(`ShmRing.publish_unwind`, which bumps `unwind_generation`). The shim maps
it read-only.

A published file is never written again: a table for new modules is a new
file with a new name (the shim keeps its old mapping until it maps the new
one). The current file and the one before it stay on disk while recording
(a shim that read the previous name just before a publish can still open
it); older ones, and all of them at the end, are unlinked, which leaves the
shim's mappings valid. Files of an rsprof that died are removed by
`heap_region.remove_stale_regions`.

Nothing here raises into the recorder: no space in /dev/shm, no file
descriptor left, ... is one warning line, and heap stacks then walk frame
pointers (or keep the table published before).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import struct
import time
from collections.abc import Callable
from pathlib import Path

from rsprof import _ring, _unwind
from rsprof.recording.heap_region import PREFIX, SHM_DIR, Region

UNWIND_PREFIX = f"{PREFIX}unwind-"
# struct rsprof_unwind_file_header: magic, version, row_bytes, n_rows, reserved
FILE_HEADER = struct.Struct("<QIIQQ")
MAX_FILE_BYTES = _ring.UNWIND_MAX_FILE_BYTES  # the shim refuses a larger file
KEEP_FILES = 2  # the published file and the one before it


def unwind_file_name(pid: int | None = None) -> str:
    """A fresh name rsprof-unwind-<pid>-<16 hex> (pid: this process by default)."""
    return f"{UNWIND_PREFIX}{os.getpid() if pid is None else pid}-{secrets.token_hex(8)}"


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        if done <= 0:
            raise OSError(0, "short write")
        view = view[done:]
        offset += done


def write_table(rows: bytes, directory: Path = SHM_DIR) -> str:
    """Create a new file in `directory` holding the file header and `rows` (packed
    rows of CFI_ROW_BYTES each, as runtime_rows() returns them); returns its name.
    Raises OSError (nothing is left behind) or ValueError (rows the shim refuses)."""
    row_bytes = _unwind.CFI_ROW_BYTES
    if row_bytes != _ring.UNWIND_ROW_BYTES or FILE_HEADER.size != _ring.UNWIND_FILE_HEADER_BYTES:
        raise ValueError("the CFI rows and the shim's unwind table differ in layout")
    if not rows or len(rows) % row_bytes:
        raise ValueError(f"{len(rows)} bytes of rows: not a positive multiple of {row_bytes}")
    size = FILE_HEADER.size + len(rows)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"an unwind table of {size} bytes is more than the shim takes")
    header = FILE_HEADER.pack(_ring.UNWIND_MAGIC, _ring.SHM_VERSION, row_bytes,
                              len(rows) // row_bytes, 0)
    name = unwind_file_name()
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)  # no space: fail now, not half-way through
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate there
                raise
        _write_all(fd, header, 0)
        _write_all(fd, rows, FILE_HEADER.size)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return name


class UnwindTableFile:
    """The unwind tables published to one region's shim, newest last."""

    def __init__(self, region: Region, warn: Callable[[str], object] | None = None,
                 directory: Path = SHM_DIR) -> None:
        self.region = region
        self.directory = directory
        self._warn = warn
        self.names: list[str] = []  # files on disk, oldest first; the last is published
        self.generation = 0  # the region's unwind_generation after our last publish
        self.rows = 0  # rows of the published table
        self.build_s = 0.0  # time the last refresh took to build its rows
        self.failures = 0
        self._published: bytes | None = None

    @property
    def published(self) -> bool:
        return self._published is not None

    @property
    def method(self) -> str:
        """How the shim walks heap stacks: "cfi" (with a table), "fp" (without)."""
        return "cfi" if self.published else "fp"

    def refresh(self, unwinder: _unwind.Unwinder) -> bool:
        """Publish the rules of the modules `unwinder` was given (set_modules) as a
        new file, unless the published table holds exactly these rows; True when a
        new table was published. Never raises: a failure is one warning line."""
        try:
            return self._refresh(unwinder)
        except Exception as exc:  # heap profiling goes on with frame pointers
            if isinstance(exc, OSError) and exc.strerror:
                self._failed(exc.strerror)
            else:
                self._failed(f"{type(exc).__name__}: {exc}")
            return False

    def _refresh(self, unwinder: _unwind.Unwinder) -> bool:
        t0 = time.perf_counter()
        rows = unwinder.runtime_rows()
        self.build_s = time.perf_counter() - t0
        if not rows or rows == self._published:
            return False  # nothing mapped (the shim refuses an empty table), or no change
        name = write_table(rows, self.directory)
        try:
            self.generation = self.region.ring.publish_unwind(name)
        except BaseException:
            self._unlink(name)
            raise
        self.names.append(name)
        self._published = rows
        self.rows = len(rows) // _unwind.CFI_ROW_BYTES
        while len(self.names) > KEEP_FILES:
            self._unlink(self.names.pop(0))
        return True

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self._warn is None:
            return
        if self.published:
            self._warn(f"cannot write a new unwind table for heap stacks in {self.directory}"
                       f" ({why}); heap stacks through newly mapped code walk frame pointers")
        else:
            self._warn(f"cannot write the unwind table for heap stacks in {self.directory}"
                       f" ({why}); heap stacks walk frame pointers")

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.directory / name)

    def close(self) -> None:
        """Unlink every file (the shim's mappings of them stay valid)."""
        for name in self.names:
            self._unlink(name)
        self.names.clear()
