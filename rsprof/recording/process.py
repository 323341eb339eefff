"""Finding and watching the target process through /proc."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from rsprof.errors import ProcessNotFound, UsageError


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    name: str
    cmdline: str
    executable: str | None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the parenthesised command name (field 3 of stat(5), the
    state letter, on); empty when there is no such process."""
    stat = _read(f"/proc/{pid}/stat")
    return [] if stat is None else stat[stat.rfind(")") + 2:].split()


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def process_identity(pid: int) -> str:
    """"<boot id> <pid> <start time>" of a living process, "" if there is none: unlike
    the pid alone, never the identity of another process (a recycled pid starts at
    another time; a reboot changes the boot id)."""
    fields = _stat_fields(pid)
    boot = (_read("/proc/sys/kernel/random/boot_id") or "").strip()
    if not boot:
        return ""
    # fields[0] is the state (field 3 of stat(5)), fields[19] starttime (field 22).
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return ""
    return f"{boot} {pid} {fields[19]}"


def identity_alive(identity: str) -> bool:
    """Whether the process of a `process_identity` still runs."""
    parts = identity.split()
    return len(parts) == 3 and parts[1].isdigit() and process_identity(int(parts[1])) == identity


def process_info(pid: int) -> ProcessInfo:
    if pid <= 0:
        raise UsageError(f"bad pid {pid}")
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessNotFound(f"no process with pid {pid}")
    if not is_alive(pid):
        raise ProcessNotFound(f"process {pid} has already exited")
    name = (_read(f"/proc/{pid}/comm") or "").strip() or str(pid)
    raw = _read(f"/proc/{pid}/cmdline") or ""
    cmdline = " ".join(part for part in raw.split("\0") if part)
    try:
        executable: str | None = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        executable = None  # not ours to read; perf_event_open gives the real verdict
    return ProcessInfo(pid, name, cmdline or name, executable)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(returncode: int) -> str:
    """How a child ended, from its Popen returncode (-N: killed by signal N)."""
    if returncode < 0:
        return f"was killed by {signal_name(-returncode)}"
    return f"exited with code {returncode}"


def exit_status(returncode: int) -> int:
    """The shell's status for a child's end: its exit code, or 128+N if signal N
    killed it (what `time`, `perf record` and `heaptrack` exit with)."""
    return 128 - returncode if returncode < 0 else returncode


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def thread_name(pid: int, tid: int) -> str | None:
    name = _read(f"/proc/{pid}/task/{tid}/comm")
    return name.strip() if name is not None else None


def find_by_name(name: str) -> int:
    """The pid of the one process whose name (comm or executable basename) is `name`."""
    me = os.getpid()
    matches: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        comm = (_read(f"/proc/{pid}/comm") or "").strip()
        raw = _read(f"/proc/{pid}/cmdline") or ""
        argv0 = os.path.basename(raw.split("\0", 1)[0]) if raw else ""
        # comm is cut to 15 characters by the kernel; compare the prefix too.
        named = name in (comm, argv0) or (len(comm) == 15 and name.startswith(comm))
        if named and is_alive(pid):
            matches.append((pid, " ".join(p for p in raw.split("\0") if p) or comm))
    if not matches:
        raise ProcessNotFound(f"no process named {name!r}")
    if len(matches) > 1:
        listing = "; ".join(f"{pid} {cmd[:60]}" for pid, cmd in matches[:10])
        raise UsageError(f"{len(matches)} processes named {name!r}, pick one with -p: {listing}")
    return matches[0][0]


def catches_signal(pid: int, signum: int) -> bool:
    """Whether process pid has a handler for signum (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False
