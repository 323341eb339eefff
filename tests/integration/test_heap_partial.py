"""Never silently partial (issue 13): a reader that is alive but slow is waited for, so a
recording is exact; only a reader that is gone releases the program, and then the
profile says it is partial, everywhere it is read."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsprof import shm_reference as ref
from rsprof.recording.process import is_alive
from rsprof.storage.profile_file import open_readonly
from rsprof.tui.loader import ProfileLoader
from rsprof.tui.screen import plain_text, render
from rsprof.tui.state import MEM, ViewState
from tests.conftest import rsprof_env
from tests.integration.helpers import RunRsprof, query, wait_for

pytestmark = pytest.mark.integration

# A small recursive run: 100 trees of depth 12, 8191 nodes of 16 bytes each, every one
# from its own stack; 19.7 MB of alloc/free records, more than the 8 MiB ring holds, so
# a reader that stops draining makes the program wait. Then 25 leaks of 48 bytes.
SMALL = ("--depth", "12", "--iterations", "100")
NODES = 8191 * 100
LEAKS, LEAK_BYTES = 25, 48


def _spawn(tmp_path: Path, db: Path, program: Path, *args: str) -> subprocess.Popen[str]:
    """`rsprof run -q`; the program's own stdout comes through rsprof's (a pipe)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rsprof", "run", "-q", "-o", str(db), "--", str(program), *args],
        cwd=tmp_path, env=rsprof_env(tmp_path / "cache"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _allocs_committed(db: Path, at_least: int) -> bool:
    try:
        rows = query(db, "SELECT value FROM meta WHERE key = 'heap_allocs'")
    except Exception:
        return False
    return bool(rows) and int(rows[0][0]) >= at_least


def _region_header(rsprof_pid: int) -> dict[str, int]:
    """The header of the region `rsprof run` (process rsprof_pid) made."""
    (name,) = [n for n in os.listdir(ref.SHM_DIR) if n.startswith(f"rsprof-{rsprof_pid}-")]
    reader = ref.ShmReader.open(name)
    try:
        return reader.header()
    finally:
        reader.close()


def _folded_bytes(run_rsprof: RunRsprof, db: Path, function: str, *extra: str) -> int:
    """Heap bytes of the whole stacks (no attribution) that pass through `function`."""
    folded = run_rsprof("export", str(db), "--kind", "heap", "-f", "folded", "-o", "-", *extra,
                        check=True).stdout
    return sum(int(line.rsplit(" ", 1)[1]) for line in folded.splitlines()
               if function in line.rsplit(" ", 1)[0].split(";"))


def _assert_exact_and_complete(run_rsprof: RunRsprof, db: Path) -> None:
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["end_reason"] == "exited" and meta["exit_code"] == "0"
    for counter in ("heap_dropped", "heap_malformed", "heap_unknown_stacks",
                    "heap_replaced_live", "heap_raw_stacks", "heap_truncated_stacks"):
        assert meta[counter] == "0", counter
    assert meta["heap_partial_from_s"] == "" and meta["heap_partial_after_records"] == ""
    # Every node: allocated under create (16 bytes each) and freed.
    assert _folded_bytes(run_rsprof, db, "binary_trees::create") == NODES * 16
    assert _folded_bytes(run_rsprof, db, "binary_trees::create", "--live") == 0
    doc = json.loads(run_rsprof("top", "heap", str(db), "--json", check=True).stdout)
    (leak,) = [s for s in doc["sites"] if s["function"] == "binary_trees::leak_known"]
    assert (leak["allocs"], leak["frees"]) == (LEAKS, 0)
    assert leak["live_bytes"] == leak["alloc_bytes"] == LEAKS * LEAK_BYTES
    assert doc["summary"]["heap_partial"] == "" and doc["summary"]["heap_partial_from_s"] is None
    assert doc["summary"]["heap_dropped"] == 0
    assert query(db, "SELECT DISTINCT partial FROM heap_samples") == [(0,)]
    text = run_rsprof("top", "heap", str(db), check=True).stdout
    assert "partial" not in text.lower()


@pytest.mark.parametrize("stall", [0.0, 1.5, 3.0], ids=["no-stall", "stall-1.5s", "stall-3s"])
def test_small_recursive_run_is_exact_through_a_stopped_reader(
        targets: Path, tmp_path: Path, run_rsprof: RunRsprof, stall: float) -> None:
    db = tmp_path / "bt.db"
    proc = _spawn(tmp_path, db, targets / "binary_trees", *SMALL)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # the program is past the start gate: recorded
        assert ready.startswith("ready "), ready
        target = int(ready.split()[1])
        if stall:
            # rsprof stops reading: well past the 1 s heartbeat timeout the program
            # must still be waiting (not released with its records dropped).
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                time.sleep(stall)
                assert is_alive(target)  # unprofiled it needs 0.05 s
                hdr = _region_header(proc.pid)
                assert hdr["state"] == ref.STATE_RECORDING
                assert hdr["dropped"] == 0 and hdr["waits"] > 0
            finally:
                os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"allocs {NODES}" in out
    elapsed = float(out.split("elapsed ", 1)[1].split()[0])
    assert elapsed > stall * 0.9  # the program waited for the stopped reader
    assert "warning" not in err, err
    if stall:
        assert int(dict(query(db, "SELECT key, value FROM meta"))["heap_waits"]) > 0
    _assert_exact_and_complete(run_rsprof, db)


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Orphans of our descendants become our children (and their exit status ours)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) failed")
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def test_killed_reader_releases_the_program_and_the_profile_says_partial(
        targets: Path, tmp_path: Path, run_rsprof: RunRsprof) -> None:
    db = tmp_path / "killed.db"
    iterations = 3000  # 24.6 M allocations: tens of seconds recorded, ~1 s unprofiled
    with _subreaper():
        proc = _spawn(tmp_path, db, targets / "binary_trees", "--depth", "12",
                      "--iterations", str(iterations))
        target = 0
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready.startswith("ready "), ready
            target = int(ready.split()[1])
            wait_for(lambda: _allocs_committed(db, 300_000), timeout=30)
            proc.kill()  # kill -9 of the reader mid-run
            # The program writes into the same pipe: its end is the program's end.
            out, _err = proc.communicate(timeout=90)
            _pid, status = os.waitpid(target, 0)  # ours since rsprof died (subreaper)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            if target and is_alive(target):
                os.kill(target, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(target, 0)
    # The program finished normally, its own output complete.
    assert os.waitstatus_to_exitcode(status) == 0
    assert [line.split()[0] for line in out.splitlines()] == ["elapsed", "allocs", "maxrss_kb"]
    assert f"allocs {8191 * iterations}" in out

    # The profile says it is partial, and from when on.
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["end_reason"] == "recording"
    assert int(meta["heap_allocs"]) >= 300_000
    doc = json.loads(run_rsprof("top", "heap", str(db), "--json", check=True).stdout)
    summary = doc["summary"]
    assert summary["heap_partial"].startswith("partial heap profile: rsprof stopped at ")
    assert 0 < summary["heap_partial_from_s"] < 60
    text = run_rsprof("top", "heap", str(db), check=True).stdout
    assert "warning: partial heap profile: rsprof stopped at" in text
    csv = run_rsprof("top", "heap", str(db), "--csv", check=True)
    assert "partial heap profile" in csv.stderr
    assert query(db, "SELECT DISTINCT partial FROM heap_samples") == [(1,)]
    assert query(db, "SELECT DISTINCT partial FROM heap_stacks") == [(1,)]
    # Exports: in the file where the format can carry it, on stderr in any case.
    scope = tmp_path / "heap.speedscope.json"
    result = run_rsprof("export", str(db), "--kind", "heap", "-o", str(scope), check=True)
    assert "partial heap profile" in result.stderr
    assert "[PARTIAL from " in json.loads(scope.read_text())["name"]
    result = run_rsprof("export", str(db), "--kind", "heap", "-f", "folded", "-o", "-",
                        check=True)
    assert "partial heap profile" in result.stderr
    # The TUI: its status bar, and the memory view above the rows.
    conn = open_readonly(db)
    try:
        snap = ProfileLoader(conn, live=False).load()
    finally:
        conn.close()
    assert snap.heap_partial == summary["heap_partial"]
    screen = plain_text(render(snap, ViewState(view=MEM), 160, 30))
    assert "PARTIAL heap from " in screen.splitlines()[0]
    assert "rsprof stopped at" in screen
