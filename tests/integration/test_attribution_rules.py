"""The attribution rule on real recordings (docs/attribution.md, issue 12): an
executable installed in a system location keeps its functions, and the time the
program spends in rsprof's own shim is one `[rsprof]` row, never the user's."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsprof.export.folded import folded_lines
from rsprof.export.stacks import load_cpu_stacks
from rsprof.report.selection import Selection
from rsprof.storage.profile_file import open_readonly
from rsprof.tui.loader import ProfileLoader
from tests.integration.helpers import (
    RunRsprof,
    query,
    self_percent_by_function,
    top_cpu_json,
)

pytestmark = pytest.mark.integration

WORK = ("cpu_split::work_fifty", "cpu_split::work_thirty", "cpu_split::work_twenty")
RSPROF_NAME = re.compile(r"(^|[^A-Za-z0-9_])rsprof(_shim_|__|_trace::)")


@pytest.fixture
def installed_dir() -> Iterator[Path]:
    """A fresh /usr/local/lib/rsprof-test-<random>/, removed afterwards."""
    try:
        path = Path(tempfile.mkdtemp(prefix="rsprof-test-", dir="/usr/local/lib"))
    except OSError as exc:
        pytest.skip(f"cannot write /usr/local/lib: {exc}")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _work_share(run_rsprof: RunRsprof, binary: Path, db: Path) -> tuple[float, dict[str, float]]:
    run_rsprof("run", "-q", "--cpu-freq", "499", "-o", str(db), "--", str(binary),
               "--seconds", "2", check=True)
    shares = self_percent_by_function(top_cpu_json(run_rsprof, db))
    return sum(shares.get(name, 0.0) for name in WORK), shares


def test_executable_installed_under_usr_local_lib_keeps_its_functions(
        targets: Path, run_rsprof: RunRsprof, tmp_path: Path, installed_dir: Path) -> None:
    copy = installed_dir / "cpu_split"
    shutil.copy2(targets / "cpu_split", copy)
    normal, normal_shares = _work_share(run_rsprof, targets / "cpu_split", tmp_path / "n.db")
    installed, shares = _work_share(run_rsprof, copy, tmp_path / "i.db")
    assert normal >= 95, normal_shares
    # Before the rule knew the executable, std's inlined frames took the samples
    # (the whole module counted as a system library): ~0 % here.
    assert installed >= 95, shares
    assert abs(installed - normal) <= 3, (shares, normal_shares)
    assert abs(shares["cpu_split::work_fifty"] - 50) <= 5, shares
    meta = dict(query(tmp_path / "i.db", "SELECT key, value FROM meta"))
    assert meta["executable"] == str(copy)
    # The stored frames agree: the installed executable's functions are not internal.
    internal = query(tmp_path / "i.db", "SELECT internal FROM frames"
                     " WHERE function = 'cpu_split::work_fifty'")
    assert internal and all(row[0] == 0 for row in internal)


def test_rsprof_own_time_is_one_row(targets: Path, run_rsprof: RunRsprof,
                                    tmp_path: Path) -> None:
    db = tmp_path / "alloc.db"
    run_rsprof("run", "-q", "--cpu-freq", "499", "-o", str(db), "--",
               str(targets / "alloc_bench"), "--seconds", "2", check=True)
    doc = top_cpu_json(run_rsprof, db, "-n", "10000")
    total_doc = top_cpu_json(run_rsprof, db, "-n", "10000", "--sort", "total")
    rows = {r["function"]: r for r in doc["functions"]}
    own = rows.get("[rsprof]")
    assert own is not None, sorted(rows)
    assert os.path.basename(own["module"]) == "librsprof_shim.so"
    assert own["file"] is None
    # alloc_bench does nothing but allocate: the hooks' recording is a large share.
    assert doc["rsprof_samples"] == own["self_samples"] > 0
    assert doc["rsprof_percent"] == own["self_percent"]
    assert 5 <= doc["rsprof_percent"] <= 95, doc["rsprof_percent"]
    assert own["total_samples"] == own["self_samples"]
    # No function of rsprof's is a row, with self time or only in total.
    for d in (doc, total_doc):
        for r in d["functions"]:
            assert not RSPROF_NAME.search(r["function"]), r
            assert r["function"] == "[rsprof]" or \
                os.path.basename(r["module"]) != "librsprof_shim.so", r
    # The program's own functions keep the rest.
    assert rows["alloc_bench::churn"]["self_samples"] > 0
    assert abs(sum(r["self_percent"] for r in doc["functions"]) - 100) < 0.5
    # --include-internal charges true leaves (libc's, std's), but rsprof's time is
    # still the one [rsprof] row: it is what stack exports show as the innermost frame.
    leaf = top_cpu_json(run_rsprof, db, "-n", "10000", "--include-internal")
    leaf_rows = {r["function"]: r for r in leaf["functions"]}
    assert leaf_rows["[rsprof]"]["self_samples"] == own["self_samples"]
    assert leaf["rsprof_percent"] == doc["rsprof_percent"]
    assert not any(RSPROF_NAME.search(name) for name in leaf_rows)
    # The header says it.
    text = run_rsprof("top", "cpu", str(db), check=True).stdout
    assert f"rsprof's own overhead {doc['rsprof_percent']:.1f} %" in text.splitlines()[2]
    # The TUI: the same row and share.
    conn = open_readonly(db)
    try:
        snap = ProfileLoader(conn, live=False).load()
        sset = load_cpu_stacks(conn, Selection())
    finally:
        conn.close()
    tui = {r.function: r for r in snap.cpu_rows}
    assert tui["[rsprof]"].samples == own["self_samples"]
    assert tui["[rsprof]"].location == own["module"]
    assert abs(snap.rsprof_pct - doc["rsprof_percent"]) < 0.01
    assert not any(RSPROF_NAME.search(name) for name in tui)
    # Stack exports: one [rsprof] leaf frame, no frame of the shim.
    folded = dict(folded_lines(sset, 0))
    assert sum(n for stack, n in folded.items()
               if stack.endswith("[rsprof]")) == own["self_samples"]
    assert not any(RSPROF_NAME.search(stack) for stack in folded)
    modules = {loc.module for loc in sset.locations.values()
               if any(f.function != "[rsprof]" for f in loc.frames)}
    assert not any(m.endswith("librsprof_shim.so") for m in modules)
