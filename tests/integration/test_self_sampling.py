"""CPU through the shim's SIGPROF self-sampler (--cpu-source self)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rsprof.shim import shim_path
from tests.integration.helpers import query, self_percent_by_function, top_cpu_json

pytestmark = pytest.mark.integration


def test_known_split_through_self_sampling(targets: Path, run_rsprof, tmp_path: Path) -> None:
    db = tmp_path / "self.db"
    result = run_rsprof("run", "-q", "--cpu-source", "self", "--cpu-freq", "499", "-o",
                        str(db), "--", str(targets / "cpu_split"), "--threads", "2",
                        "--seconds", "5", timeout=60)
    assert result.returncode == 0, result.stderr
    doc = top_cpu_json(run_rsprof, db)
    shares = self_percent_by_function(doc)
    assert abs(shares.get("cpu_split::work_fifty", 0) - 50) <= 3, shares
    assert abs(shares.get("cpu_split::work_thirty", 0) - 30) <= 3, shares
    assert abs(shares.get("cpu_split::work_twenty", 0) - 20) <= 3, shares
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["cpu_source"] == "self"
    # Both worker threads were started by the program after the shim was loaded.
    threads = {t for (t,) in query(db, "SELECT DISTINCT thread FROM cpu_samples")}
    assert {"split-0", "split-1"} <= threads
    # CPU-time timers: about one sample per 1/rate of CPU (the kernel tick caps the
    # rate per thread; here 250 Hz), never more than asked.
    assert 400 <= doc["total_samples"] <= 2 * 5 * 499


def test_thread_started_after_attach_is_self_sampled(targets: Path, run_rsprof,
                                                     tmp_path: Path) -> None:
    env = dict(os.environ, LD_PRELOAD=str(shim_path()))
    target = subprocess.Popen([str(targets / "late_thread"), "--delay", "1.5", "--seconds", "30"],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None
        target.stdout.readline()  # ready
        db = tmp_path / "late-self.db"
        result = run_rsprof("-p", str(target.pid), "-q", "--cpu-source", "self", "-d", "4s",
                            "-o", str(db))
        assert result.returncode == 0, result.stderr
        rows = query(db, "SELECT thread, function, SUM(samples) FROM cpu_samples"
                         " GROUP BY thread, function ORDER BY 3 DESC")
        assert rows, "no samples"
        assert rows[0][0] == "late-worker"
        assert rows[0][1] == "late_thread::late_thread_work"
        assert rows[0][2] >= 99  # busy for about 2.5 of the 4 seconds at 99 Hz
        assert dict(query(db, "SELECT key, value FROM meta"))["cpu_source"] == "self"
        assert target.poll() is None  # the target runs on after the recording
    finally:
        target.kill()
        target.wait()


def test_self_sampling_needs_the_shim(targets: Path, start_target, run_rsprof) -> None:
    target = start_target(targets / "idle", "--seconds", "30")
    result = run_rsprof("-p", str(target.pid), "-q", "--cpu-source", "self", "-d", "1s")
    assert result.returncode == 2
    assert "needs rsprof's shim" in result.stderr
