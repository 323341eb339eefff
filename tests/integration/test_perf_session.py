"""The perf session against real processes: lost records and thread coverage."""

from __future__ import annotations

import time

import pytest

from rsprof import _ring, _unwind
from rsprof.recording.perf_session import PerfSession

pytestmark = pytest.mark.integration


def test_a_full_ring_reports_lost_records(targets, start_target) -> None:
    target = start_target(targets / "cpu_split", "--threads", "2", "--seconds", "30")
    session = PerfSession(target.pid, 2000, ring_pages=1)  # one 4 KiB page per CPU
    session.open()
    try:
        decoder = _ring.PerfDecoder(_unwind.StackTable(), target.pid, time.monotonic_ns(),
                                    1_000_000_000)
        time.sleep(1.5)  # not draining: the kernel must drop records and say so
        session.drain(decoder)
        time.sleep(0.5)
        session.drain(decoder)
    finally:
        session.close()
    assert decoder.lost > 0
    assert decoder.samples > 0
    assert decoder.malformed == 0


def test_every_thread_is_attached(targets, start_target) -> None:
    target = start_target(targets / "cpu_split", "--threads", "3", "--seconds", "30")
    session = PerfSession(target.pid, 99)
    session.open()
    try:
        import os

        tids = {int(t) for t in os.listdir(f"/proc/{target.pid}/task")}
        assert tids <= session.attached_tids
        assert len(session.rings) == len(session.cpus)
    finally:
        session.close()
