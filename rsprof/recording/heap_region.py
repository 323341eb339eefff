"""Shared-memory regions of the shim: create one for `rsprof run`, find one for `-p`.

A region is a file under /dev/shm named rsprof-<pid>-<16 hex>, mode 0600,
laid out as csrc/rsprof_shm.h says. `rsprof run` creates it before the
target starts (pid 0: the first process that maps it claims it); a process
that loaded the shim by itself (LD_PRELOAD, rsprof-trace) creates its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from rsprof import _ring
from rsprof.errors import RsprofError
from rsprof.recording.process import is_alive

SHM_DIR = Path("/dev/shm")
PREFIX = "rsprof-"
DEFAULT_RING_BYTES = 8 << 20


@dataclass
class Region:
    name: str  # file name under /dev/shm (shm_open name without the slash)
    ring: _ring.ShmRing

    @property
    def path(self) -> Path:
        return SHM_DIR / self.name

    def unlink(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def create_region(ring_bytes: int = DEFAULT_RING_BYTES, self_sample_hz: int = 0,
                  hold_at_start: bool = False, sampler_stack_bytes: int = 0) -> Region:
    """A fresh private region in RECORDING state, for a target about to be launched.

    self_sample_hz > 0 has the shim's SIGPROF self-sampler running from the start;
    hold_at_start makes the program wait in its start-up (after its libraries are
    mapped) until `region.ring.open_start_gate()`, at most 2 s; sampler_stack_bytes
    > 0 makes each self-sample carry the interrupted registers and that many bytes
    of the thread's stack (SAMPLE_REGS records, for CFI unwinding; the shim clamps
    it to `_ring.SAMPLER_MAX_STACK_BYTES`). An attach to an existing region sets it
    with `region.ring.attach(reader_pid, hz, sampler_stack_bytes)`."""
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    try:
        fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RsprofError(f"cannot create shared memory in {SHM_DIR}: {exc.strerror}") from None
    try:
        length = _ring.init_region(fd, ring_bytes, 0, _ring.STATE_RECORDING, self_sample_hz,
                                   hold_at_start, sampler_stack_bytes)
        ring = _ring.ShmRing(fd, length)
    except (OSError, ValueError) as exc:
        os.unlink(SHM_DIR / name)
        raise RsprofError(f"cannot set up shared memory {name}: {exc}") from None
    finally:
        os.close(fd)
    return Region(name, ring)


def _open(path: Path) -> _ring.ShmRing | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() and os.geteuid() != 0:
            return None
        return _ring.ShmRing(fd, st.st_size)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def find_region(pid: int) -> Region | None:
    """The shim region published by process `pid`, if it loaded the shim."""
    best: Region | None = None
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError:
        return None
    for name in names:
        if not name.startswith(f"{PREFIX}{pid}-"):
            continue
        ring = _open(SHM_DIR / name)
        if ring is not None and ring.pid == pid:
            best = Region(name, ring)
    return best


def remove_stale_regions() -> int:
    """Unlink regions whose writer and reader are both gone, and unwind tables
    (rsprof-unwind-<pid>-<hex>, rsprof/recording/heap_unwind.py) whose rsprof is
    gone (a shim that mapped one keeps its mapping); returns how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(SHM_DIR):
            if not name.startswith(PREFIX):
                continue
            parts = name[len(PREFIX):].split("-")
            if len(parts) == 3 and parts[0] == "unwind" and parts[1].isdigit():
                if not is_alive(int(parts[1])):
                    with contextlib.suppress(OSError):
                        os.unlink(SHM_DIR / name)
                        removed += 1
                continue
            if len(parts) != 2 or not parts[0].isdigit():
                continue
            ring = _open(SHM_DIR / name)
            if ring is None:
                continue
            owner = ring.pid or int(parts[0])
            reader = ring.reader_pid
            ring.close()
            if not is_alive(owner) and not (reader and is_alive(reader)):
                with contextlib.suppress(OSError):
                    os.unlink(SHM_DIR / name)
                    removed += 1
    return removed
