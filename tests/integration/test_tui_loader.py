"""The TUI's snapshot loader on real profiles: it agrees with `rsprof top`, and
reading a file again and again while it is being recorded ends exactly where
one read of the finished file does (the newest intervals are re-read, never
counted twice)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsprof.storage.profile_file import open_readonly
from rsprof.tui.loader import ProfileLoader
from rsprof.tui.snapshot import ENDED, VIEW, Snapshot
from tests.conftest import rsprof_env
from tests.integration.helpers import query, self_percent_by_function, top_cpu_json

pytestmark = pytest.mark.integration


def _load(db: Path, live: bool = False) -> Snapshot:
    conn = open_readonly(db)
    try:
        return ProfileLoader(conn, live=live).load()
    finally:
        conn.close()


def _cpu_samples(snap: Snapshot) -> dict[str, int]:
    return {r.function: r.samples for r in snap.cpu_rows}


def _mem(snap: Snapshot) -> dict[str, tuple[int, int, int]]:
    return {r.key: (r.live_bytes, r.alloc_bytes, r.allocs) for r in snap.mem_rows}


def test_loader_agrees_with_top_and_survives_live_reads(targets: Path, run_rsprof,
                                                        tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsprof", "run", "-q", "--cpu-freq", "499", "-i", "250ms",
         "-o", str(db), "--", str(targets / "heap_exact")],
        cwd=tmp_path, env=rsprof_env(tmp_path / "cache"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        conn = open_readonly(db)
        loader = ProfileLoader(conn, live=True)
        reads = 0
        while proc.poll() is None:
            loader.load()
            reads += 1
            time.sleep(0.1)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        live_final = loader.load()
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reads >= 3
    assert live_final.state == ENDED
    fresh = _load(db)
    assert fresh.state == VIEW
    assert _cpu_samples(live_final) == _cpu_samples(fresh)
    assert _mem(live_final) == _mem(fresh)
    # The per-interval series too (the loader updates them in place of rebuilding).
    assert {r.key: dict(r.series) for r in live_final.cpu_rows} == \
        {r.key: dict(r.series) for r in fresh.cpu_rows}
    assert {r.key: dict(r.series) for r in live_final.mem_rows} == \
        {r.key: dict(r.series) for r in fresh.mem_rows}
    assert live_final.intervals == fresh.intervals
    total = sum(_cpu_samples(fresh).values())
    assert total == int(dict(query(db, "SELECT key, value FROM meta"))["samples"])
    # The same shares as `rsprof top cpu`.
    shares = self_percent_by_function(top_cpu_json(run_rsprof, db))
    for row in fresh.cpu_rows:
        assert abs(row.total_pct - shares[row.function]) < 0.01, row.function
    # Heap rows: the known leak, exactly (heap_exact leaks 100 blocks of 4096 bytes).
    leak = [r for r in fresh.mem_rows if r.function == "heap_exact::leak_known"]
    assert len(leak) == 1
    assert (leak[0].live_bytes, leak[0].allocs) == (409600, 100)
    # Its live-bytes series ends at the leaked amount.
    assert leak[0].series[max(leak[0].series)] == 409600.0


def test_loader_on_a_known_cpu_split(targets: Path, run_rsprof, tmp_path: Path) -> None:
    db = tmp_path / "split.db"
    run_rsprof("run", "-q", "--cpu-freq", "499", "-o", str(db), "--",
               str(targets / "cpu_split"), "--threads", "2", "--seconds", "3", check=True)
    snap = _load(db)
    pct = {r.function: r.total_pct for r in snap.cpu_rows}
    assert abs(pct["cpu_split::work_fifty"] - 50) <= 3, pct
    assert abs(pct["cpu_split::work_thirty"] - 30) <= 3, pct
    assert abs(pct["cpu_split::work_twenty"] - 20) <= 3, pct
    assert snap.cpu_rows[0].function == "cpu_split::work_fifty"
    assert snap.cpu_rows[0].location.endswith(".rs:" + snap.cpu_rows[0].location.split(":")[-1])
    # Per-interval shares of a steady split stay near the split in full intervals.
    series = snap.cpu_rows[0].series
    middle = [v for i, v in series.items() if 0 < i < snap.intervals - 1]
    assert middle and all(35 <= v <= 65 for v in middle), middle
