"""Never silently partial: what a profile with dropped heap records, or whose rsprof
died, says in its summary, views and TUI (the end-to-end runs are in
tests/integration/test_heap_partial.py)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

from rsprof.recording.process import process_identity
from rsprof.report.profile_summary import partial_text, read_summary
from rsprof.storage.profile_file import open_readonly
from rsprof.storage.writer import ProfileWriter
from rsprof.tui.screen import plain_text, render
from rsprof.tui.snapshot import EMPTY
from rsprof.tui.state import MEM, ViewState
from tests.unit.test_storage import ADDR_A, ADDR_B, START, info, resolved


def _write(path: Path, *, dropped: int = 0, partial: dict[str, object] | None = None,
           recorder: str | None = None, finish: bool = True) -> None:
    writer = ProfileWriter(path)
    writer.begin_recording(replace(info(), heap_source="preload"))
    writer.set_meta({"recorder_process": process_identity(os.getpid())
                     if recorder is None else recorder})
    writer.set_meta_once({"heap_partial_from_s": "", "heap_partial_after_records": ""})
    writer.add_addresses(resolved())
    writer.add_stacks([(0, [ADDR_A, ADDR_B])])
    writer.add_heap_sites(0, [(0, 10, 1000, 2, 200, 800, 900)])
    writer.counters.heap_allocs, writer.counters.heap_frees = 10, 2
    writer.counters.heap_dropped = dropped
    if partial:
        writer.set_meta_once(partial)
    writer.commit()
    if finish:
        writer.finalize(START + 10.0, "exited")
    else:
        writer.close_abruptly()


def _summary(path: Path):  # type: ignore[no-untyped-def]
    conn = open_readonly(path)
    try:
        partial = conn.execute("SELECT DISTINCT partial FROM heap_samples").fetchall()
        return read_summary(conn), [p for (p,) in partial]
    finally:
        conn.close()


def test_a_complete_profile_is_not_partial(tmp_path: Path) -> None:
    _write(tmp_path / "p.db")
    summary, partial = _summary(tmp_path / "p.db")
    assert summary.heap_partial == "" and summary.heap_partial_from_s is None
    assert partial == [0]
    assert summary.as_dict()["heap_partial"] == ""


def test_dropped_records_make_it_partial_from_the_moment_they_began(tmp_path: Path) -> None:
    _write(tmp_path / "p.db", dropped=7,
           partial={"heap_partial_from_s": 2.5, "heap_partial_after_records": 1000})
    summary, partial = _summary(tmp_path / "p.db")
    assert summary.heap_partial == partial_text(2.5, 1000, 7)
    assert summary.heap_partial == (
        "partial heap profile: 7 records the shim could not write were dropped, the first "
        "after 2.5s and 1,000 complete records; heap totals and live bytes from then on are "
        "incomplete")
    assert summary.heap_partial_from_s == 2.5
    assert partial == [1]


def test_the_earliest_moment_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    _write(path, dropped=1, partial={"heap_partial_from_s": 1.0, "heap_partial_after_records": 5})
    writer = ProfileWriter(path, append=True)
    writer.begin_recording(replace(info(start=START + 20), heap_source="preload"))
    writer.set_meta_once({"heap_partial_from_s": 30.0, "heap_partial_after_records": 9})
    writer.finalize(START + 30.0, "exited")
    summary, _ = _summary(path)
    assert summary.heap_partial_from_s == 1.0


def test_a_recording_whose_rsprof_died_is_partial_from_its_last_commit(tmp_path: Path) -> None:
    me = process_identity(os.getpid())
    boot, pid, started = me.split()
    dead = f"{boot} {pid} {int(started) + 1}"  # our pid, another start: another process
    _write(tmp_path / "dead.db", recorder=dead, finish=False)
    summary, partial = _summary(tmp_path / "dead.db")
    assert summary.heap_partial.startswith("partial heap profile: rsprof stopped at ")
    assert summary.heap_partial_from_s is not None and summary.heap_partial_from_s >= 0
    assert partial == [1]  # not finished: the view cannot tell why
    # Still recording (its rsprof runs): in progress, not partial.
    _write(tmp_path / "live.db", finish=False)
    summary, _ = _summary(tmp_path / "live.db")
    assert summary.heap_partial == ""


def test_an_older_version_2_file_gets_the_partial_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _write(path)
    conn = sqlite3.connect(path)
    conn.executescript("DROP VIEW heap_samples;"
                       "CREATE VIEW heap_samples AS SELECT 1 AS total_allocs;")
    conn.close()
    _, partial = _summary(path)
    assert partial == [0]


def test_tui_shows_partial_in_the_status_bar_and_above_the_memory_rows() -> None:
    text = ("partial heap profile: rsprof stopped at 2.5s without finishing the recording "
            "(killed or crashed)")
    snap = replace(EMPTY, process_name="app", pid=1, elapsed_s=9.0, has_heap=True,
                   heap_partial=text, heap_partial_from_s=2.5)
    screen = plain_text(render(snap, ViewState(view=MEM), 100, 20))
    assert "PARTIAL heap from 00:02" in screen.splitlines()[0]
    assert "rsprof stopped at 2.5s" in screen
    narrow = plain_text(render(snap, ViewState(view=MEM), 60, 20)).splitlines()[0]
    assert "PARTIAL heap" in narrow  # first among the facts: a narrow screen keeps it
    complete = plain_text(render(replace(snap, heap_partial=""), ViewState(view=MEM), 100, 20))
    assert "PARTIAL" not in complete and "partial" not in complete
