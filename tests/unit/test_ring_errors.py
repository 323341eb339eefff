"""A failed mmap of a ring reports mmap's own errno, not one guessed for it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from rsprof import _ring


def test_perf_ring_on_a_closed_descriptor_is_ebadf() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # r is now a descriptor number nothing holds
    with pytest.raises(OSError) as info:
        _ring.PerfRing(r, 1)
    assert info.value.errno == errno.EBADF, info.value


def test_perf_ring_on_a_file_that_cannot_be_mapped_is_enodev() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            _ring.PerfRing(fd, 1)
        assert info.value.errno == errno.ENODEV, info.value
        assert info.value.strerror == os.strerror(errno.ENODEV)
    finally:
        os.close(fd)


def test_perf_ring_writable_map_of_a_read_only_file_is_eacces(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    path.write_bytes(bytes(2 * os.sysconf("SC_PAGESIZE")))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            _ring.PerfRing(fd, 1)
        assert info.value.errno == errno.EACCES, info.value
    finally:
        os.close(fd)


def test_a_real_perf_ring_mapped_again_at_another_size_is_einval() -> None:
    """The kernel refuses a second mapping of a perf ring with another size."""
    try:
        fd = _ring.open_cpu_clock(0, -1, 99, False, 4096)
    except OSError as exc:
        pytest.skip(f"perf_event_open is not permitted here: {exc}")
    try:
        ring = _ring.PerfRing(fd, 4)
        try:
            with pytest.raises(OSError) as info:
                _ring.PerfRing(fd, 8)
            assert info.value.errno == errno.EINVAL, info.value
        finally:
            ring.close()
    finally:
        os.close(fd)


def test_shared_region_map_failure_carries_errno() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            _ring.ShmRing(fd, 2 * _ring.SHM_HEADER_BYTES)
        assert info.value.errno == errno.ENODEV, info.value
    finally:
        os.close(fd)
