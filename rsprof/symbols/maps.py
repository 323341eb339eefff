"""Executable mappings of a process, from /proc/PID/maps, and access to their files."""

from __future__ import annotations

import os
from dataclasses import dataclass

_DELETED = " (deleted)"
VDSO = "[vdso]"


@dataclass(frozen=True, slots=True)
class Mapping:
    """One executable, file-backed mapping of a process."""

    start: int
    end: int
    offset: int  # file offset of `start`
    path: str  # without the " (deleted)" suffix
    inode: int
    dev: str  # "major:minor" as printed in maps
    deleted: bool

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end

    def file_offset(self, address: int) -> int:
        return address - self.start + self.offset

    @property
    def file_key(self) -> tuple[str, int, str]:
        """Identifies the mapped file (same file mapped several times -> same key)."""
        return (self.dev, self.inode, self.path)


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of /proc/PID/maps; return executable file-backed mappings by start."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue  # anonymous mapping
        addr, perms, offset, dev, inode, path = parts
        if "x" not in perms or not (path.startswith("/") or path == VDSO):
            continue  # not executable, or [vsyscall], [heap], memfd:..., etc.
        try:
            lo, hi = addr.split("-", 1)
            start, end = int(lo, 16), int(hi, 16)
            off, ino = int(offset, 16), int(inode)
        except ValueError:
            continue
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        out.append(Mapping(start, end, off, path, ino, dev, deleted))
    out.sort(key=lambda m: m.start)
    return out


def read_exec_mappings(pid: int) -> list[Mapping]:
    """The executable file-backed mappings of `pid` (raises OSError if unreadable)."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
        return parse_maps(f.read())


def _same_inode(path: str, mapping: Mapping) -> bool:
    try:
        return os.stat(path).st_ino == mapping.inode
    except OSError:
        return False


def readable_path(pid: int, mapping: Mapping) -> str | None:
    """A path from which the mapped file's contents can be read, or None.

    Prefers /proc/PID/map_files/<start>-<end> (works for deleted or replaced files;
    needs root or ptrace rights), then /proc/PID/exe for the main binary (same inode),
    then the path itself unless the mapping says it was deleted.
    """
    map_file = f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}"
    if os.access(map_file, os.R_OK):
        return map_file  # the mapped file itself, whatever happened to its name
    exe = f"/proc/{pid}/exe"
    if _same_inode(exe, mapping) and os.access(exe, os.R_OK):
        return exe
    if not mapping.deleted and os.access(mapping.path, os.R_OK):
        # On overlayfs the inode in maps may differ from stat(); accept the path anyway.
        return mapping.path
    return None


def open_mapping(pid: int, mapping: Mapping) -> int | None:
    """Open the mapped file read-only and return the fd (None if impossible).

    Holding the fd keeps the contents readable after the process exits or the file is
    deleted; read it via `fd_path(fd)`.
    """
    if mapping.path == VDSO:
        return _copy_vdso(pid, mapping)
    path = readable_path(pid, mapping)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    return fd


def _copy_vdso(pid: int, mapping: Mapping) -> int | None:
    """The vDSO is an ELF image in memory only: copy it into a memfd to read its symbols."""
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(mapping.start)
            image = mem.read(mapping.end - mapping.start)
    except (OSError, OverflowError, ValueError):
        return None
    if not image.startswith(b"\x7fELF"):
        return None
    fd = os.memfd_create("rsprof-vdso", os.MFD_CLOEXEC)
    os.write(fd, image)
    return fd


def fd_path(fd: int) -> str:
    """A path that opens the same file as our descriptor `fd`."""
    return f"/proc/self/fd/{fd}"
