"""Recording binaries that are stripped, or deleted from disk while running."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import self_percent_by_function, top_cpu_json

pytestmark = pytest.mark.integration


def _copy(targets: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copy2(targets / "cpu_split", dest)
    return dest


def test_binary_deleted_after_start_still_resolves(targets, start_target, run_rsprof,
                                                    tmp_path: Path) -> None:
    binary = _copy(targets, tmp_path, "doomed_split")
    target = start_target(binary, "--seconds", "60")
    binary.unlink()  # the running binary is gone from disk: maps say "(deleted)"
    maps = Path(f"/proc/{target.pid}/maps").read_text()
    assert "doomed_split (deleted)" in maps
    db = tmp_path / "deleted.db"
    result = run_rsprof("-p", str(target.pid), "-q", "-d", "3s", "-o", str(db))
    assert result.returncode == 0, result.stderr
    shares = self_percent_by_function(top_cpu_json(run_rsprof, db))
    assert shares.get("cpu_split::work_fifty", 0) > 35, shares
    doc = top_cpu_json(run_rsprof, db)
    row = next(r for r in doc["functions"] if r["function"] == "cpu_split::work_fifty")
    assert row["file"].endswith("cpu_split.rs") and row["line"]


def test_stripped_binary_names_functions_and_warns_once(targets, start_target, run_rsprof,
                                                        tmp_path: Path) -> None:
    if shutil.which("strip") is None:
        pytest.skip("binutils strip is not installed")
    binary = _copy(targets, tmp_path, "split_nodebug")
    subprocess.run(["strip", "--strip-debug", str(binary)], check=True)
    target = start_target(binary, "--seconds", "60")
    db = tmp_path / "stripped.db"
    result = run_rsprof("-p", str(target.pid), "-q", "-d", "3s", "-o", str(db))
    assert result.returncode == 0, result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1, result.stderr
    assert "no line info: functions only, no file:line" in warnings[0]
    assert "split_nodebug" in warnings[0]
    doc = top_cpu_json(run_rsprof, db)
    shares = self_percent_by_function(doc)
    # Function names still come from the symbol table; no file:line without DWARF.
    assert shares.get("cpu_split::work_fifty", 0) > 35, shares
    row = next(r for r in doc["functions"] if r["function"] == "cpu_split::work_fifty")
    assert row["file"] is None


def test_fully_stripped_binary_gives_module_offsets(targets, start_target, run_rsprof,
                                                    tmp_path: Path) -> None:
    if shutil.which("strip") is None:
        pytest.skip("binutils strip is not installed")
    binary = _copy(targets, tmp_path, "split_bare")
    subprocess.run(["strip", "--strip-all", str(binary)], check=True)
    target = start_target(binary, "--seconds", "60")
    db = tmp_path / "bare.db"
    result = run_rsprof("-p", str(target.pid), "-q", "-d", "3s", "-o", str(db))
    assert result.returncode == 0, result.stderr
    assert sum("stripped: addresses only" in ln for ln in result.stderr.splitlines()) == 1, \
        result.stderr
    doc = top_cpu_json(run_rsprof, db)
    top = doc["functions"][0]
    assert top["function"].startswith(f"{binary}+0x") or top["function"].startswith(
        "split_bare+0x"), top
    assert doc["summary"]["unresolved_addresses"] > 0
