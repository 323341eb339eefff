"""Signals, kill -9, --append, list, newest-profile defaults, and every bad input."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.integration.helpers import one_line_error, query

pytestmark = pytest.mark.integration


def _wait_for_samples(db: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if query(db, "SELECT COUNT(*) FROM cpu_counts")[0][0] > 0:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    raise AssertionError("no samples committed in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finalizes_the_profile(sig, targets, start_target, spawn_rsprof,
                                      tmp_path: Path) -> None:
    target = start_target(targets / "cpu_split", "--seconds", "60")
    db = tmp_path / "sig.db"
    proc = spawn_rsprof("-p", str(target.pid), "-q", "-o", str(db))
    _wait_for_samples(db)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["end_reason"] == "interrupted"
    assert meta["end_time"]
    assert target.proc.poll() is None  # the target runs on


def test_kill_9_loses_at_most_an_interval_and_the_file_opens(targets, start_target,
                                                              spawn_rsprof, run_rsprof,
                                                              tmp_path: Path) -> None:
    target = start_target(targets / "cpu_split", "--seconds", "60")
    db = tmp_path / "killed.db"
    proc = spawn_rsprof("-p", str(target.pid), "-q", "-o", str(db))
    _wait_for_samples(db)
    start = query(db, "SELECT start_time FROM recordings")[0][0]
    # Committed once per interval (1 s): what the file holds never ends more than the
    # interval in progress (plus the time a commit takes) before the clock.
    lag_limit = 1.75
    worst = 0.0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        now = time.time()
        last = query(db, "SELECT MAX(interval) FROM cpu_counts")[0][0]
        worst = max(worst, now - start - (last + 1))
        time.sleep(0.1)
    assert worst < lag_limit, f"the committed data lagged {worst:.2f} s behind"
    seen_last, seen_samples = query(db, "SELECT MAX(interval), SUM(samples) FROM cpu_counts")[0]
    killed_at = time.time() - start
    proc.kill()
    proc.communicate(timeout=10)
    assert target.proc.poll() is None  # the target is unharmed
    last, samples = query(db, "SELECT MAX(interval), SUM(samples) FROM cpu_counts")[0]
    intervals = query(db, "SELECT COUNT(DISTINCT interval) FROM cpu_counts")[0][0]
    assert last >= seen_last and samples >= seen_samples  # what was committed stays
    assert killed_at - (last + 1) < lag_limit, (killed_at, last)  # at most an interval lost
    assert intervals >= 4
    assert samples >= 10 * intervals
    result = run_rsprof("top", "cpu", str(db), "--json", check=True)
    assert "work_fifty" in result.stdout


def test_append_continues_the_timeline(targets, start_target, run_rsprof,
                                       tmp_path: Path) -> None:
    target = start_target(targets / "cpu_split", "--seconds", "60")
    db = tmp_path / "append.db"
    run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db), check=True)
    refused = run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db))
    assert refused.returncode == 2
    assert "already exists" in one_line_error(refused)
    run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db), "--append", check=True)
    recs = query(db, "SELECT id, start_time FROM recordings ORDER BY id")
    assert len(recs) == 2 and recs[1][1] > recs[0][1]
    first = query(db, "SELECT MAX(elapsed_s) FROM cpu_samples WHERE recording_id = 1")[0][0]
    second = query(db, "SELECT MIN(elapsed_s) FROM cpu_samples WHERE recording_id = 2")[0][0]
    assert second > first
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert int(meta["samples"]) == query(db, "SELECT SUM(samples) FROM cpu_counts")[0][0]


def test_append_of_a_warm_run_reuses_the_frames_of_a_cold_one(targets, start_target,
                                                              run_rsprof,
                                                              tmp_path: Path) -> None:
    """The first run symbolizes with the DWARF reader (empty cache), the appended one
    from the SymCaches built meanwhile; they spell some source paths differently
    (`./nptl/./nptl/pthread_create.c` and `nptl/nptl/pthread_create.c`)."""
    target = start_target(targets / "cpu_split", "--seconds", "60")
    db = tmp_path / "twice.db"
    cache = tmp_path / "cache"  # run_rsprof's XDG_CACHE_HOME
    run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db), check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the background SymCache builds
        if list(cache.rglob("*.symcache")) and not list(cache.rglob("*.building")):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("no SymCache was built")
    run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db), "--append",
               check=True)
    frames_of = {}
    places_of = {}
    for rid, module, rel, frame_ids, places in query(db, """
            SELECT a.recording_id, m.path, a.rel_address,
                   (SELECT group_concat(frame_id) FROM (SELECT frame_id FROM address_frames
                    WHERE address_id = a.id ORDER BY depth)),
                   (SELECT group_concat(place, '|') FROM (
                        SELECT IFNULL(f.file, '') || ':' || IFNULL(f.line, '') || ':'
                               || f.module_id AS place
                        FROM address_frames af JOIN frames f ON f.id = af.frame_id
                        WHERE af.address_id = a.id ORDER BY af.depth))
            FROM addresses a JOIN modules m ON m.id = a.module_id"""):
        frames_of[(rid, module, rel)] = frame_ids
        places_of[(rid, module, rel)] = places
    both = [(m, r) for (rid, m, r) in frames_of if rid == 1 and (2, m, r) in frames_of]
    assert len(both) >= 5, frames_of
    # Every address gets the same source files, lines and module, spelled the same.
    differ = [(m, hex(r)) for m, r in both if places_of[(1, m, r)] != places_of[(2, m, r)]]
    assert not differ, (differ, query(db, "SELECT * FROM frames ORDER BY function, line"))
    # In the program's own code the very same frames. (In libc the two readers may pick
    # different aliases of one symbol for its name, e.g. __GI___clock_gettime and
    # __clock_gettime_2: docs/architecture.md, the Storage bullet.)
    exe = os.path.realpath(targets / "cpu_split")
    own = [(m, r) for m, r in both if m == exe]
    assert own, both
    differ = [(m, hex(r)) for m, r in own if frames_of[(1, m, r)] != frames_of[(2, m, r)]]
    assert not differ, (differ, query(db, "SELECT * FROM frames ORDER BY function, line"))
    # and no frame is stored twice under two spellings of its file or module
    assert query(db, "SELECT COUNT(*) FROM frames")[0][0] == query(
        db, "SELECT COUNT(*) FROM (SELECT DISTINCT f.function, f.line, m.path FROM frames f"
            " JOIN modules m ON m.id = f.module_id)")[0][0]


def test_list_and_newest_profile(targets, start_target, run_rsprof, tmp_path: Path) -> None:
    target = start_target(targets / "cpu_split", "--seconds", "60")
    work = tmp_path / "profiles"
    work.mkdir()
    run_rsprof("-p", str(target.pid), "-q", "-d", "1s", "-o", "first.db", cwd=work, check=True)
    time.sleep(1.1)
    run_rsprof("-p", str(target.pid), "-q", "-d", "1s", cwd=work, check=True)
    (work / "notes.db").write_bytes(b"not a profile")
    default = [p.name for p in work.iterdir() if p.name.startswith("rsprof-cpu_split-")]
    assert len(default) == 1  # default name holds process name and time
    listing = run_rsprof("list", "-d", str(work), check=True).stdout
    assert "first.db" in listing and default[0] in listing and "notes.db" not in listing
    assert "cpu_split" in listing
    top = run_rsprof("top", "cpu", "--json", cwd=work, check=True)
    assert f'"profile": "{work / default[0]}"' in top.stdout or default[0] in top.stdout


# -- bad input: one line on stderr, exit 2 for usage and 1 for runtime errors ----------


def test_no_such_pid(run_rsprof) -> None:
    result = run_rsprof("-p", "999999999", "-q", "-d", "1s")
    assert result.returncode == 1
    assert "no process with pid 999999999" in one_line_error(result)


def test_no_process_matching_name(run_rsprof) -> None:
    result = run_rsprof("-P", "no-such-process-xyz", "-q", "-d", "1s")
    assert result.returncode == 1
    assert "no process named" in one_line_error(result)


def test_several_processes_matching_name_are_listed(targets, start_target, run_rsprof) -> None:
    a = start_target(targets / "idle", "--seconds", "30")
    b = start_target(targets / "idle", "--seconds", "30")
    result = run_rsprof("-P", "idle", "-q", "-d", "1s")
    assert result.returncode == 2
    line = one_line_error(result)
    assert str(a.pid) in line and str(b.pid) in line


@pytest.mark.parametrize("args", [
    ["-d", "ten"], ["-d", "0s"], ["-i", "-1"], ["--cpu-freq", "0"], ["--cpu-freq", "10001"],
])
def test_bad_options_are_usage_errors(args, targets, start_target, run_rsprof) -> None:
    target = start_target(targets / "idle", "--seconds", "30")
    result = run_rsprof("-p", str(target.pid), "-q", *args)
    assert result.returncode == 2
    one_line_error(result)


def test_unknown_option_is_a_one_line_usage_error(run_rsprof) -> None:
    result = run_rsprof("--no-such-flag")
    assert result.returncode == 2
    one_line_error(result)


def test_not_a_profile(run_rsprof, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    result = run_rsprof("top", "cpu", str(text))
    assert result.returncode == 1
    assert "not an rsprof profile" in one_line_error(result)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    result = run_rsprof("query", str(other), "SELECT 1")
    assert result.returncode == 1
    assert "not an rsprof profile" in one_line_error(result)


def test_missing_file(run_rsprof, tmp_path: Path) -> None:
    result = run_rsprof("top", "cpu", str(tmp_path / "nope.db"))
    assert result.returncode == 1
    assert "no such file" in one_line_error(result)


def _small_profile(targets, start_target, run_rsprof, tmp_path: Path) -> Path:
    target = start_target(targets / "cpu_split", "--seconds", "60")
    db = tmp_path / "small.db"
    run_rsprof("-p", str(target.pid), "-q", "-d", "1s", "-o", str(db), check=True)
    return db


def test_corrupt_file(targets, start_target, run_rsprof, tmp_path: Path) -> None:
    db = _small_profile(targets, start_target, run_rsprof, tmp_path)
    data = bytearray(db.read_bytes())
    for i in range(200, len(data), 7):
        data[i] ^= 0x5A
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(bytes(data))
    for args in (["top", "cpu", str(bad)], ["query", str(bad), "SELECT * FROM cpu_samples"]):
        result = run_rsprof(*args)
        assert result.returncode == 1, result.stdout
        one_line_error(result)


def test_bad_sql_and_read_only_query(targets, start_target, run_rsprof, tmp_path: Path) -> None:
    db = _small_profile(targets, start_target, run_rsprof, tmp_path)
    result = run_rsprof("query", str(db), "SELEKT nonsense")
    assert result.returncode == 1
    assert "SQL error" in one_line_error(result)
    before = db.read_bytes()
    result = run_rsprof("query", str(db), "DELETE FROM cpu_counts")
    assert result.returncode == 1
    one_line_error(result)
    assert db.read_bytes() == before


def test_newer_schema_is_refused(targets, start_target, run_rsprof, tmp_path: Path) -> None:
    db = _small_profile(targets, start_target, run_rsprof, tmp_path)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    result = run_rsprof("top", "cpu", str(db))
    assert result.returncode == 1
    assert "newer" in one_line_error(result)


def test_perf_not_permitted_is_explained(targets, start_target, run_rsprof,
                                         tmp_path: Path) -> None:
    """An unprivileged user may not sample another user's process."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    target = start_target(targets / "idle", "--seconds", "30")
    import subprocess
    import sys

    from tests.conftest import ROOT, rsprof_env

    os.chmod(tmp_path, 0o777)
    env = rsprof_env(tmp_path / "cache-nobody")
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
         "-m", "rsprof", "-p", str(target.pid), "-q", "-d", "1s", "-o",
         str(tmp_path / "nobody.db")],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    # kernel.perf_event_paranoid (2 here) allows user-space sampling of one's own
    # processes: the cause is the owner, and the message must not blame paranoid.
    assert "returned EACCES" in line and "belongs to another user" in line, line
    assert "paranoid" not in line, line
