"""Shared helpers for rsprof benchmarks: build targets, run rsprof, medians."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "targets" / "target" / "release"
EXAMPLE = ROOT / "example" / "target" / "release" / "rsprof-example"


def build_targets() -> None:
    for crate in (ROOT / "tests" / "targets", ROOT / "example"):
        subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"], cwd=crate,
                       check=True)


def rsprof_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rsprof", *args]


def rsprof_env(cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    return env


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"bench: {tool} is not installed (apt-get install it)")
    return path


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def fmt_ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.3f}x" if baseline else "n/a"
