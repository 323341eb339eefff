"""`top` and the TUI say exactly what detail a profile lacks, on real binaries: a
stripped copy of a test target ("stripped: addresses only", never "functions
only"), a copy without debug info ("no line info: functions only"), the target as
built (nothing), and Debian's stripped ripgrep."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rsprof.storage.profile_file import open_readonly
from rsprof.tui.loader import ProfileLoader
from rsprof.tui.screen import plain_text, render
from rsprof.tui.state import CPU, MEM, ViewState
from tests.integration.helpers import RunRsprof, query

pytestmark = pytest.mark.integration

STRIPPED = "stripped: addresses only"
NO_LINES = "no line info: functions only, no file:line"


def _copy(targets: Path, tmp_path: Path, how: str) -> Path:
    """cpu_split, copied and stripped `how` ("" as built, "all", "debug")."""
    out = tmp_path / f"cpu_split_{how or 'full'}"
    shutil.copy(targets / "cpu_split", out)
    if how:
        strip = shutil.which("strip")
        if strip is None:
            pytest.skip("strip (binutils) is not installed")
        subprocess.run([strip, *(["--strip-debug"] if how == "debug" else []), str(out)],
                       check=True)
    return out


def _record(run_rsprof: RunRsprof, binary: Path, db: Path) -> subprocess.CompletedProcess[str]:
    result = run_rsprof("run", "-q", "-o", str(db), "--", str(binary), "--seconds", "2",
                        timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def _top(run_rsprof: RunRsprof, db: Path, kind: str = "cpu") -> tuple[str, list[str], str]:
    """(text output, the JSON's notes, CSV output) of `top KIND`."""
    text = run_rsprof("top", kind, str(db), check=True).stdout
    doc = json.loads(run_rsprof("top", kind, str(db), "--json", check=True).stdout)
    csv_out = run_rsprof("top", kind, str(db), "--csv", check=True).stdout
    return text, doc["notes"], csv_out


def _header(text: str) -> list[str]:
    """The lines above the table (up to the first empty line)."""
    return text.split("\n\n", 1)[0].splitlines()


def test_stripped_binary_is_said_to_be_stripped(targets: Path, run_rsprof: RunRsprof,
                                                tmp_path: Path) -> None:
    binary = _copy(targets, tmp_path, "all")
    db = tmp_path / "stripped.db"
    result = _record(run_rsprof, binary, db)
    # The recording's warning names what is missing; never "functions only".
    assert f"rsprof: warning: {binary}: {STRIPPED}" in result.stderr
    assert "functions only" not in result.stderr
    assert query(db, f"SELECT symbols, functions, cfi FROM modules WHERE path = '{binary}'") \
        == [("none", 0, 1)]
    for kind in ("cpu", "heap"):
        text, notes, csv_out = _top(run_rsprof, db, kind)
        mine = [n for n in notes if n.startswith(f"{binary}: ")]
        assert len(mine) == 1 and STRIPPED in mine[0], notes
        assert "rebuild without strip, or install its debug symbols" in mine[0]
        assert f"note: {mine[0]}" in _header(text)
        assert "functions only" not in text and not any("functions only" in n for n in notes)
        assert STRIPPED not in csv_out and "note" not in csv_out
        list(csv.reader(io.StringIO(csv_out)))  # still plain CSV
    # The frames are what the note says: addresses, no function names of its own.
    text, _, _ = _top(run_rsprof, db)
    assert "work_fifty" not in text and f"{binary.name}+0x" in text

    # The TUI (what `rsprof view` shows): one short line, in both views.
    conn = open_readonly(db)
    try:
        snap = ProfileLoader(conn, live=False).load()
    finally:
        conn.close()
    assert snap.detail_note.startswith(f"{binary.name}: stripped, addresses only")
    for view in (CPU, MEM):
        screen = plain_text(render(snap, ViewState(view=view), 80, 24))
        assert f"{binary.name}: stripped, addresses only" in screen
        assert "functions only" not in screen


def test_binary_without_debug_info_has_functions_only(targets: Path, run_rsprof: RunRsprof,
                                                      tmp_path: Path) -> None:
    binary = _copy(targets, tmp_path, "debug")
    db = tmp_path / "nodebug.db"
    result = _record(run_rsprof, binary, db)
    assert f"rsprof: warning: {binary}: {NO_LINES}" in result.stderr
    text, notes, _ = _top(run_rsprof, db)
    assert notes[0] == (f'{binary}: {NO_LINES} (build with debug = "line-tables-only" or more '
                        "in [profile.release])")
    assert f"note: {notes[0]}" in _header(text)
    assert "stripped" not in text
    assert "work_fifty" in text  # functions are there: the note claims no less


def test_binary_with_full_detail_has_no_note(targets: Path, run_rsprof: RunRsprof,
                                             tmp_path: Path) -> None:
    binary = _copy(targets, tmp_path, "")
    db = tmp_path / "full.db"
    result = _record(run_rsprof, binary, db)
    assert str(binary) not in result.stderr
    assert query(db, f"SELECT symbols, cfi FROM modules WHERE path = '{binary}'") == \
        [("lines", 1)]
    text, notes, _ = _top(run_rsprof, db)
    assert notes == [] and "note:" not in text
    conn = open_readonly(db)
    try:
        assert ProfileLoader(conn, live=False).load().detail_note == ""
    finally:
        conn.close()


def test_ripgrep_is_said_to_be_stripped(run_rsprof: RunRsprof, tmp_path: Path) -> None:
    rg = shutil.which("rg")
    if rg is None:
        pytest.skip("ripgrep is not installed (apt-get install ripgrep)")
    db = tmp_path / "rg.db"
    result = run_rsprof("run", "-q", "-o", str(db), "--", rg, "-c", "fn", "/usr/share/doc",
                        timeout=120)
    assert db.exists(), result.stderr
    assert "functions only" not in result.stderr
    text, notes, _ = _top(run_rsprof, db)
    mine = [n for n in notes if n.startswith(f"{rg}: ")]
    assert len(mine) == 1 and STRIPPED in mine[0], notes
    assert f"note: {mine[0]}" in _header(text)
    assert "functions only" not in text
