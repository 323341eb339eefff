"""`rsprof run` with the heap shim on a Rust target with known allocations."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import TARGETS_DIR
from tests.integration.helpers import query

pytestmark = pytest.mark.integration

THREADS, ROUNDS = 8, 1000
LEAK_COUNT, LEAK_SIZE = 100, 4096
SOURCE = TARGETS_DIR / "src" / "bin" / "heap_exact.rs"

# The README's leak query, verbatim.
README_LEAK_QUERY = """
  SELECT function, file, line,
         total_alloc_bytes - total_free_bytes as leaked,
         total_allocs - total_frees as leaked_count
  FROM heap_samples
  WHERE total_allocs > total_frees
  ORDER BY leaked DESC
  LIMIT 20"""


def _line_of(text: str) -> int:
    for number, line in enumerate(SOURCE.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(text)


@pytest.fixture(scope="module")
def heap_db(targets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess
    import sys

    from tests.conftest import rsprof_env

    work = tmp_path_factory.mktemp("heap")
    db = work / "heap.db"
    result = subprocess.run(
        [sys.executable, "-m", "rsprof", "run", "-q", "-o", str(db), "--",
         str(targets / "heap_exact"), "--linger", "0.3"],
        cwd=work, env=rsprof_env(work / "cache"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "exited with code 0" in result.stderr, result.stderr
    return db


def _by_function(db: Path) -> dict[str, list[int]]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for function, allocs, ab, frees, fb, live in query(
            db, "SELECT function, total_allocs, total_alloc_bytes, total_frees,"
                " total_free_bytes, live_bytes FROM heap_samples"):
        row = totals[function]
        for i, v in enumerate((allocs, ab, frees, fb, live)):
            row[i] += v
    return totals


def test_every_site_is_exact(heap_db: Path) -> None:
    totals = _by_function(heap_db)
    per_thread_sizes = sum(100 + t for t in range(THREADS)) * ROUNDS
    small = THREADS * ROUNDS * 16
    n = THREADS * ROUNDS
    # (allocs, alloc_bytes, frees, free_bytes, live_bytes)
    assert totals["heap_exact::alloc_block"] == [2 * n, per_thread_sizes + small, 2 * n,
                                                 per_thread_sizes + small, 0]
    assert totals["heap_exact::grow_block"] == [n, n * 4000, n, n * 4000, 0]
    assert totals["heap_exact::aligned_block"] == [n, n * 256, n, n * 256, 0]
    assert totals["heap_exact::zeroed_block"] == [n, n * 48, n, n * 48, 0]
    assert totals["heap_exact::leak_known"] == [LEAK_COUNT, LEAK_COUNT * LEAK_SIZE, 0, 0,
                                                LEAK_COUNT * LEAK_SIZE]


def test_nothing_was_lost(heap_db: Path) -> None:
    meta = dict(query(heap_db, "SELECT key, value FROM meta"))
    assert meta["heap_dropped"] == "0"
    assert meta["heap_malformed"] == "0"
    assert meta["heap_unknown_stacks"] == "0"
    assert meta["heap_replaced_live"] == "0"
    assert meta["heap_source"] == "preload"
    assert meta["exit_code"] == "0"
    assert int(meta["heap_allocs"]) >= 5 * THREADS * ROUNDS


def test_readme_leak_query_finds_the_leak_exactly(heap_db: Path, run_rsprof) -> None:
    result = run_rsprof("query", str(heap_db), README_LEAK_QUERY, "--json", check=True)
    rows = json.loads(result.stdout)
    leak = [r for r in rows if r["function"] == "heap_exact::leak_known"]
    assert len(leak) == 1, rows
    assert leak[0]["leaked"] == LEAK_COUNT * LEAK_SIZE
    assert leak[0]["leaked_count"] == LEAK_COUNT
    assert leak[0]["file"].endswith("src/bin/heap_exact.rs")
    assert leak[0]["line"] == _line_of("Vec::with_capacity(LEAK_SIZE)")
    assert rows[0] == leak[0]  # the biggest leak comes first


def test_top_heap_sorts_by_live_bytes(heap_db: Path, run_rsprof) -> None:
    doc = json.loads(run_rsprof("top", "heap", str(heap_db), "--json", check=True).stdout)
    first = doc["sites"][0]
    assert first["function"] == "heap_exact::leak_known"
    assert first["live_bytes"] == LEAK_COUNT * LEAK_SIZE
    lives = [s["live_bytes"] for s in doc["sites"]]
    assert lives == sorted(lives, reverse=True)
    text = run_rsprof("top", "heap", str(heap_db), check=True).stdout
    assert "400.0 KB" in text and "leak_known" in text
    assert "dropped 0" in text
