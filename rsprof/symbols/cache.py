"""On-disk cache location and atomic writes for per-build-id symbol data."""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/rsprof/symcache`, or `~/.cache/rsprof/symcache`."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return root / "rsprof" / "symcache"


def atomic_write(path: Path, data: bytes) -> bool:
    """Write `data` to `path` via a temporary file and rename; False if that failed."""
    import tempfile  # lazily: only a cache write needs it, and it is slow to import

    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, path)
        tmp_name = None
        return True
    except OSError:
        return False
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


_TRAILER = struct.Struct("<8sIQ")  # magic, crc32 of the payload, payload length
_TRAILER_MAGIC = b"RSPCACHE"


def write_sealed(path: Path, payload: bytes) -> bool:
    """Atomically write `payload` followed by a checksummed trailer."""
    trailer = _TRAILER.pack(_TRAILER_MAGIC, zlib.crc32(payload), len(payload))
    return atomic_write(path, payload + trailer)


def read_sealed(path: Path) -> bytes | None:
    """The payload written by `write_sealed`, or None if missing, truncated or corrupt."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < _TRAILER.size:
        return None
    magic, crc, length = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if magic != _TRAILER_MAGIC or length != len(data) - _TRAILER.size:
        return None
    payload = data[:length]
    if zlib.crc32(payload) != crc:
        return None
    return payload
