"""Shared helpers for rsprof benchmarks: build targets, run rsprof, medians."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import termios
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


def print_reproduce() -> None:
    """The command line that reproduces this run's figures (from the repository root)."""
    script = Path(sys.argv[0]).resolve()
    rel = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    print(f"reproduce: .venv/bin/python {shlex.join([str(rel), *sys.argv[1:]])}")


_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>]")


def first_frame_seconds(cmd: list[str], env: dict[str, str], markers: Sequence[str],
                        cols: int = 160, rows: int = 48, timeout: float = 60.0,
                        quit_key: bytes = b"q") -> tuple[float, str]:
    """Run `cmd` on a new pseudo-terminal of cols x rows, as a user would start it, and
    return (seconds from starting the process until the screen holds every marker,
    i.e. the first frame is drawn; that screen's text without escapes). Then types
    `quit_key` and waits for the process to exit."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        try:
            os.execvpe(cmd[0], cmd, env)
        finally:
            os._exit(127)
    t0 = time.perf_counter()
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    raw = b""
    seen: float | None = None
    text = ""
    deadline = t0 + timeout
    try:
        while seen is None and time.perf_counter() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
            if b"\x1b[6n" in chunk:  # a cursor position request: answer as a terminal does
                os.write(fd, f"\x1b[{rows};1R".encode())
            text = _ANSI.sub(b"", raw).decode("utf-8", "replace")
            if all(m in text for m in markers):
                seen = time.perf_counter() - t0
        if seen is None:
            raise RuntimeError(f"no first frame with {list(markers)} within {timeout} s:\n"
                               f"{text[-2000:]}")
        os.write(fd, quit_key)
        end = time.perf_counter() + 30
        while time.perf_counter() < end:  # drain until it exits
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    if not os.read(fd, 1 << 16):
                        break
                except OSError:
                    break
    finally:
        with contextlib.suppress(ProcessLookupError):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(fd)
    return seen, text
