"""Per-thread, per-CPU cpu-clock events on a target, and their rings.

Every thread alive at attach gets one event per online CPU, opened with
`inherit`, so threads it creates later are sampled too. The kernel refuses to
mmap an inherited per-thread event unless it is bound to a CPU, hence the
per-CPU events; all events of one CPU write into one ring (SET_OUTPUT).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator

from rsprof import _ring
from rsprof.errors import PermissionDenied, ProcessNotFound, RsprofError, UsageError
from rsprof.recording.process import thread_ids

# Bytes of user stack copied per sample with --unwind fp: enough for the validated
# scan that recovers a leaf's caller in code without frame pointers (docs/attribution.md).
FP_STACK_BYTES = 512
MIN_RING_PAGES, MAX_RING_PAGES = 16, 4096


def ring_pages_for(freq: int, stack_bytes: int = FP_STACK_BYTES) -> int:
    """Data pages per CPU ring (a power of two): room for ~250 ms of samples at `freq`
    on that CPU, each its stack copy plus ~1.2 KiB (registers, call chain), and never
    less than 512 KiB or 2 MiB above 500 Hz (a few hundred ms of several threads)."""
    want = freq * (stack_bytes + 1200) // 4 // 4096
    pages = 128 if freq <= 500 else 512
    while pages < min(want, MAX_RING_PAGES):
        pages *= 2
    return pages


def online_cpus() -> list[int]:
    try:
        with open("/sys/devices/system/cpu/online") as fh:
            text = fh.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _paranoid() -> str:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def _max_sample_rate() -> int | None:
    try:
        with open("/proc/sys/kernel/perf_event_max_sample_rate") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


_CAP_SYS_ADMIN = 21
_CAP_PERFMON = 38


def _perf_privileged() -> bool:
    """CAP_PERFMON or CAP_SYS_ADMIN in our effective set: paranoid does not apply."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << _CAP_PERFMON | 1 << _CAP_SYS_ADMIN))
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _owner_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def explain_denial(exc: OSError, pid: int, paranoid: str, privileged: bool,
                   target_uid: int | None, our_uid: int) -> str:
    """Why perf_event_open said EACCES/EPERM, naming only a cause that applies.

    rsprof samples user space only (exclude_kernel), which kernel.perf_event_paranoid
    allows an unprivileged user up to 2 (Debian's and Android's kernels deny it at 3
    and above; upstream kernels treat 3 as 2); CAP_PERFMON or CAP_SYS_ADMIN bypass it.
    Anything else that says no (a seccomp filter, a container's or an LSM's policy) is
    invisible from here, so it is reported as what perf_event_open returned."""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    level = int(paranoid) if paranoid.lstrip("-").isdigit() else None
    if not privileged and level is not None and level > 2:
        return (f"perf events not permitted for pid {pid} (kernel.perf_event_paranoid="
                f"{level}): run as root, grant CAP_PERFMON, or lower it with "
                "'sysctl kernel.perf_event_paranoid=2'")
    if not privileged and target_uid is not None and target_uid != our_uid:
        return (f"perf_event_open returned {name} for pid {pid}, which belongs to another "
                "user: profile it as that user or as root")
    if privileged:
        allowed = "rsprof has CAP_PERFMON or CAP_SYS_ADMIN"
    elif level is not None:
        allowed = f"kernel.perf_event_paranoid={level} allows it for this user"
    else:
        allowed = "kernel.perf_event_paranoid could not be read"
    return (f"perf_event_open returned {name} for pid {pid} although {allowed}: something "
            "else denies perf events here (a seccomp filter, a container or security "
            "policy)")


def explain_perf_error(exc: OSError, pid: int, freq: int = 0) -> RsprofError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(explain_denial(exc, pid, _paranoid(), _perf_privileged(),
                                               _owner_uid(pid), os.geteuid()))
    if exc.errno == errno.ESRCH:
        return ProcessNotFound(f"process {pid} exited before sampling could start")
    if exc.errno == errno.EINVAL:
        limit = _max_sample_rate()
        if limit is not None and freq > limit:
            return UsageError(
                f"--cpu-freq {freq} exceeds kernel.perf_event_max_sample_rate ({limit})")
        return RsprofError(f"perf_event_open rejected the cpu-clock event for pid {pid} "
                           "(kernel without software sampling or user stack support?)")
    if exc.errno == errno.ENOENT or exc.errno == errno.EOPNOTSUPP:
        return RsprofError("this kernel has no cpu-clock perf event")
    if exc.errno == errno.EMFILE:
        return RsprofError("too many open files for perf events (raise 'ulimit -n')")
    return RsprofError(f"perf_event_open failed for pid {pid}: {exc.strerror}")


class PerfSession:
    """The open events and rings sampling one process."""

    def __init__(self, pid: int, freq: int, ring_pages: int | None = None,
                 stack_bytes: int = FP_STACK_BYTES) -> None:
        self.pid = pid
        self.freq = freq
        self.stack_bytes = stack_bytes
        self.ring_pages = ring_pages or ring_pages_for(freq, stack_bytes)
        self.cpus = online_cpus()
        self.rings: dict[int, _ring.PerfRing] = {}
        self.fds: list[int] = []
        self.attached_tids: set[int] = set()
        self._allow_gone = False
        _raise_fd_limit()

    def open(self, allow_gone: bool = False) -> None:
        """Attach to every thread; repeat until no thread appeared meanwhile.

        allow_gone: a process that already exited is not an error (nothing to sample).
        """
        self._allow_gone = allow_gone
        page = os.sysconf("SC_PAGE_SIZE")
        watermark = self.ring_pages * page // 2
        try:
            for _ in range(20):
                tids = [t for t in thread_ids(self.pid) if t not in self.attached_tids]
                if not tids:
                    break
                for tid in tids:
                    self._attach_thread(tid, watermark)
        except BaseException:
            self.close()
            raise
        if not self.attached_tids and not allow_gone:
            self.close()
            raise ProcessNotFound(f"process {self.pid} has no threads left to sample")

    def _attach_thread(self, tid: int, watermark: int) -> None:
        opened: list[int] = []
        for cpu in self.cpus:
            try:
                fd = _ring.open_cpu_clock(tid, cpu, self.freq, True, watermark,
                                          self.stack_bytes)
            except OSError as exc:
                for f in opened:
                    os.close(f)
                if exc.errno == errno.ESRCH and (tid != self.pid or self._allow_gone):
                    return  # the thread ended meanwhile; nothing to sample
                raise explain_perf_error(exc, self.pid, self.freq) from None
            opened.append(fd)
            ring = self.rings.get(cpu)
            if ring is None:
                self.rings[cpu] = self._map_ring(fd)
            else:
                _ring.set_output(fd, ring.fd)
        self.fds.extend(opened)
        self.attached_tids.add(tid)

    def _map_ring(self, fd: int) -> _ring.PerfRing:
        """The ring of one CPU; halved while the kernel refuses its size (an unprivileged
        user's locked-memory limit, kernel.perf_event_mlock_kb)."""
        while True:
            try:
                return _ring.PerfRing(fd, self.ring_pages)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOMEM) or \
                        self.ring_pages <= MIN_RING_PAGES:
                    raise RsprofError(f"cannot map the perf ring: {exc.strerror}") from None
                self.ring_pages //= 2

    def drain(self, decoder: _ring.PerfDecoder) -> int:
        return sum(ring.drain(decoder) for ring in self.rings.values())

    def poll_fds(self) -> Iterator[int]:
        for ring in self.rings.values():
            yield ring.fd

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class NullPerfSession:
    """No perf events (CPU comes from the shim's self-sampler): the same interface."""

    def __init__(self) -> None:
        self.attached_tids: set[int] = set()

    def drain(self, decoder: _ring.PerfDecoder) -> int:
        return 0

    def poll_fds(self) -> Iterator[int]:
        return iter(())

    def close(self) -> None:
        pass
