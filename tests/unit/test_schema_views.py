"""The human-facing views: one row per charged site, per-stack detail in its own
views, and older files read (and appended to) with this version's views."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsprof.storage.profile_file import open_readonly
from rsprof.storage.schema import SCHEMA_VERSION, VIEW_NAMES
from rsprof.storage.writer import ProfileWriter
from tests.unit.test_storage import (
    ADDR_A,
    ADDR_B,
    ADDR_C,
    APP,
    MAIN_RS,
    START,
    info,
    resolved,
)

# Stacks 0 = [A, B] and 1 = [A, C] differ but are both charged to app::work
# (A is Vec::push inlined into app::work; push is internal). Stack 2 = [C, B]
# is charged to app::other.
WORK_SITE = ("app::work", MAIN_RS, 12)


def _write(path: Path, append: bool = False) -> None:
    writer = ProfileWriter(path, append=append)
    writer.begin_recording(info())
    writer.add_addresses(resolved())
    writer.add_stacks([(0, [ADDR_A, ADDR_B]), (1, [ADDR_A, ADDR_C]), (2, [ADDR_C, ADDR_B])])
    writer.set_thread_name(100, "main")
    writer.add_cpu_counts([(0, 100, 0, 2), (0, 100, 1, 3), (1, 100, 1, 1), (1, 100, 2, 4)])
    # Running totals per stack: (stack, allocs, alloc_bytes, frees, free_bytes, live, peak).
    writer.add_heap_sites(0, [(0, 10, 1000, 2, 200, 800, 900), (1, 1, 64, 0, 0, 64, 64)])
    writer.add_heap_sites(1, [(0, 12, 1200, 12, 1200, 0, 900)])  # stack 1 unchanged
    writer.add_heap_sites(2, [(1, 3, 192, 1, 64, 128, 128), (2, 5, 50, 5, 50, 0, 30)])
    writer.finalize(START + 10.0, "exited")


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "sites.db"
    _write(path)
    return path


@pytest.fixture
def conn(profile: Path) -> Iterator[sqlite3.Connection]:
    c = open_readonly(profile)
    yield c
    c.close()


def test_heap_samples_has_one_row_per_site_with_exact_totals(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT function, file, line, total_allocs, total_alloc_bytes, total_frees,"
        " total_free_bytes, live_bytes, module, stacks, recording_id FROM heap_samples"
        " ORDER BY function DESC").fetchall()
    assert rows == [
        (*WORK_SITE, 12 + 3, 1200 + 192, 12 + 1, 1200 + 64, 0 + 128, APP, 2, 1),
        ("app::other", MAIN_RS, 20, 5, 50, 5, 50, 0, APP, 1, 1),
    ]


def test_heap_stacks_keeps_each_stack_and_its_peak(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT function, total_allocs, live_bytes, peak_live_bytes FROM heap_stacks"
        " ORDER BY stack_id").fetchall()
    assert rows == [("app::work", 12, 0, 900), ("app::work", 3, 128, 128),
                    ("app::other", 5, 0, 30)]


def test_heap_timeline_has_the_site_running_totals(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT elapsed_s, total_allocs, total_alloc_bytes, total_frees, total_free_bytes,"
        " live_bytes FROM heap_timeline WHERE function = 'app::work' ORDER BY elapsed_s"
    ).fetchall()
    # Interval 1: only stack 0 changed, but the site's totals still hold stack 1's.
    assert rows == [
        (0.0, 11, 1064, 2, 200, 864),
        (0.5, 13, 1264, 12, 1200, 64),
        (1.0, 15, 1392, 13, 1264, 128),
    ]
    last = conn.execute("SELECT total_allocs, total_alloc_bytes, total_frees,"
                        " total_free_bytes, live_bytes FROM heap_samples"
                        " WHERE function = 'app::work'").fetchone()
    assert rows[-1][1:] == last
    per_stack = conn.execute("SELECT elapsed_s, stack_id, live_bytes FROM heap_stack_timeline"
                             " WHERE function = 'app::work' ORDER BY 1, 2").fetchall()
    assert [(e, live) for e, _, live in per_stack] == [(0.0, 800), (0.0, 64), (0.5, 0),
                                                      (1.0, 128)]


def test_cpu_samples_has_one_row_per_interval_thread_and_site(
        conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT elapsed_s, thread, tid, function, file, line, samples, module FROM cpu_samples"
        " ORDER BY elapsed_s, function DESC").fetchall()
    assert rows == [
        (0.0, "main", 100, *WORK_SITE, 5, APP),
        (0.5, "main", 100, *WORK_SITE, 1, APP),
        (0.5, "main", 100, "app::other", MAIN_RS, 20, 4, APP),
    ]
    stacks = conn.execute("SELECT elapsed_s, function, samples, stack_id FROM cpu_stacks"
                          " ORDER BY elapsed_s, stack_id").fetchall()
    assert [r[:3] for r in stacks] == [(0.0, "app::work", 2), (0.0, "app::work", 3),
                                       (0.5, "app::work", 1), (0.5, "app::other", 4)]
    leaf = conn.execute("SELECT elapsed_s, function, samples FROM cpu_leaf_samples"
                        " ORDER BY elapsed_s, function").fetchall()
    assert leaf == [(0.0, "alloc::vec::Vec<T,A>::push", 5),
                    (0.5, "alloc::vec::Vec<T,A>::push", 1), (0.5, "app::other", 4)]


# -- files of an older schema version ---------------------------------------------------

# Version 1's heap_samples: one row per stack (what a version 1 file holds).
_V1_HEAP_SAMPLES = """CREATE VIEW heap_samples AS
SELECT f.function AS function, f.file AS file, f.line AS line,
       h.alloc_bytes AS total_alloc_bytes, h.free_bytes AS total_free_bytes,
       h.allocs AS total_allocs, h.frees AS total_frees, h.live_bytes AS live_bytes,
       h.peak_live_bytes AS peak_live_bytes, m.path AS module, h.stack_id AS stack_id,
       h.recording_id AS recording_id
FROM heap_sites h JOIN stacks s ON s.id = h.stack_id
JOIN frames f ON f.id = s.user_frame_id JOIN modules m ON m.id = f.module_id"""


def _make_version_1(path: Path) -> None:
    c = sqlite3.connect(path)
    with c:
        for name in VIEW_NAMES:
            c.execute(f"DROP VIEW {name}")
        c.execute(_V1_HEAP_SAMPLES)
        c.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    c.close()


def _own_views(path: Path) -> dict[str, str]:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(c.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'view'"))
    finally:
        c.close()


def test_version_1_file_reads_with_this_version_views(profile: Path) -> None:
    assert SCHEMA_VERSION == 2
    _make_version_1(profile)
    before = profile.read_bytes()
    # Raw SQLite still sees the file's own per-stack view ...
    raw = sqlite3.connect(f"file:{profile}?mode=ro", uri=True)
    try:
        assert len(raw.execute("SELECT * FROM heap_samples").fetchall()) == 3
    finally:
        raw.close()
    c = open_readonly(profile)
    try:
        # ... rsprof's reader gets one row per site, and every view of this version.
        rows = c.execute("SELECT function, total_allocs, stacks FROM heap_samples"
                         " ORDER BY function DESC").fetchall()
        assert rows == [("app::work", 15, 2), ("app::other", 5, 1)]
        for name in VIEW_NAMES:
            c.execute(f"SELECT * FROM {name}").fetchall()
        with pytest.raises(sqlite3.OperationalError):
            c.execute("CREATE TEMP VIEW x AS SELECT 1")
    finally:
        c.close()
    assert profile.read_bytes() == before


def test_append_to_version_1_file_upgrades_its_views(profile: Path) -> None:
    _make_version_1(profile)
    _write(profile, append=True)
    views = _own_views(profile)
    assert sorted(views) == sorted(VIEW_NAMES)
    assert "GROUP BY h.recording_id, f.id" in views["heap_samples"]
    c = sqlite3.connect(profile)
    try:
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        rows = c.execute("SELECT recording_id, function, total_allocs FROM heap_samples"
                         " ORDER BY recording_id, function DESC").fetchall()
        assert rows == [(1, "app::work", 15), (1, "app::other", 5),
                        (2, "app::work", 15), (2, "app::other", 5)]
    finally:
        c.close()
