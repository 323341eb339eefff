"""A program with an allocator of its own: `rsprof run` sees none of its heap and
must say so, in the recording summary, `top heap` (text and --json) and the TUI.

own_alloc (tests/targets) has a #[global_allocator] over mmap that never calls
malloc; rustc defines malloc and free itself (jemalloc). heap_exact and
fixed_work, on std's allocator, are the controls: no such message, stripped or
not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rsprof.storage.profile_file import open_readonly
from rsprof.tui.loader import ProfileLoader
from rsprof.tui.screen import plain_text, render
from rsprof.tui.state import MEM, ViewState
from tests.integration.helpers import RunRsprof, query

pytestmark = pytest.mark.integration

NOT_SEEN = "rsprof: warning: heap not seen: "


def _record(run_rsprof: RunRsprof, db: Path, *command: str) -> str:
    result = run_rsprof("run", "-q", "-o", str(db), "--", *command)
    assert result.returncode == 0, result.stderr
    assert "exited with code 0" in result.stderr, result.stderr
    return result.stderr


def _stripped(binary: Path, tmp_path: Path) -> Path:
    if shutil.which("strip") is None:
        pytest.skip("strip is not installed")
    out = tmp_path / f"{binary.name}-stripped"
    subprocess.run(["strip", "-o", str(out), str(binary)], check=True)
    assert b".symtab" not in subprocess.run(["readelf", "-S", str(out)], check=True,
                                            capture_output=True).stdout
    return out


def _meta(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT key, value FROM meta"))


def test_own_global_allocator_is_named_everywhere(targets: Path, run_rsprof: RunRsprof,
                                                   tmp_path: Path) -> None:
    db = tmp_path / "own.db"
    stderr = _record(run_rsprof, db, str(targets / "own_alloc"))
    # The summary: after the usual line, why the heap is (nearly) empty.
    lines = stderr.splitlines()
    assert lines[-1].startswith(NOT_SEEN), stderr
    finding = lines[-1][len(NOT_SEEN):]
    assert finding.startswith("own_alloc uses its own allocator: its #[global_allocator] "
                              "does not call malloc, and 0 allocations from its own code "
                              "reached malloc in "), finding
    assert "rsprof-trace" in finding and "README" in finding
    assert _meta(db)["heap_not_seen"] == finding
    # The shim saw only what libc allocated for itself, none of it from own_alloc.
    assert int(_meta(db)["heap_allocs"]) < 50
    assert query(db, "SELECT COUNT(*) FROM heap_samples WHERE function LIKE 'own_alloc::%'"
                 ) == [(0,)]

    text = run_rsprof("top", "heap", str(db), check=True).stdout
    assert f"warning: heap not seen: {finding}\n" in text
    doc = json.loads(run_rsprof("top", "heap", str(db), "--json", check=True).stdout)
    assert doc["summary"]["heap_not_seen"] == finding
    cpu = json.loads(run_rsprof("top", "cpu", str(db), "--json", check=True).stdout)
    assert cpu["summary"]["heap_not_seen"] == finding  # the same summary everywhere

    # The TUI (`rsprof view`): the memory view says it above the rows.
    conn = open_readonly(db)
    try:
        snap = ProfileLoader(conn, live=False).load()
    finally:
        conn.close()
    assert snap.heap_not_seen == finding
    screen = " ".join(plain_text(render(snap, ViewState(view=MEM), 160, 48)).split())
    assert "heap not seen: own_alloc uses its own allocator" in screen
    assert "rsprof-trace" in screen


def test_stripped_own_allocator_falls_back_on_runtime_evidence(
        targets: Path, run_rsprof: RunRsprof, tmp_path: Path) -> None:
    db = tmp_path / "stripped.db"
    stderr = _record(run_rsprof, db, str(_stripped(targets / "own_alloc", tmp_path)))
    finding = _meta(db)["heap_not_seen"]
    assert finding.startswith("own_alloc-strip"), finding  # the 15-character process name
    assert "probably uses its own allocator (its symbols are stripped, so rsprof cannot "\
           "tell for sure): 0 allocations from its own code reached malloc in " in finding
    assert "rsprof-trace" in finding
    assert f"{NOT_SEEN}{finding}" in stderr


def test_std_allocator_gets_no_such_message(targets: Path, run_rsprof: RunRsprof,
                                            tmp_path: Path) -> None:
    db = tmp_path / "heap_exact.db"
    stderr = _record(run_rsprof, db, str(targets / "heap_exact"), "--linger", "0")
    assert "heap not seen" not in stderr, stderr
    assert _meta(db)["heap_not_seen"] == ""
    assert "heap not seen" not in run_rsprof("top", "heap", str(db), check=True).stdout
    doc = json.loads(run_rsprof("top", "heap", str(db), "--json", check=True).stdout)
    assert doc["summary"]["heap_not_seen"] == ""
    # CPU-heavy with few allocations, stripped: its startup allocations come from its
    # own code, so the runtime rule has no doubt either.
    db = tmp_path / "fixed_work.db"
    stderr = _record(run_rsprof, db, str(_stripped(targets / "fixed_work", tmp_path)),
                     "--threads", "1", "--rounds", "100000", "--delay", "0")
    assert "heap not seen" not in stderr, stderr
    assert _meta(db)["heap_not_seen"] == ""
    assert int(_meta(db)["samples"]) >= 25  # it did run enough CPU for the rule to look


def test_executable_that_defines_malloc(run_rsprof: RunRsprof, tmp_path: Path) -> None:
    """rustc links jemalloc unprefixed: its malloc comes before the LD_PRELOAD shim's
    in symbol lookup, so the shim is never called at all."""
    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("rustc is not installed")
    sysroot = subprocess.run([rustc, "--print", "sysroot"], check=True, capture_output=True,
                             text=True).stdout.strip()
    real = Path(sysroot) / "bin" / "rustc"  # not rustup's proxy, which execs it
    if not real.exists():
        pytest.skip("no rustc in the sysroot")
    db = tmp_path / "rustc.db"
    stderr = _record(run_rsprof, db, str(real), "--version")
    finding = _meta(db)["heap_not_seen"]
    assert finding.startswith("rustc uses its own allocator: it defines malloc"), finding
    assert "in place of libc's and rsprof's hooks" in finding
    assert f"{NOT_SEEN}{finding}" in stderr
