"""Every SQL query printed in README.md, docs/*.md and `rsprof --help` runs, through
`rsprof query`, against real profiles, and returns what its prose says: the
per-site views have one row per site (the README's leak query one row per
leaking line, with exact totals), however many stacks reach that site."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rsprof.cli import ROOT_HELP
from tests.conftest import ROOT, TARGETS_DIR, rsprof_env
from tests.integration.helpers import query

pytestmark = pytest.mark.integration

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# heap_exact leaks LEAK_COUNT blocks of LEAK_SIZE bytes at one line, from one stack.
HEAP_EXACT_LEAK = ("heap_exact::leak_known", "heap_exact.rs", "Vec::with_capacity(LEAK_SIZE)",
                   100, 4096)
# leak_paths leaks LEAK_COUNT blocks of LEAK_SIZE bytes at one line, through PATHS stacks.
LEAK_PATHS_LEAK = ("leak_paths::leak_here", "leak_paths.rs", "// the leaking line", 500, 1024)
LEAK_PATHS_STACKS = 50

# A fenced code block: its info string and its text.
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# `rsprof query FILE "SQL"` (or 'SQL'); the SQL may span lines.
_RSPROF_QUERY = re.compile(r"""rsprof query\s+(?:--\S+\s+)*\S+\s+(?:"([^"]*)"|'([^']*)')""")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_SQL_START = re.compile(r"^\s*(SELECT|WITH)\b")

# Views with one row per site: a query over them must not repeat a row's identity.
_PER_SITE_VIEW = re.compile(
    r"\bFROM\s+(heap_samples|heap_timeline|cpu_samples|cpu_leaf_samples|cpu_functions)\b",
    re.IGNORECASE)
_IDENTITY = ("recording_id", "time", "elapsed_s", "thread", "tid", "function", "file", "line",
             "module")


def _line_no(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _rsprof_queries(text: str, base: int, whole: str, where: str) -> list[tuple[str, str]]:
    """Every `rsprof query ...` in text (a part of whole at offset base), as
    (label, SQL); one that does not parse is a failure, never skipped."""
    out = []
    for start in (m.start() for m in re.finditer(r"rsprof query\b", text)):
        m = _RSPROF_QUERY.match(text, start)
        if m is None:
            rest = text[start:start + 60].splitlines()[0]
            if re.fullmatch(r"rsprof query( FILE SQL)?\W*", rest):
                continue  # prose naming the command, no SQL
            raise AssertionError(f"{where}:{_line_no(whole, base + start)}: cannot parse the "
                                 f"SQL of {rest!r}")
        out.append((f"{where}:{_line_no(whole, base + start)}", m.group(1) or m.group(2)))
    return out


def _sql_block(body: str, base: int, whole: str, where: str) -> list[tuple[str, str]]:
    """The statements of a ```sql block, split where sqlite3 says one is complete."""
    out, current, first = [], "", 0
    for offset, line in ((m.start(), m.group()) for m in re.finditer(r".*\n?", body) if m.group()):
        if not current.strip():
            first = offset
        current += line
        if sqlite3.complete_statement(current):
            out.append((f"{where}:{_line_no(whole, base + first)}", current.strip()))
            current = ""
    assert not current.strip(), f"{where}: unfinished SQL statement {current!r}"
    return out


def documented_queries() -> list[tuple[str, str]]:
    """(where, SQL) of every query printed in the docs and the root --help."""
    found: list[tuple[str, str]] = []
    for path in DOCS:
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        prose, last = [], 0
        for m in _FENCE.finditer(text):
            prose.append((last, text[last:m.start()]))
            last = m.end()
            lang, body, base = m.group(1).strip().lower(), m.group(2), m.start(2)
            if lang == "sql":
                found += _sql_block(body, base, text, where)
            else:
                found += _rsprof_queries(body, base, text, where)
        prose.append((last, text[last:]))
        for base, part in prose:
            for m in _INLINE_CODE.finditer(part):
                code, offset = m.group(1), base + m.start(1)
                if _SQL_START.match(code):
                    found.append((f"{where}:{_line_no(text, offset)}", code))
                else:
                    found += _rsprof_queries(code, offset, text, where)
    found += _rsprof_queries(ROOT_HELP, 0, ROOT_HELP, "rsprof --help")
    return found


QUERIES = documented_queries()


def test_the_documented_queries_are_found() -> None:
    assert QUERIES, "no SQL queries found in README.md, docs/*.md or rsprof --help"
    sources = Counter(where.split(":")[0] for where, _ in QUERIES)
    assert sources["README.md"] >= 2, QUERIES
    assert sources["docs/schema.md"] >= 3, QUERIES
    assert sources["rsprof --help"] >= 1, QUERIES
    leak_queries = [sql for _, sql in QUERIES if "leaked_count" in sql]
    assert len(leak_queries) >= 2, "the leak query, in the README and docs/schema.md"


def _record(targets: Path, work: Path, name: str, *args: str) -> Path:
    db = work / f"{name}.db"
    result = subprocess.run(
        [sys.executable, "-m", "rsprof", "run", "-q", "-o", str(db), "--",
         str(targets / name), *args],
        cwd=work, env=rsprof_env(work / "cache"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "exited with code 0" in result.stderr, result.stderr
    return db


@pytest.fixture(scope="module")
def profiles(targets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """heap_exact (one leak from one stack, no CPU to speak of) and leak_paths
    (one leak, and 1.5 s of CPU at one line, each through 50 stacks)."""
    work = tmp_path_factory.mktemp("documented")
    return {"heap_exact": _record(targets, work, "heap_exact", "--linger", "0.3"),
            "leak_paths": _record(targets, work, "leak_paths", "--spin", "1.5")}


def _line_of(file: str, text: str) -> int:
    for number, line in enumerate((TARGETS_DIR / "src" / "bin" / file).read_text()
                                  .splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(text)


def _run_query(db: Path, sql: str) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "rsprof", "query", str(db), sql, "--json"],
                            env=rsprof_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{sql}\n{result.stderr}"
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


@pytest.mark.parametrize("profile", ["heap_exact", "leak_paths"])
@pytest.mark.parametrize(("where", "sql"), QUERIES, ids=[w for w, _ in QUERIES])
def test_documented_query(profiles: dict[str, Path], profile: str, where: str,
                          sql: str) -> None:
    rows = _run_query(profiles[profile], sql)
    if profile == "leak_paths":  # CPU and heap data: every documented query has rows
        assert rows, f"{where}: no rows"
    if _PER_SITE_VIEW.search(sql) and rows and "function" in rows[0]:
        keys = [k for k in _IDENTITY if k in rows[0]]
        repeated = [k for k, n in Counter(tuple(r[c] for c in keys) for r in rows).items()
                    if n > 1]
        assert not repeated, f"{where}: rows repeat {keys} = {repeated[:3]}"
    if rows and {"function", "file", "line", "leaked", "leaked_count"} <= rows[0].keys():
        function, file, text, count, size = (HEAP_EXACT_LEAK if profile == "heap_exact"
                                             else LEAK_PATHS_LEAK)
        leak = [r for r in rows if r["function"] == function]
        assert len(leak) == 1, rows
        assert leak[0]["file"].endswith(f"src/bin/{file}")
        assert leak[0]["line"] == _line_of(file, text)
        assert (leak[0]["leaked"], leak[0]["leaked_count"]) == (count * size, count)
        assert rows[0] == leak[0]  # the biggest leak first


def test_one_leaking_line_through_many_stacks_is_one_site(profiles: dict[str, Path]) -> None:
    db = profiles["leak_paths"]
    function, file, text, count, size = LEAK_PATHS_LEAK
    line = _line_of(file, text)
    # The file's own views (the sqlite3 shell sees the same).
    sites = query(db, "SELECT line, total_allocs, total_alloc_bytes, total_frees,"
                      " total_free_bytes, live_bytes, stacks FROM heap_samples"
                      f" WHERE function = '{function}'")
    assert sites == [(line, count, count * size, 0, 0, count * size, LEAK_PATHS_STACKS)]
    stacks = query(db, "SELECT line, total_allocs, live_bytes, peak_live_bytes FROM heap_stacks"
                       f" WHERE function = '{function}'")
    assert len(stacks) == LEAK_PATHS_STACKS  # the site really was reached by many stacks
    assert {s[0] for s in stacks} == {line}
    assert sum(s[1] for s in stacks) == count
    assert sum(s[2] for s in stacks) == count * size
    assert all(s[3] == s[2] for s in stacks)  # never freed: each stack's peak is its live
    timeline = query(db, "SELECT live_bytes, total_allocs FROM heap_timeline"
                         f" WHERE function = '{function}' ORDER BY elapsed_s")
    assert timeline[-1] == (count * size, count)
    # CPU: burn's samples come from many stacks too (different depths and
    # sampled instructions), yet cpu_samples has one row per interval, thread and line.
    per_site = query(db, "SELECT recording_id, elapsed_s, tid, line, samples FROM cpu_samples"
                         " WHERE function = 'leak_paths::burn'")
    keys = Counter(r[:4] for r in per_site)
    assert per_site and max(keys.values()) == 1, per_site
    per_stack = query(db, "SELECT recording_id, elapsed_s, tid, line, samples FROM cpu_stacks"
                          " WHERE function = 'leak_paths::burn'")
    assert len(per_stack) > len(per_site)
    assert sum(r[4] for r in per_stack) == sum(r[4] for r in per_site) > 50
