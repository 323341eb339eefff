"""Heap tracking at the shape of real programs (issue 13): a binary-trees allocation
storm of 131,071 distinct deep stacks is recorded exactly, every stack kept apart, and
the per-stack rows it writes stay within rsprof's row budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rsprof.recording.recorder import HEAP_ROWS_PER_S
from tests.conftest import rsprof_env
from tests.integration.helpers import query

pytestmark = pytest.mark.integration

DEPTH, ITERATIONS = 16, 24
STACKS = 2 ** (DEPTH + 1) - 1  # every node of a tree has its own allocation stack
NODES = STACKS * ITERATIONS


def test_deep_distinct_stacks_are_exact_and_kept_apart(targets: Path, tmp_path: Path) -> None:
    db = tmp_path / "bt.db"
    done = subprocess.run(
        [sys.executable, "-m", "rsprof", "run", "-q", "-o", str(db), "--",
         str(targets / "binary_trees"), "--depth", str(DEPTH), "--iterations",
         str(ITERATIONS)],
        cwd=tmp_path, env=rsprof_env(tmp_path / "cache"), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"allocs {NODES}" in done.stdout
    meta = dict(query(db, "SELECT key, value FROM meta"))
    for counter in ("heap_dropped", "heap_malformed", "heap_unknown_stacks",
                    "heap_replaced_live", "heap_raw_stacks", "heap_truncated_stacks"):
        assert meta[counter] == "0", counter
    # Exact per site, and the stacks neither merged nor split: one stored stack per
    # tree position, each with ITERATIONS allocations of 16 bytes, all freed.
    ((stacks, allocs, frees, alloc_bytes, live),) = query(
        db, "SELECT SUM(stacks), SUM(total_allocs), SUM(total_frees), SUM(total_alloc_bytes),"
            " SUM(live_bytes) FROM heap_samples WHERE function = 'binary_trees::create'")
    assert (stacks, allocs, frees, alloc_bytes, live) == (STACKS, NODES, NODES, NODES * 16, 0)
    per_stack = query(
        db, "SELECT MIN(total_allocs), MAX(total_allocs) FROM heap_stacks"
            " WHERE function = 'binary_trees::create'")
    assert per_stack == [(ITERATIONS, ITERATIONS)]
    (leak,) = query(db, "SELECT SUM(total_allocs), SUM(live_bytes) FROM heap_samples"
                        " WHERE function = 'binary_trees::leak_known'")
    assert leak == (25, 25 * 48)
    # The time series keeps within the row budget: the last rows of every stack at the
    # end, and in between at most HEAP_ROWS_PER_S a second (plus the batch in flight).
    ((seconds,),) = query(db, "SELECT end_time - start_time FROM recordings")
    ((rows,),) = query(db, "SELECT COUNT(*) FROM heap_counts")
    assert rows <= STACKS + 64 + HEAP_ROWS_PER_S * (seconds + 2), (rows, seconds)
