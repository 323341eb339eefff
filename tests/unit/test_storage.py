"""Profile storage (rsprof/storage) and the CPU report, on synthetic recordings."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsprof.errors import ProfileError, UsageError
from rsprof.export.folded import folded_lines
from rsprof.export.stacks import Mapping, load_cpu_stacks
from rsprof.report.cpu import CpuRow, build_cpu_report
from rsprof.report.selection import Selection
from rsprof.storage.discovery import list_profiles, newest_profile
from rsprof.storage.profile_file import open_readonly
from rsprof.storage.schema import SCHEMA_VERSION
from rsprof.storage.writer import (
    ProfileWriter,
    RecordingInfo,
    compress_ids,
    decompress_ids,
    sql_u64,
)
from rsprof.symbols.model import Frame, ResolvedAddress

APP = "/src/app/target/release/app"
APP_BUILD_ID = "0123456789abcdef0123456789abcdef01234567"
MAIN_RS = "/src/app/main.rs"
VEC_RS = "/rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/alloc/src/vec/mod.rs"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
START = 1_700_000_000.0
BASE = 0x5555_5555_0000

ADDR_A = BASE + 0x1100  # app::work with Vec::push inlined into it
ADDR_B = BASE + 0x2200  # app::main
ADDR_C = BASE + 0x3300  # app::other
ADDR_L = 0x7F00_0000_1234  # libc, no debug info, no build-id recorded

PUSH = Frame("alloc::vec::Vec<T,A>::push", VEC_RS, 2417, APP, True)
WORK = Frame("app::work", MAIN_RS, 12, APP, False)
MAIN = Frame("app::main", MAIN_RS, 30, APP, False)
OTHER = Frame("app::other", MAIN_RS, 20, APP, False)
MEMMOVE = Frame("__memmove_avx_unaligned_erms", None, None, LIBC, False)


def info(start: float = START, pid: int = 4242) -> RecordingInfo:
    return RecordingInfo(
        pid=pid, process_name="app", cmdline="app --fast", executable=APP,
        build_id=APP_BUILD_ID, cpu_source="perf", cpu_freq=99, interval_s=0.5,
        start_time=start,
    )


def resolved() -> dict[int, ResolvedAddress]:
    return {
        ADDR_A: ResolvedAddress(ADDR_A, APP, APP_BUILD_ID, ADDR_A - BASE, (PUSH, WORK)),
        ADDR_B: ResolvedAddress(ADDR_B, APP, APP_BUILD_ID, ADDR_B - BASE, (MAIN,)),
        ADDR_C: ResolvedAddress(ADDR_C, APP, APP_BUILD_ID, ADDR_C - BASE, (OTHER,)),
    }


def write_profile(path: Path, start: float = START, append: bool = False,
                  finalize: bool = True) -> ProfileWriter:
    """Stack X = [A, B] gets 3 samples (2 + 1), stack Y = [C, B] gets 1."""
    writer = ProfileWriter(path, append=append)
    writer.begin_recording(info(start))
    writer.add_addresses(resolved())
    writer.add_stacks([(0, [ADDR_A, ADDR_B]), (1, [ADDR_C, ADDR_B])])
    writer.set_thread_name(100, "main")
    writer.set_thread_name(101, "worker-1")
    writer.add_cpu_counts([(0, 100, 0, 2), (2, 100, 0, 1), (2, 101, 1, 1)])
    writer.counters.samples = 4
    writer.commit()
    if finalize:
        writer.finalize(start + 10.0, "exited")
    return writer


def local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    write_profile(path)
    return path


@pytest.fixture
def conn(profile: Path) -> Iterator[sqlite3.Connection]:
    c = open_readonly(profile)
    yield c
    c.close()


# -- the file itself ------------------------------------------------------------------

def test_file_is_private(profile: Path) -> None:
    assert stat.S_IMODE(os.stat(profile).st_mode) == 0o600


def test_finalize_leaves_single_file_journal(profile: Path) -> None:
    c = sqlite3.connect(profile)
    try:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        c.close()
    assert not Path(f"{profile}-wal").exists()


def test_recording_is_wal_until_finalized(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    writer = write_profile(path, finalize=False)
    try:
        assert writer.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Committed data is visible to a reader while the recording goes on.
        reader = open_readonly(path)
        try:
            assert reader.execute("SELECT SUM(samples) FROM cpu_counts").fetchone()[0] == 4
            assert dict(reader.execute("SELECT key, value FROM meta"))["end_reason"] == "recording"
        finally:
            reader.close()
    finally:
        writer.finalize(START + 1, "interrupted")


def test_meta(conn: sqlite3.Connection) -> None:
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["pid"] == "4242"
    assert meta["process_name"] == "app"
    assert meta["cmdline"] == "app --fast"
    assert meta["executable"] == APP
    assert meta["build_id"] == APP_BUILD_ID
    assert float(meta["start_time"]) == START
    assert float(meta["end_time"]) == START + 10.0
    assert meta["end_reason"] == "exited"
    assert meta["recordings"] == "1"
    assert meta["samples"] == "4"
    row = conn.execute("SELECT end_time, end_reason, samples FROM recordings").fetchone()
    assert row == (START + 10.0, "exited", 4)


def test_counters_show_in_meta_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    writer = ProfileWriter(path)
    try:
        writer.begin_recording(info())
        writer.counters.samples = 5
        writer.counters.lost_records = 2
        writer.commit()
        reader = sqlite3.connect(path)
        try:
            meta = dict(reader.execute("SELECT key, value FROM meta"))
            assert meta["samples"] == "5"
            assert meta["lost_records"] == "2"
            assert meta["broken_stacks"] == "0"
            assert float(meta["updated_time"]) > 0
            assert reader.execute("SELECT samples FROM recordings").fetchone() == (5,)
        finally:
            reader.close()
    finally:
        writer.finalize(START + 1, "duration")


# -- views ------------------------------------------------------------------------------

def test_cpu_samples_view(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT time, elapsed_s, thread, tid, function, file, line, samples, module"
        " FROM cpu_samples ORDER BY elapsed_s, tid"
    ).fetchall()
    assert rows == [
        (local(START), 0.0, "main", 100, "app::work", MAIN_RS, 12, 2, APP),
        (local(START + 1), 1.0, "main", 100, "app::work", MAIN_RS, 12, 1, APP),
        (local(START + 1), 1.0, "worker-1", 101, "app::other", MAIN_RS, 20, 1, APP),
    ]


def test_cpu_leaf_samples_view_gives_std_leaf(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT function, file, line, SUM(samples) FROM cpu_leaf_samples"
        " GROUP BY 1, 2, 3 ORDER BY 4 DESC"
    ).fetchall()
    assert rows == [
        ("alloc::vec::Vec<T,A>::push", VEC_RS, 2417, 3),
        ("app::other", MAIN_RS, 20, 1),
    ]


def test_cpu_functions_view(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT function, module, samples, percent FROM cpu_functions").fetchall()
    assert rows == [("app::work", APP, 3, 75.0), ("app::other", APP, 1, 25.0)]


def test_address_symbols_view(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT address, rel_address, depth, function, file, line, internal, module"
        " FROM address_symbols ORDER BY address_id, depth"
    ).fetchall()
    assert rows == [
        (hex(ADDR_A), "0x1100", 0, PUSH.function, VEC_RS, 2417, 1, APP),
        (hex(ADDR_A), "0x1100", 1, "app::work", MAIN_RS, 12, 0, APP),
        (hex(ADDR_B), "0x2200", 0, "app::main", MAIN_RS, 30, 0, APP),
        (hex(ADDR_C), "0x3300", 0, "app::other", MAIN_RS, 20, 0, APP),
    ]


def test_stacks_table(conn: sqlite3.Connection) -> None:
    address_ids = dict(conn.execute("SELECT address, id FROM addresses"))
    frame_names = dict(conn.execute("SELECT id, function FROM frames"))
    rows = conn.execute(
        "SELECT depth, address_ids, leaf_frame_id, user_frame_id FROM stacks ORDER BY id"
    ).fetchall()
    assert [(d, decompress_ids(b), frame_names[leaf], frame_names[user])
            for d, b, leaf, user in rows] == [
        (2, [address_ids[ADDR_A], address_ids[ADDR_B]], PUSH.function, "app::work"),
        (2, [address_ids[ADDR_C], address_ids[ADDR_B]], "app::other", "app::other"),
    ]


def test_modules_and_frames_deduplicated(conn: sqlite3.Connection) -> None:
    assert conn.execute("SELECT path, build_id FROM modules").fetchall() == [
        (APP, APP_BUILD_ID)
    ]
    assert conn.execute("SELECT count(*) FROM frames").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM threads").fetchone()[0] == 2


def test_counts_merge_on_conflict(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    writer = write_profile(path, finalize=False)
    writer.add_cpu_counts([(0, 100, 0, 5)])
    writer.set_thread_name(100, "renamed")
    writer.finalize(START + 10, "exited")
    c = open_readonly(path)
    try:
        assert c.execute(
            "SELECT thread, samples FROM cpu_samples WHERE elapsed_s = 0"
        ).fetchall() == [("renamed", 7)]
    finally:
        c.close()


def test_cpu_time_and_mappings_are_stored(tmp_path: Path) -> None:
    """Each count carries the nanoseconds its samples stand for (summed on merge), and
    the mapping each address lay in is stored once per (module, mapping)."""
    path = tmp_path / "ns.db"
    writer = ProfileWriter(path)
    writer.begin_recording(info())
    mapping = (BASE + 0x1040, BASE + 0x9000, 0x40)
    writer.add_addresses({a: ResolvedAddress(r.address, r.module, r.build_id, r.rel_address,
                                             r.frames, mapping)
                          for a, r in resolved().items()})
    writer.add_stacks([(0, [ADDR_A, ADDR_B]), (1, [ADDR_C, ADDR_B])])
    writer.add_cpu_counts([(0, 100, 0, 2, 8_008_000), (2, 101, 1, 1, 1_001_000)])
    writer.add_cpu_counts([(0, 100, 0, 1, 4_004_000)])
    writer.finalize(START + 10, "exited")
    c = open_readonly(path)
    try:
        assert sorted(c.execute("SELECT interval, tid, samples, ns FROM cpu_counts")) == [
            (0, 100, 3, 12_012_000), (2, 101, 1, 1_001_000)]
        assert c.execute("SELECT m.path, start_address, end_address, file_offset FROM mappings"
                         " JOIN modules m ON m.id = module_id").fetchall() == [
            (APP, BASE + 0x1040, BASE + 0x9000, 0x40)]
        report = build_cpu_report(c)
        assert (report.total_ns, report.ns_estimated) == (13_013_000, False)
        assert _rows_by_function(report.rows)["app::work"].self_ns == 12_012_000
        sset = load_cpu_stacks(c, Selection())
        assert sset.totals == [4, 13_013_000] and not sset.cpu_estimated
        assert {loc.mapping for loc in sset.locations.values()} == {
            Mapping(BASE + 0x1040, BASE + 0x9000, 0x40)}
    finally:
        c.close()


def test_counts_without_cpu_time_fall_back_to_the_rate(conn: sqlite3.Connection) -> None:
    """Counts stored without nanoseconds (an older rsprof) stand for 1e9 / cpu_freq
    each, and the reports say that is an estimate."""
    report = build_cpu_report(conn)
    assert (report.total_ns, report.ns_estimated) == (4 * round(1e9 / 99), True)
    sset = load_cpu_stacks(conn, Selection())
    assert sset.totals == [4, 4 * round(1e9 / 99)] and sset.cpu_estimated
    assert all(loc.mapping is None for loc in sset.locations.values())


def test_file_older_than_cpu_time_and_mappings_reads_and_appends(profile: Path) -> None:
    """A file written before cpu_counts.ns and the mappings table existed: read with
    the rate's estimate; --append adds the column (NULL in the old rows)."""
    raw = sqlite3.connect(profile)
    raw.executescript("ALTER TABLE cpu_counts DROP COLUMN ns; DROP TABLE mappings;")
    raw.close()
    c = open_readonly(profile)
    try:
        report = build_cpu_report(c)
        assert (report.total_ns, report.ns_estimated) == (4 * round(1e9 / 99), True)
        assert load_cpu_stacks(c, Selection()).totals == [4, 4 * round(1e9 / 99)]
    finally:
        c.close()
    writer = ProfileWriter(profile, append=True)
    writer.begin_recording(info(START + 100))
    writer.add_addresses(resolved())
    writer.add_stacks([(0, [ADDR_A, ADDR_B])])
    writer.add_cpu_counts([(0, 100, 0, 2, 8_008_000)])
    writer.finalize(START + 110, "exited")
    c = open_readonly(profile)
    try:
        assert sorted(c.execute("SELECT recording_id, samples, ns FROM cpu_counts"),
                      key=str) == [(1, 1, None), (1, 1, None), (1, 2, None), (2, 2, 8_008_000)]
        report = build_cpu_report(c)
        assert (report.total_ns, report.ns_estimated) == (4 * round(1e9 / 99) + 8_008_000, True)
    finally:
        c.close()


# -- the CPU report -------------------------------------------------------------------

def _rows_by_function(rows: list[CpuRow]) -> dict[str, CpuRow]:
    return {r.function: r for r in rows}


def test_cpu_report_self_and_total(conn: sqlite3.Connection) -> None:
    report = build_cpu_report(conn)
    assert report.total_samples == 4
    assert report.summary.pid == 4242
    assert report.summary.duration_s == 10.0
    assert [(r.function, r.self_samples, r.total_samples, r.self_percent, r.total_percent)
            for r in report.rows] == [
        ("app::work", 3, 3, 75.0, 75.0),
        ("app::other", 1, 1, 25.0, 25.0),
        ("app::main", 0, 4, 0.0, 100.0),
        (PUSH.function, 0, 3, 0.0, 75.0),
    ]
    by_name = _rows_by_function(report.rows)
    assert by_name["app::work"].location == f"{MAIN_RS}:12"
    assert by_name["app::main"].location == f"{MAIN_RS}:30"
    assert by_name["app::main"].module == APP


def test_cpu_report_include_internal(conn: sqlite3.Connection) -> None:
    report = build_cpu_report(conn, include_internal=True)
    by_name = _rows_by_function(report.rows)
    assert report.rows[0].function == PUSH.function
    assert (by_name[PUSH.function].self_samples, by_name[PUSH.function].self_percent) == (3, 75.0)
    assert by_name[PUSH.function].location == f"{VEC_RS}:2417"
    assert (by_name["app::work"].self_samples, by_name["app::work"].total_percent) == (0, 75.0)
    assert by_name["app::main"].total_percent == 100.0


def test_cpu_report_recursion_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "rec.db"
    writer = ProfileWriter(path)
    writer.begin_recording(info())
    b2 = ADDR_B - 0x10
    writer.add_addresses({
        **resolved(),
        b2: ResolvedAddress(b2, APP, APP_BUILD_ID, b2 - BASE,
                            (Frame("app::main", MAIN_RS, 29, APP, False),)),
    })
    # app::main appears three times in one stack (recursion); total must not exceed 100%.
    writer.add_stacks([(0, [ADDR_C, ADDR_B, b2, ADDR_B])])
    writer.add_cpu_counts([(0, 1, 0, 4)])
    writer.finalize(START + 1, "exited")
    c = open_readonly(path)
    try:
        by_name = _rows_by_function(build_cpu_report(c).rows)
    finally:
        c.close()
    assert by_name["app::main"].total_samples == 4
    assert by_name["app::main"].total_percent == 100.0
    assert by_name["app::other"].self_percent == 100.0


def test_unresolved_and_high_addresses(tmp_path: Path) -> None:
    path = tmp_path / "high.db"
    high = 0xFFFF_FFFF_FF60_0123
    writer = ProfileWriter(path)
    writer.begin_recording(info())
    writer.add_addresses({
        high: ResolvedAddress(high, "[vsyscall]", None, high, ()),
        ADDR_L: ResolvedAddress(ADDR_L, LIBC, None, 0x1234, (MEMMOVE,)),
        **resolved(),
    })
    assert writer.counters.unresolved_addresses == 1
    assert writer.known_address(high)
    writer.add_stacks([(0, [high, ADDR_L, ADDR_B])])
    writer.add_cpu_counts([(0, 1, 0, 1)])
    writer.finalize(START + 1, "exited")
    c = open_readonly(path)
    try:
        stored = c.execute("SELECT address, rel_address FROM addresses WHERE module_id ="
                           " (SELECT id FROM modules WHERE path = '[vsyscall]')").fetchone()
        assert stored == (high - (1 << 64), high - (1 << 64))
        assert c.execute(
            "SELECT address, function, internal FROM address_symbols WHERE module = '[vsyscall]'"
        ).fetchall() == [(hex(high), f"[vsyscall]+0x{high:x}", 1)]
        assert c.execute("SELECT resolved FROM frames WHERE function LIKE '[vsyscall]+%'"
                         ).fetchall() == [(0,)]
        # Both inner frames are internal: the sample is charged to app::main.
        assert c.execute("SELECT function FROM cpu_samples").fetchall() == [("app::main",)]
        assert c.execute("SELECT function FROM cpu_leaf_samples").fetchall() == [
            (f"[vsyscall]+0x{high:x}",)
        ]
        assert dict(c.execute("SELECT key, value FROM meta"))["unresolved_addresses"] == "1"
    finally:
        c.close()


# -- helpers -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "stored"),
    [(0, 0), (1, 1), ((1 << 63) - 1, (1 << 63) - 1), (1 << 63, -(1 << 63)),
     ((1 << 64) - 1, -1), (0xFFFF_FFFF_FF60_0000, 0xFFFF_FFFF_FF60_0000 - (1 << 64))],
)
def test_sql_u64(value: int, stored: int) -> None:
    assert sql_u64(value) == stored
    assert -(1 << 63) <= stored < (1 << 63)
    assert stored % (1 << 64) == value


@pytest.mark.parametrize(
    "ids",
    [[], [0], [1, 2, 3], [0xFFFF_FFFF, 0, 7] * 500, list(range(10_000))],
)
def test_compress_ids_round_trip(ids: list[int]) -> None:
    blob = compress_ids(ids)
    assert isinstance(blob, bytes)
    assert int.from_bytes(blob[:4], "little") == 4 * len(ids)
    assert decompress_ids(blob) == ids


def test_compress_ids_is_compact_for_repetition() -> None:
    assert len(compress_ids([5] * 1000)) < 100


# -- creating and appending -----------------------------------------------------------

def test_existing_file_without_append_is_refused(profile: Path) -> None:
    before = profile.read_bytes()
    with pytest.raises(UsageError, match="already exists") as err:
        ProfileWriter(profile)
    assert err.value.exit_code == 2
    assert profile.read_bytes() == before


def test_append_adds_second_recording(profile: Path) -> None:
    write_profile(profile, start=START + 100.0, append=True)
    assert stat.S_IMODE(os.stat(profile).st_mode) == 0o600
    c = open_readonly(profile)
    try:
        meta = dict(c.execute("SELECT key, value FROM meta"))
        assert meta["recordings"] == "2"
        assert float(meta["start_time"]) == START
        assert float(meta["end_time"]) == START + 110.0
        assert meta["samples"] == "8"
        assert c.execute("SELECT id, start_time FROM recordings ORDER BY id").fetchall() == [
            (1, START), (2, START + 100.0)
        ]
        rows = c.execute(
            "SELECT recording_id, elapsed_s, time, function, samples FROM cpu_samples"
            " WHERE recording_id = 2 ORDER BY elapsed_s, tid"
        ).fetchall()
        assert rows == [
            (2, 100.0, local(START + 100), "app::work", 2),
            (2, 101.0, local(START + 101), "app::work", 1),
            (2, 101.0, local(START + 101), "app::other", 1),
        ]
        # Frames and modules are shared between recordings; addresses are per recording.
        assert c.execute("SELECT count(*) FROM frames").fetchone()[0] == 4
        assert c.execute("SELECT count(*) FROM modules").fetchone()[0] == 1
        assert c.execute("SELECT count(*) FROM addresses").fetchone()[0] == 6
        report = build_cpu_report(c)
        assert report.total_samples == 8
        assert report.rows[0].function == "app::work"
        assert report.rows[0].self_percent == 75.0
    finally:
        c.close()


def test_append_does_not_duplicate_module_without_build_id(tmp_path: Path) -> None:
    path = tmp_path / "dup.db"
    for n, append in enumerate((False, True)):
        writer = ProfileWriter(path, append=append)
        writer.begin_recording(info(START + 100 * n))
        writer.add_addresses({ADDR_L: ResolvedAddress(ADDR_L, LIBC, None, 0x1234, (MEMMOVE,))})
        writer.add_stacks([(0, [ADDR_L])])
        writer.add_cpu_counts([(0, 1, 0, 1)])
        writer.finalize(START + 100 * n + 1, "exited")
    c = open_readonly(path)
    try:
        assert c.execute("SELECT count(*) FROM modules WHERE path = ?", (LIBC,)).fetchone() == (1,)
    finally:
        c.close()


def _stack_addresses(c: sqlite3.Connection) -> dict[int, tuple[int, list[int]]]:
    """stored stack id -> (recording id, its addresses, innermost first)."""
    address = dict(c.execute("SELECT id, address FROM addresses"))
    return {sid: (rid, [address[a] for a in decompress_ids(blob)])
            for sid, rid, blob in c.execute("SELECT id, recording_id, address_ids FROM stacks")}


def test_appended_recording_numbers_its_stacks_after_the_files(tmp_path: Path) -> None:
    """The writer numbers stacks.id itself (one executemany a call): as SQLite would,
    from the file's highest id, so an --append recording's stacks get fresh ids, and
    its cpu_counts, heap_sites and heap_counts rows name its own stacks."""
    path = tmp_path / "two.db"
    recordings = [
        [(0, [ADDR_A, ADDR_B]), (1, [ADDR_C, ADDR_B])],
        [(0, [ADDR_C, ADDR_B]), (1, [ADDR_B]), (2, [ADDR_A, ADDR_B]), (3, [ADDR_L])],
    ]
    for n, stacks in enumerate(recordings):
        writer = ProfileWriter(path, append=n > 0)
        writer.begin_recording(info(START + 100 * n))
        writer.add_addresses(resolved())
        writer.add_addresses({ADDR_L: ResolvedAddress(ADDR_L, LIBC, None, 0x1234, (MEMMOVE,))})
        # in chunks, as the recorder hands them over (and an empty one)
        writer.add_stacks(stacks[:1])
        writer.add_stacks([])
        writer.add_stacks(stacks[1:])
        writer.commit()
        # every value distinct: a stack or a column mixed up shows
        writer.add_cpu_counts([(0, 100, sid, 10 * n + sid + 1) for sid, _ in reversed(stacks)])
        writer.add_heap_sites(3, [(sid, *(1000 * n + 10 * sid + k for k in range(1, 7)))
                                  for sid, _ in reversed(stacks)])
        writer.finalize(START + 100 * n + 1, "exited")
    c = open_readonly(path)
    try:
        stored = _stack_addresses(c)
        cpu = c.execute("SELECT recording_id, stack_id, samples FROM cpu_counts").fetchall()
        sites = c.execute("SELECT recording_id, stack_id, allocs, alloc_bytes, frees,"
                          " free_bytes, live_bytes, peak_live_bytes FROM heap_sites").fetchall()
        counts = c.execute("SELECT recording_id, interval, stack_id, allocs, alloc_bytes,"
                           " frees, free_bytes, live_bytes FROM heap_counts").fetchall()
    finally:
        c.close()
    # the ids SQLite's own numbering gives: 1, 2, ... over both recordings
    assert stored == {1: (1, [ADDR_A, ADDR_B]), 2: (1, [ADDR_C, ADDR_B]),
                      3: (2, [ADDR_C, ADDR_B]), 4: (2, [ADDR_B]), 5: (2, [ADDR_A, ADDR_B]),
                      6: (2, [ADDR_L])}
    want_cpu, want_sites, want_counts = [], [], []
    for n, stacks in enumerate(recordings):
        for sid, addresses in stacks:
            (stack_id,) = (k for k, v in stored.items() if v == (n + 1, addresses))
            want_cpu.append((n + 1, stack_id, 10 * n + sid + 1))
            values = [1000 * n + 10 * sid + k for k in range(1, 7)]
            want_sites.append((n + 1, stack_id, *values))
            want_counts.append((n + 1, 3, stack_id, *values[:5]))
    assert sorted(cpu) == sorted(want_cpu)
    assert sorted(sites) == sorted(want_sites)
    assert sorted(counts) == sorted(want_counts)


def test_stacks_out_of_recorder_order_are_an_internal_error(tmp_path: Path) -> None:
    """Stored ids are looked up by recorder id in an array: a recorder id that does not
    continue the ones handed over (a gap, a repeat) is refused, with nothing stored."""
    path = tmp_path / "order.db"
    writer = ProfileWriter(path)
    writer.begin_recording(info())
    writer.add_addresses(resolved())
    with pytest.raises(RuntimeError, match=r"internal error: recorder stack 1 .* stack 0 "):
        writer.add_stacks([(1, [ADDR_A, ADDR_B])])
    writer.add_stacks([(0, [ADDR_A, ADDR_B])])
    with pytest.raises(RuntimeError, match=r"internal error: recorder stack 3 .* stack 2 "):
        writer.add_stacks([(1, [ADDR_C, ADDR_B]), (3, [ADDR_A])])
    with pytest.raises(RuntimeError, match=r"internal error: recorder stack 0 .* stack 1 "):
        writer.add_stacks([(0, [ADDR_C, ADDR_B])])
    # the refused calls stored nothing, and the numbering goes on where it was
    writer.add_stacks([(1, [ADDR_C, ADDR_B]), (2, [ADDR_B])])
    writer.add_cpu_counts([(0, 100, 0, 1), (0, 100, 1, 2), (0, 100, 2, 3)])
    writer.finalize(START + 1, "exited")
    c = open_readonly(path)
    try:
        stored = _stack_addresses(c)
        cpu = sorted(c.execute("SELECT stack_id, samples FROM cpu_counts"))
    finally:
        c.close()
    assert stored == {1: (1, [ADDR_A, ADDR_B]), 2: (1, [ADDR_C, ADDR_B]), 3: (1, [ADDR_B])}
    assert cpu == [(1, 1), (2, 2), (3, 3)]


def test_append_to_non_profile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("just some text, not a database\n")
    with pytest.raises(ProfileError, match="not an SQLite database"):
        ProfileWriter(path, append=True)
    assert path.read_text() == "just some text, not a database\n"


def test_append_to_newer_schema_is_refused(profile: Path) -> None:
    _set_schema_version(profile, "999")
    with pytest.raises(ProfileError, match="schema version 999"):
        ProfileWriter(profile, append=True)


# -- opening for reading --------------------------------------------------------------

def _set_schema_version(path: Path, version: str) -> None:
    c = sqlite3.connect(path)
    with c:
        c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    c.close()


def test_open_readonly_non_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(b"hello world, this is not SQLite at all")
    with pytest.raises(ProfileError, match=r"is not an rsprof profile \(not an SQLite database\)"):
        open_readonly(path)


def test_open_readonly_sqlite_without_meta(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    with pytest.raises(ProfileError, match=r"is not an rsprof profile \(no meta table\)"):
        open_readonly(path)


def test_open_readonly_meta_without_version(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    c.commit()
    c.close()
    with pytest.raises(ProfileError, match="no schema version"):
        open_readonly(path)


def test_open_readonly_newer_schema(profile: Path) -> None:
    _set_schema_version(profile, "999")
    with pytest.raises(ProfileError) as err:
        open_readonly(profile)
    message = str(err.value)
    assert "schema version 999" in message
    assert f"({SCHEMA_VERSION})" in message
    assert "upgrade rsprof" in message
    assert err.value.exit_code == 1


def test_open_readonly_bad_schema_version(profile: Path) -> None:
    _set_schema_version(profile, "one")
    with pytest.raises(ProfileError, match="bad schema version 'one'"):
        open_readonly(profile)


def test_open_readonly_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such file"):
        open_readonly(tmp_path / "missing.db")
    with pytest.raises(ProfileError, match="is a directory"):
        open_readonly(tmp_path)


def test_open_readonly_refuses_writes(profile: Path) -> None:
    before = profile.read_bytes()
    c = open_readonly(profile)
    try:
        with pytest.raises(sqlite3.OperationalError):
            c.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
        with pytest.raises(sqlite3.OperationalError):
            c.execute("DELETE FROM cpu_counts")
        with pytest.raises(sqlite3.OperationalError):
            c.execute("CREATE TABLE evil (x)")
    finally:
        c.close()
    assert profile.read_bytes() == before


@pytest.mark.parametrize("name", ["run#1.db", "what?.db", "100%25.db"])
def test_open_readonly_path_with_uri_characters(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_profile(path)
    c = open_readonly(path)
    try:
        assert c.execute("SELECT SUM(samples) FROM cpu_counts").fetchone() == (4,)
    finally:
        c.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# -- discovery ------------------------------------------------------------------------

def test_list_profiles_newest_by_start_time(tmp_path: Path) -> None:
    write_profile(tmp_path / "a.db", start=START + 300)
    write_profile(tmp_path / "b.db", start=START + 100)
    write_profile(tmp_path / "c.db", start=START + 200)
    write_profile(tmp_path / "z.profile", start=START + 900)  # wrong suffix
    (tmp_path / "notes.db").write_text("not a profile")
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "dir.db").mkdir()
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    newer = tmp_path / "newer.db"
    write_profile(newer, start=START + 1000)
    _set_schema_version(newer, "999")

    listing = list_profiles(tmp_path)
    assert [p.path.name for p in listing] == ["b.db", "c.db", "a.db"]
    assert [p.summary.start_time for p in listing] == [START + 100, START + 200, START + 300]
    assert listing[0].summary.counters["samples"] == 4
    assert newest_profile(tmp_path) == tmp_path / "a.db"


def test_list_profiles_empty_and_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("junk")
    assert list_profiles(tmp_path) == []
    with pytest.raises(UsageError, match="no rsprof profiles"):
        newest_profile(tmp_path)
    with pytest.raises(UsageError, match="is not a directory"):
        list_profiles(tmp_path / "junk.db")


# -- [rsprof] and an executable installed in a system location (issue 12) ---------------

SHIM = "/root/.cache/rsprof/shim/0123456789abcdef/librsprof_shim.so"
SHIM_C = "/work/csrc/rsprof_shim.c"


@pytest.mark.parametrize("executable", ["/usr/local/lib/app-1.0/app", None],
                         ids=["by-path", "by-build-id"])
def test_rsprof_time_and_installed_executable(tmp_path: Path, executable: str | None) -> None:
    exe = "/usr/local/lib/app-1.0/app"
    base = 0x5555_0000_0000
    shim_base = 0x7F11_0000_0000
    s_leaf, s_hook, libc_m, e_make, e_main, e_work = (
        shim_base + 0x100, shim_base + 0x200, 0x7F22_0000_0300, base + 0x400, base + 0x500,
        base + 0x600)
    make = Frame("app::make", MAIN_RS, 5, exe, False)
    main = Frame("app::main", MAIN_RS, 30, exe, False)
    work = Frame("app::work", MAIN_RS, 12, exe, False)
    path = tmp_path / "own.db"
    writer = ProfileWriter(path)
    rec = info()
    writer.begin_recording(RecordingInfo(
        pid=rec.pid, process_name="app", cmdline="app", executable=executable,
        build_id=APP_BUILD_ID, cpu_source="perf", cpu_freq=99, interval_s=0.5,
        start_time=START, heap_source="preload"))
    writer.add_addresses({
        s_leaf: ResolvedAddress(s_leaf, SHIM, "aa" * 20, 0x100, (
            Frame("ring_try_reserve", SHIM_C, 167, SHIM, True),
            Frame("record_alloc", SHIM_C, 600, SHIM, False))),
        s_hook: ResolvedAddress(s_hook, SHIM, "aa" * 20, 0x200, (
            Frame("malloc", "/work/csrc/rsprof_preload.c", 277, SHIM, False),)),
        libc_m: ResolvedAddress(libc_m, LIBC, None, 0x300, (
            Frame("_int_malloc", None, None, LIBC, False),)),
        e_make: ResolvedAddress(e_make, exe, APP_BUILD_ID, 0x400, (make,)),
        e_main: ResolvedAddress(e_main, exe, APP_BUILD_ID, 0x500, (main,)),
        e_work: ResolvedAddress(e_work, exe, APP_BUILD_ID, 0x600, (work,)),
    })
    writer.add_stacks([(0, [s_leaf, s_hook, e_make, e_main]),   # rsprof recording
                       (1, [libc_m, s_hook, e_make, e_main]),   # the real malloc
                       (2, [e_work, e_main])])
    writer.add_cpu_counts([(0, 1, 0, 3), (0, 1, 1, 2), (0, 1, 2, 5)])
    writer.finalize(START + 1, "exited")
    conn = open_readonly(path)
    try:
        stored = conn.execute(
            "SELECT s.id, u.function, u.file, mu.path, l.function FROM stacks s"
            " JOIN frames u ON u.id = s.user_frame_id JOIN modules mu ON mu.id = u.module_id"
            " JOIN frames l ON l.id = s.leaf_frame_id ORDER BY s.id").fetchall()
        assert [row[1:] for row in stored] == [
            ("[rsprof]", None, SHIM, "[rsprof]"),
            ("app::make", MAIN_RS, exe, "_int_malloc"),
            ("app::work", MAIN_RS, exe, "app::work"),
        ]
        assert conn.execute("SELECT internal FROM frames WHERE function = 'app::work'"
                            ).fetchone() == (0,)
        report = build_cpu_report(conn)
        rows = {r.function: (r.self_samples, r.total_samples) for r in report.rows}
        assert rows == {"app::work": (5, 5), "[rsprof]": (3, 3), "app::make": (2, 5),
                        "app::main": (0, 10), "_int_malloc": (0, 2)}
        assert (report.rsprof_samples, report.rsprof_percent) == (3, 30.0)
        leaf = build_cpu_report(conn, include_internal=True)
        leaf_rows = {r.function: r.self_samples for r in leaf.rows if r.self_samples}
        assert leaf_rows == {"app::work": 5, "[rsprof]": 3, "_int_malloc": 2}
        assert leaf.rsprof_samples == 3
        assert not any(r.module == SHIM and r.function != "[rsprof]" for r in leaf.rows)
        views = dict(conn.execute(
            "SELECT function, SUM(samples) FROM cpu_samples GROUP BY function").fetchall())
        assert views == {"app::work": 5, "[rsprof]": 3, "app::make": 2}
        # Stack exports show it the same way: one [rsprof] frame, no shim frame.
        sset = load_cpu_stacks(conn, Selection())
        assert dict(folded_lines(sset, 0)) == {
            "app::main;app::work": 5, "app::main;app::make;[rsprof]": 3,
            "app::main;app::make;_int_malloc": 2}
    finally:
        conn.close()
