"""The detail a profile can have, per module: decided from real ELF files (a Rust
test target, stripped or without debug info, without unwind tables), stored in
`modules`, and said by `top`'s notes and the TUI (rsprof/report/detail_notes.py)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from rsprof.report.detail_notes import (
    FIX_LINES,
    FIX_SYMBOLS,
    detail_note_lines,
    detail_note_short,
    symbols_note,
)
from rsprof.storage.profile_file import open_readonly
from rsprof.storage.writer import ProfileWriter, RecordingInfo
from rsprof.symbols.model import Frame, ResolvedAddress
from rsprof.symbols.objfile import ModuleDetail, ObjectSymbols
from rsprof.symbols.resolver import Symbolizer
from rsprof.tui.screen import plain_text, render
from rsprof.tui.snapshot import VIEW, Snapshot
from rsprof.tui.state import CPU, MEM, ViewState

APP = "/src/app/target/release/app"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIB = "/opt/vendor/libfast.so"
BUILD_ID = "0123456789abcdef0123456789abcdef01234567"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cpu_split as built (debug = true), stripped, without debug info, and without
    unwind tables."""
    from tests.conftest import TARGETS_DIR, _cargo_build

    built = _cargo_build(TARGETS_DIR) / "cpu_split"
    d = tmp_path_factory.mktemp("elf")
    out = {"full": d / "full", "stripped": d / "stripped", "nodebug": d / "nodebug",
           "nocfi": d / "nocfi"}
    for path in out.values():
        shutil.copy(built, path)
    subprocess.run([_tool("strip"), str(out["stripped"])], check=True)
    subprocess.run([_tool("strip"), "--strip-debug", str(out["nodebug"])], check=True)
    subprocess.run([_tool("objcopy"), "--remove-section", ".eh_frame", "--remove-section",
                    ".eh_frame_hdr", "--remove-section", ".debug_frame", str(out["nocfi"])],
                   check=True)
    return out


def _detail(path: Path) -> ModuleDetail | None:
    return ObjectSymbols(str(path), str(path), None).detail


def test_detail_of_real_binaries(copies: dict[str, Path]) -> None:
    full = _detail(copies["full"])
    assert full is not None and full.symbols == "lines" and full.cfi
    assert full.functions > 100
    nodebug = _detail(copies["nodebug"])
    assert nodebug == ModuleDetail("functions", full.functions, True)
    # A stripped Rust executable: no .symtab, and its .dynsym exports no function.
    assert _detail(copies["stripped"]) == ModuleDetail("none", 0, True)
    nocfi = _detail(copies["nocfi"])
    assert nocfi is not None and (nocfi.symbols, nocfi.cfi) == ("lines", False)


def test_detail_of_a_stripped_library_is_exports(tmp_path: Path) -> None:
    """A stripped shared library keeps the functions it exports (.dynsym)."""
    cc, strip = _tool("cc"), _tool("strip")
    lib, src = tmp_path / "libdetail.so", tmp_path / "detail.c"
    src.write_text("static int hidden(int x) { return x * 3; }\n"
                   "int exported_one(int x) { return hidden(x) + 1; }\n"
                   "int exported_two(int x) { return hidden(x) + 2; }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-g", "-o", str(lib), str(src)], check=True)
    detail = _detail(lib)
    assert detail is not None and detail.symbols == "lines"
    subprocess.run([strip, str(lib)], check=True)
    assert _detail(lib) == ModuleDetail("exports", 2, True)


def test_rg_if_installed_is_stripped() -> None:
    rg = shutil.which("rg")
    if rg is None:
        pytest.skip("ripgrep is not installed")
    detail = _detail(Path(rg))
    assert detail is not None and detail.symbols in ("exports", "none")
    text = symbols_note(rg, detail.symbols, detail.functions)
    assert "stripped: addresses only" in text and "functions only" not in text


# -- the texts --------------------------------------------------------------------

def test_note_texts() -> None:
    assert symbols_note("/x/app", "lines", 10) == ""
    assert symbols_note("/x/app", None, None) == ""
    assert symbols_note("/x/app", "functions", 10) == (
        '/x/app: no line info: functions only, no file:line (build with debug = '
        '"line-tables-only" or more in [profile.release])')
    assert symbols_note("/usr/bin/rg", "exports", 12) == (
        "/usr/bin/rg: stripped: addresses only, except 12 exported functions (rebuild "
        "without strip, or install its debug symbols: a -dbgsym package or "
        "/usr/lib/debug/.build-id)")
    assert "except 1 exported function (" in symbols_note("/x", "exports", 1)
    assert symbols_note("/usr/bin/rg", "none", 0) == (
        f"/usr/bin/rg: stripped: addresses only, no symbols at all ({FIX_SYMBOLS})")
    assert FIX_LINES in symbols_note("/x", "functions", 1)


# -- stored and read back ------------------------------------------------------------

def _addr(module: str, address: int, build_id: str | None = None) -> ResolvedAddress:
    frame = Frame(f"f{address:x}", None, None, module, False, True)
    return ResolvedAddress(address, module, build_id, address & 0xFFFF, (frame,),
                           (address & ~0xFFFF, (address & ~0xFFFF) + 0x10000, 0))


def _profile(path: Path, details: dict[str, tuple[str, int, bool]], unwind: str = "auto",
             executable: str = APP) -> Path:
    writer = ProfileWriter(path)
    writer.begin_recording(RecordingInfo(
        pid=1, process_name="app", cmdline="app", executable=executable, build_id=BUILD_ID,
        cpu_source="perf", cpu_freq=99, interval_s=1.0, start_time=1_700_000_000.0,
        unwind=unwind))
    addresses = {}
    for i, module in enumerate(details):
        res = _addr(module, 0x10_0000 * (i + 1) + 0x42, BUILD_ID if module == APP else None)
        addresses[res.address] = res
    writer.add_addresses(addresses)
    writer.add_stacks([(0, list(addresses))])
    writer.add_cpu_counts([(0, 1, 0, 3, 30_000_000)])
    for module, (symbols, functions, cfi) in details.items():
        writer.set_module_detail(module, BUILD_ID if module == APP else None, symbols,
                                 functions, cfi)
    writer.set_module_detail("/never/sampled", None, "none", 0, False)  # no mapping: no note
    writer.finalize(1_700_000_002.0, "exited")
    return path


def _notes(path: Path) -> list[str]:
    conn = open_readonly(path)
    try:
        return detail_note_lines(conn)
    finally:
        conn.close()


def test_full_detail_has_no_notes(tmp_path: Path) -> None:
    db = _profile(tmp_path / "p.db", {APP: ("lines", 500, True), LIBC: ("exports", 2000, True)})
    assert _notes(db) == []
    rows = sqlite3.connect(db).execute(
        "SELECT path, symbols, functions, cfi FROM modules ORDER BY path").fetchall()
    assert rows == [("/never/sampled", "none", 0, 0), (APP, "lines", 500, 1),
                    (LIBC, "exports", 2000, 1)]


def test_notes_per_level(tmp_path: Path) -> None:
    db = _profile(tmp_path / "p.db", {
        LIBC: ("exports", 2000, True),     # a system library without line info: normal
        LIB: ("functions", 40, True),      # a library of the program's: noted
        APP: ("none", 0, True),            # the stripped executable: noted first
        "/usr/lib/x86_64-linux-gnu/libz.so.1": ("none", 0, True),  # system, no symbols
    })
    assert _notes(db) == [
        symbols_note(APP, "none", 0),
        symbols_note(LIB, "functions", 40),
        symbols_note("/usr/lib/x86_64-linux-gnu/libz.so.1", "none", 0),
    ]
    conn = open_readonly(db)
    try:
        assert detail_note_short(conn) == ("app: stripped, addresses only; libfast.so: no line "
                                           "info, functions only; libz.so.1: stripped, "
                                           "addresses only")
    finally:
        conn.close()


def test_executable_with_another_name_is_found_by_build_id(tmp_path: Path) -> None:
    """The executable mapped under another path than recordings.executable is still the
    program's own: its missing line info is noted even in a system location."""
    exe = "/usr/lib/app/app"
    db = _profile(tmp_path / "p.db", {APP: ("functions", 5, True)}, executable=exe)
    assert _notes(db) == [symbols_note(APP, "functions", 5)]


@pytest.mark.parametrize("unwind", ["auto", "dwarf", "fp", None])
def test_no_cfi_is_noted_when_the_recording_unwound_by_cfi(tmp_path: Path,
                                                           unwind: str | None) -> None:
    db = _profile(tmp_path / "p.db", {APP: ("lines", 5, False), LIBC: ("exports", 9, False)},
                  unwind=unwind or "fp")
    if unwind is None:  # a file from before recordings.unwind: frame pointers
        raw = sqlite3.connect(db)
        raw.execute("ALTER TABLE recordings DROP COLUMN unwind")
        raw.commit()
        raw.close()
    notes = _notes(db)
    if unwind in ("auto", "dwarf"):
        assert [n.split(":")[0] for n in notes] == [APP, LIBC]
        assert all("no unwind tables (.eh_frame)" in n for n in notes)
        if unwind == "auto":
            assert notes[0] == (f"{APP}: no unwind tables (.eh_frame): stacks through it "
                                "rely on frame pointers")
        else:
            assert "end there" in notes[0]
    else:
        assert notes == []


def test_older_file_without_the_columns(tmp_path: Path) -> None:
    """A file written before modules.symbols: no notes; --append adds the columns."""
    db = _profile(tmp_path / "p.db", {APP: ("none", 0, True)})
    raw = sqlite3.connect(db)
    for column in ("symbols", "functions", "cfi"):
        raw.execute(f"ALTER TABLE modules DROP COLUMN {column}")
    raw.commit()
    raw.close()
    assert _notes(db) == []
    writer = ProfileWriter(db, append=True)
    writer.begin_recording(RecordingInfo(
        pid=2, process_name="app", cmdline="app", executable=APP, build_id=BUILD_ID,
        cpu_source="perf", cpu_freq=99, interval_s=1.0, start_time=1_700_000_010.0))
    writer.finalize(1_700_000_011.0, "exited")
    assert sqlite3.connect(db).execute("SELECT symbols FROM modules").fetchall() == [
        (None,), (None,)]
    assert _notes(db) == []


def test_symbolizer_reports_its_modules(copies: dict[str, Path]) -> None:
    """Symbolizer.module_details(): the detail of every loaded object of a process, and
    the warning it gives is the exact one."""
    proc = subprocess.Popen([str(copies["stripped"]), "--seconds", "5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        with Symbolizer(proc.pid, cache_dir=None) as sym:
            resolved = sym.resolve([m.start for m in sym.mappings])
            details = sym.module_details()
            exe = str(copies["stripped"])
            assert details[exe] == ModuleDetail("none", 0, True)
            res = next(r for r in resolved.values() if r.module == exe)
            assert sym.module_detail(exe, res.build_id) == details[exe]
            assert symbols_note(exe, "none", 0) in sym.warnings
            assert not any("functions only" in w for w in sym.warnings)
    finally:
        proc.kill()
        proc.wait()


# -- the TUI ------------------------------------------------------------------------

def _snap(note: str) -> Snapshot:
    return Snapshot(state=VIEW, process_name="rg", pid=7, elapsed_s=2.0, samples=200,
                    interval_s=1.0, intervals=2, dropped=0, lost=0, detail_note=note)


def test_tui_shows_the_note_in_one_line() -> None:
    note = "rg: stripped, addresses only"
    for view in (CPU, MEM):
        for width, height in ((80, 24), (160, 48), (40, 10), (20, 5), (1, 1)):
            for chart in (True, False):
                lines = render(_snap(note), ViewState(view=view, chart_visible=chart),
                               width, height)
                assert len(lines) == height
                for line in lines:
                    assert sum(len(text) for _, text in line) == width
        text = plain_text(render(_snap(note), ViewState(view=view), 80, 24))
        assert sum(note in line for line in text.splitlines()) == 1
    assert "stripped" not in plain_text(render(_snap(""), ViewState(), 80, 24))
