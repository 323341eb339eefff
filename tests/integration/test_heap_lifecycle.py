"""Heap recording lifecycles: the target killed, rsprof killed, attaching with -p."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsprof.recording.process import is_alive
from rsprof.shim import shim_path
from tests.conftest import rsprof_env
from tests.integration.helpers import query, wait_for

pytestmark = pytest.mark.integration


def _children(pid: int, name: str = "alloc_bench") -> list[int]:
    """Child processes of pid running `name` (rsprof may have other helpers)."""
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as fh:
            for child in (int(c) for c in fh.read().split()):
                with open(f"/proc/{child}/comm") as comm:
                    if comm.read().strip() == name:
                        found.append(child)
    return found


def _spawn_run(tmp_path: Path, db: Path, *target: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rsprof", "run", "-q", "-o", str(db), "--", *target],
        cwd=tmp_path, env=rsprof_env(tmp_path / "cache"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _allocs_committed(db: Path) -> bool:
    try:
        rows = query(db, "SELECT value FROM meta WHERE key = 'heap_allocs'")
    except Exception:
        return False
    return bool(rows) and int(rows[0][0]) > 100_000


def test_target_killed_mid_recording(targets: Path, tmp_path: Path) -> None:
    db = tmp_path / "killed-target.db"
    proc = _spawn_run(tmp_path, db, str(targets / "alloc_bench"), "--seconds", "60")
    try:
        wait_for(lambda: _allocs_committed(db), timeout=15)
        (target,) = _children(proc.pid)
        os.kill(target, signal.SIGKILL)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, err  # the program's status, as `time`
    assert f"process {target} was killed by SIGKILL" in err
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["end_reason"] == "exited" and meta["exit_code"] == "-9"
    assert meta["heap_malformed"] == "0"
    assert int(meta["heap_allocs"]) > 100_000
    churn = query(db, "SELECT total_allocs, total_frees FROM heap_samples"
                      " WHERE function = 'alloc_bench::make'")
    assert churn and churn[0][0] > 100_000
    assert churn[0][0] - churn[0][1] <= 1  # each block is freed at once; one may be live


def test_rsprof_killed_leaves_the_target_running_unharmed(targets: Path,
                                                           tmp_path: Path) -> None:
    db = tmp_path / "killed-rsprof.db"
    proc = _spawn_run(tmp_path, db, str(targets / "alloc_bench"), "--seconds", "4")
    wait_for(lambda: _allocs_committed(db), timeout=15)
    (target,) = _children(proc.pid)
    proc.kill()  # rsprof dies; the shim must notice the silent reader and stop waiting
    proc.communicate(timeout=10)
    # The target, now an orphan, finishes its 4 s of work and exits by itself.
    wait_for(lambda: not is_alive(target), timeout=20)
    # What was committed before the kill is readable.
    assert _allocs_committed(db)
    assert query(db, "SELECT COUNT(*) FROM heap_samples")[0][0] > 0


def test_attach_to_a_process_that_preloaded_the_shim(targets: Path, tmp_path: Path,
                                                     run_rsprof) -> None:
    env = dict(os.environ, LD_PRELOAD=str(shim_path()))
    target = subprocess.Popen([str(targets / "alloc_bench"), "--seconds", "30"], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None
        target.stdout.readline()  # ready: its region exists, nobody reads it (IDLE)
        time.sleep(0.3)
        db = tmp_path / "attached.db"
        result = run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db))
        assert result.returncode == 0, result.stderr
        meta = dict(query(db, "SELECT key, value FROM meta"))
        assert meta["heap_source"] == "shim"
        assert int(meta["heap_allocs"]) > 100_000
        assert meta["heap_dropped"] == "0" and meta["heap_malformed"] == "0"
        doc = json.loads(run_rsprof("top", "heap", str(db), "--json", check=True).stdout)
        assert doc["sites"][0]["function"] == "alloc_bench::make"
        assert target.poll() is None  # detached: the target runs on
    finally:
        target.kill()
        target.wait()
