"""Small helpers for integration tests that read profiles."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NOFP_BUILD_ENV, ROOT

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


def total_percent_by_function(doc: dict[str, Any]) -> dict[str, float]:
    """Inclusive %: one row per function and module, so the largest row of a name."""
    out: dict[str, float] = {}
    for row in doc["functions"]:
        out[row["function"]] = max(out.get(row["function"], 0.0), row["total_percent"])
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


TRACE_APP_DIR = ROOT / "tests" / "trace_app"


def build_trace_app(variant: str, *features: str, frame_pointers: bool = True) -> Path:
    """tests/trace_app (rsprof-trace's test program) built with `features` into
    its own target directory. rsprof-trace is a path dependency here, as it is
    for anyone vendoring it: its inlined allocator frames point into
    rsprof-trace/src/lib.rs, and the attribution rule must still charge the
    caller (rsprof_trace/__rustc frames are internal wherever their file is).
    `frame_pointers=False` builds it as a default release build is (no frame
    pointers, line tables only: conftest's NOFP_BUILD_ENV) into
    target/<variant>-nofp."""
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed")
    if frame_pointers:
        target_dir = TRACE_APP_DIR / "target" / variant
        env = dict(os.environ, RUSTFLAGS="-C force-frame-pointers=yes")
    else:
        target_dir = TRACE_APP_DIR / "target" / f"{variant}-nofp"
        env = dict(os.environ, **NOFP_BUILD_ENV)
    cmd = ["cargo", "build", "--release", "--offline", "--quiet", "--target-dir",
           str(target_dir)]
    if features:
        cmd += ["--features", ",".join(features)]
    subprocess.run(cmd, cwd=TRACE_APP_DIR, env=env, check=True)
    return target_dir / "release" / "trace_app"


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll `predicate` every 50 ms until it holds; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")
