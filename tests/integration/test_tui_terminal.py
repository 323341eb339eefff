"""The TUI in a real terminal: tmux runs `rsprof -p` on a real target and
`rsprof view` on the saved file; send-keys drives it, capture-pane is read."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Target, rsprof_env
from tests.integration.helpers import build_trace_app, one_line_error, query
from tests.integration.tmux_pane import Pane

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., Pane]]:
    panes: list[Pane] = []

    def start(command: list[str], width: int = 120, height: int = 40) -> Pane:
        env = rsprof_env(tmp_path / "cache")
        exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("PYTHONPATH", "XDG_CACHE_HOME"))
        shell = (f"cd {shlex.quote(str(tmp_path))} && env {exports} TERM=xterm-256color "
                 f"{shlex.join(command)}; echo EXIT=$?; sleep 600")
        panes.append(Pane(shell, width, height))
        return panes[-1]

    yield start
    for pane in panes:
        pane.close()


def _rsprof(*args: str) -> list[str]:
    return [sys.executable, "-m", "rsprof", *args]


def test_live_tui_then_view(tmux: Callable[..., Pane], tmp_path: Path,
                            start_target: Callable[..., Target]) -> None:
    # trace_app (rsprof-trace inside): spins in trace_app::spin and leaks 1000 bytes
    # every 10 ms at trace_app::leaky_site, so both views have a known first row.
    app = build_trace_app("profiling", "profiling")
    target = start_target(app, "120")
    db = tmp_path / "live.db"
    pane = tmux(_rsprof("-p", str(target.pid), "-o", str(db)))
    text = pane.wait_for(lambda t: "RECORDING" in t and "trace_app::spin" in t,
                         "the hot function in the live CPU table")
    assert "[CPU]" in text and "[Memory]" in text
    assert f"trace_app (pid {target.pid})" in text
    assert "Total %" in text and "Live %" in text and "Trend" in text
    assert "q quit" in text  # the footer
    rows = [line for line in text.splitlines() if "%" in line and "::" in line]
    assert "trace_app::spin" in rows[0], text
    pane.keys("2")
    text = pane.wait_for(lambda t: "Total allocated" in t and "trace_app::leaky_site" in t,
                         "the memory view")
    rows = [line for line in text.splitlines() if "::" in line and "B " in line]
    assert "trace_app::leaky_site" in rows[0], text  # the most live bytes
    assert " KB " in rows[0], text
    pane.keys("1")
    pane.wait_for(lambda t: "Total %" in t, "the CPU view again")
    chart_label = "CPU %: trace_app::spin"
    assert chart_label in pane.text()
    pane.keys("c")
    pane.wait_for(lambda t: chart_label not in t, "the chart hidden")
    pane.keys("c")
    text = pane.wait_for(lambda t: chart_label in t, "the chart shown")
    assert re.search(r"\[\d+(m\d+)?s\]", text), text  # its window, e.g. [8s]
    pane.keys("p")
    pane.wait_for(lambda t: "PAUSED" in t, "the PAUSED badge")
    pane.keys("p")
    pane.wait_for(lambda t: "RECORDING" in t, "recording again")
    pane.keys("q")
    text = pane.wait_for(lambda t: "EXIT=" in t, "rsprof to exit")
    assert "EXIT=0" in text
    assert "rsprof: wrote" in text
    assert "Traceback" not in text
    assert target.proc.poll() is None  # the target runs on
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["end_reason"] == "interrupted"
    assert int(meta["samples"]) > 0

    pane = tmux(_rsprof("view", str(db)), width=80, height=24)
    text = pane.wait_for(lambda t: "VIEW" in t and "trace_app::spin" in t, "the saved profile")
    assert "[CPU]" in text
    pane.keys("2")
    pane.wait_for(lambda t: "Total allocated" in t and "leaky_site" in t,
                  "the memory view of the saved profile")
    # 80 columns: the chart sits under the table; the footer is the last line.
    text = pane.text()
    assert not any("│" in line and "leaky_site" in line for line in text.splitlines())
    assert text.rstrip().splitlines()[-1].lstrip().startswith("q quit")
    pane.resize(140, 40)  # live: the chart moves beside the table, the footer down
    text = pane.wait_for(
        lambda t: any("│" in line and "leaky_site" in line for line in t.splitlines()),
        "the chart beside the table after the resize")
    assert len(text.rstrip("\n").splitlines()) == 40
    assert text.rstrip().splitlines()[-1].lstrip().startswith("q quit")
    pane.keys("?")
    pane.wait_for(lambda t: "Pan chart" in t, "the help")
    pane.keys("x")
    pane.keys("q")
    text = pane.wait_for(lambda t: "EXIT=" in t, "view to exit")
    assert "EXIT=0" in text and "Traceback" not in text


def test_live_tui_shows_ended_when_the_target_exits(targets: Path, tmux: Callable[..., Pane],
                                                    tmp_path: Path) -> None:
    db = tmp_path / "ended.db"
    pane = tmux(_rsprof("run", "-o", str(db), "--", str(targets / "cpu_split"), "--threads",
                        "1", "--seconds", "2"))
    text = pane.wait_for(lambda t: "ENDED" in t, "the ENDED badge")
    assert "work_fifty" in text
    assert "EXIT=" not in text  # the display stays until q
    pane.keys("q")
    text = pane.wait_for(lambda t: "EXIT=" in t, "rsprof to exit")
    assert "EXIT=0" in text and "Traceback" not in text
    assert "exited with code 0" in text
    assert dict(query(db, "SELECT key, value FROM meta"))["end_reason"] == "exited"
    # Under the display the program's output went to a log beside the profile.
    assert "ready" in (tmp_path / "ended.db.log").read_text()


def test_sigterm_finalizes_and_restores_the_terminal(targets: Path, tmux: Callable[..., Pane],
                                                     tmp_path: Path,
                                                     start_target: Callable[..., Target]) -> None:
    target = start_target(targets / "cpu_split", "--threads", "1", "--seconds", "60")
    db = tmp_path / f"term-{uuid.uuid4().hex[:6]}.db"
    pane = tmux(_rsprof("-p", str(target.pid), "-o", str(db)))
    pane.wait_for(lambda t: "RECORDING" in t and "cpu_split::" in t, "the live display")
    candidates = subprocess.run(["pgrep", "-f", f"rsprof -p {target.pid} -o {db}"],
                                capture_output=True, text=True).stdout.split()
    pids = [p for p in candidates  # rsprof itself, not the shell that started it
            if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"rsprof"]]
    assert len(pids) == 1, candidates
    os.kill(int(pids[0]), signal.SIGTERM)
    text = pane.wait_for(lambda t: "EXIT=" in t, "rsprof to exit")
    assert "EXIT=0" in text and "rsprof: wrote" in text and "Traceback" not in text
    assert "RECORDING" not in text and "q quit" not in text  # the display is gone
    assert dict(query(db, "SELECT key, value FROM meta"))["end_reason"] == "interrupted"
    assert target.proc.poll() is None


def test_view_of_a_bad_file_is_one_clear_error(tmux: Callable[..., Pane],
                                               tmp_path: Path) -> None:
    (tmp_path / "not-a-profile.db").write_text("hello")
    pane = tmux(_rsprof("view", "not-a-profile.db"), width=80, height=24)
    text = pane.wait_for(lambda t: "EXIT=" in t, "the error")
    assert "EXIT=1" in text
    assert "rsprof: error:" in text and "Traceback" not in text


def test_view_without_a_terminal_is_a_usage_error(
        run_rsprof: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    # The file is no profile either: only the terminal check gives exit 2 and this line.
    (tmp_path / "not-a-profile.db").write_text("hello")
    result = run_rsprof("view", "not-a-profile.db")
    assert result.returncode == 2, result.stderr
    assert "rsprof view needs a terminal" in one_line_error(result)
