"""One spelling per path in a profile: an --append whose symbols come from another
reader (cold DWARF reader, then warm SymCache) reuses the frames already stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rsprof.storage.writer import ProfileWriter, RecordingInfo, canonical_path
from rsprof.symbols.model import Frame, ResolvedAddress

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
APP = "/src/app/target/release/app"
RUSTC = "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library"
BASE = 0x5555_5555_0000
ADDR_APP = BASE + 0x1100
ADDR_LIBC = 0x7F00_0000_1234


@pytest.mark.parametrize(("raw", "canonical"), [
    ("./nptl/./nptl/pthread_create.c", "nptl/nptl/pthread_create.c"),
    (f"{RUSTC}/std/src/../../backtrace/src/print.rs", f"{RUSTC}/backtrace/src/print.rs"),
    ("/usr/lib//x86_64-linux-gnu/./libc.so.6", LIBC),
    (LIBC, LIBC),
    ("[vdso]", "[vdso]"),
    ("[unknown]", "[unknown]"),
    (None, None),
    ("", ""),
])
def test_canonical_path(raw: str | None, canonical: str | None) -> None:
    assert canonical_path(raw) == canonical


def _record(path: Path, append: bool, libc_file: str, app_file: str, module: str) -> None:
    writer = ProfileWriter(path, append=append)
    writer.begin_recording(RecordingInfo(
        pid=1, process_name="app", cmdline="app", executable=APP, build_id=None,
        cpu_source="perf", cpu_freq=99, interval_s=1.0, start_time=1_700_000_000.0))
    writer.add_addresses({
        ADDR_APP: ResolvedAddress(ADDR_APP, APP, None, 0x1100,
                                  (Frame("app::work", app_file, 12, APP, False),)),
        ADDR_LIBC: ResolvedAddress(ADDR_LIBC, module, None, 0x1234,
                                   (Frame("start_thread", libc_file, 442, module, False),)),
    })
    writer.add_stacks([(0, [ADDR_APP, ADDR_LIBC])])
    writer.add_cpu_counts([(0, 1, 0, 3)])
    writer.commit()
    writer.finalize(1_700_000_001.0, "exited")


def test_append_with_the_other_readers_spelling_adds_no_frames(tmp_path: Path) -> None:
    db = tmp_path / "append.db"
    # as the cold DWARF reader spells them
    _record(db, False, "./nptl/./nptl/pthread_create.c",
            f"{RUSTC}/std/src/../../app/src/main.rs", LIBC)
    # as SymCache spells them (and a module path with a redundant component)
    _record(db, True, "nptl/nptl/pthread_create.c", f"{RUSTC}/app/src/main.rs",
            "/usr/lib/x86_64-linux-gnu/./libc.so.6")
    conn = sqlite3.connect(db)
    try:
        frames = conn.execute("SELECT function, file, line, module_id FROM frames"
                              " ORDER BY function").fetchall()
        modules = conn.execute("SELECT path FROM modules ORDER BY path").fetchall()
        # the same address in both recordings has the same frames
        per_recording = conn.execute(
            "SELECT a.recording_id, a.rel_address, group_concat(af.frame_id) FROM addresses a"
            " JOIN address_frames af ON af.address_id = a.id"
            " GROUP BY a.recording_id, a.rel_address ORDER BY a.rel_address, a.recording_id"
        ).fetchall()
    finally:
        conn.close()
    assert [f[:3] for f in frames] == [("app::work", f"{RUSTC}/app/src/main.rs", 12),
                                       ("start_thread", "nptl/nptl/pthread_create.c", 442)]
    assert modules == [("/src/app/target/release/app",), (LIBC,)]
    assert len(per_recording) == 4
    assert per_recording[0][2] == per_recording[1][2]
    assert per_recording[2][2] == per_recording[3][2]
