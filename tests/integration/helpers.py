"""Small helpers for integration tests that read profiles."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

RunRsprof = Callable[..., subprocess.CompletedProcess[str]]


def top_cpu_json(run: RunRsprof, db: Path, *extra: str) -> dict[str, Any]:
    result = run("top", "cpu", str(db), "--json", "-n", "200", *extra, check=True)
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def self_percent_by_function(doc: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in doc["functions"]:
        out[row["function"]] = out.get(row["function"], 0.0) + row["self_percent"]
    return out


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed run: exactly one line, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rsprof: error: "), lines[0]
    return lines[0]


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
